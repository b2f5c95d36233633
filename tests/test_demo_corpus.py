"""The offline demo corpus is the same whatever the building process imported before."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pyarrow.parquet as pq

from tests.helpers import REPO


def texts(root: str, source: str) -> list[str]:
    return [t for f in sorted(glob.glob(os.path.join(root, source, "*.parquet")))
            for t in pq.read_table(f).column("text").to_pylist()]


def test_the_demo_corpus_does_not_depend_on_what_was_imported_before(tmp_path):
    fresh = str(tmp_path / "fresh")
    subprocess.run([sys.executable, "-c", f"from yxanul_ray.demo_corpus import build_demo_corpus; "
                    f"build_demo_corpus({fresh!r})"], cwd=REPO, check=True, capture_output=True, timeout=300)
    # What a driver or a test process has imported by the time it builds the corpus: these two
    # changed the documents when they were read from imported modules (a replaced function, a
    # name a package adds to its namespace on first use).
    import concurrent.futures

    import typing_extensions  # noqa: F401 - imported for its side effect on typing

    from yxanul_ray.demo_corpus import build_demo_corpus

    concurrent.futures.ThreadPoolExecutor  # noqa: B018 - the first use loads it into the namespace
    loaded = str(tmp_path / "loaded")
    build_demo_corpus(loaded)
    for source in ("fineweb", "math", "code"):
        assert texts(loaded, source) == texts(fresh, source), source
    assert len(texts(fresh, "fineweb")) > 2000  # the standard library's docstrings and help topics

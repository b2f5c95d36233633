"""Reading one large shard, and planning a stage over many files (a benchmark, not a test).

The demo's files are under 1 MB; a Hub corpus's are gigabytes, and fineweb-edu's default config
has 2,410 of them. This prints, for a shard of about --mb MiB of text written three ways
(parquet in 1,000-row groups, parquet as one row group as pandas writes it, jsonl):
  - a read task's whole pass over it (read_file_docs): seconds and the process's peak RSS;
  - its held-out validation documents (read_holdout_docs): seconds and peak RSS;
each in a fresh process, so a peak is that read's alone (the RSS before it is shown too). Then,
for a stage of --stage-tokens over --files files of 2 GB each: the read tasks the stage plans
(planned_reads), their pickled size (Ray Data puts every one in the object store when the stage
starts), and with --ray the time from a stage's Dataset to its first block for that plan and for
whole passes over the files (the plan before 3ffea10).

    python benchmarks/benchmark_large_files.py [--mb 768] [--files 2410] [--stage-tokens 550000000] [--ray]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

DOCS_PER_GROUP = 1000
WORDS_PER_DOC = 500


def write_shards(folder: str, mb: int) -> dict[str, str]:
    """The same documents as parquet (1,000-row groups), parquet (one row group) and jsonl."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    doc_bytes = WORDS_PER_DOC * 6
    docs = [" ".join(rng.choices(words, k=WORDS_PER_DOC)) for _ in range(max(1, mb * 2**20 // doc_bytes))]
    paths = {kind: os.path.join(folder, kind, f"shard-000.{ext}") for kind, ext in
             (("parquet, 1,000-row groups", "parquet"), ("parquet, one row group", "parquet"), ("jsonl", "jsonl"))}
    for path in paths.values():
        os.makedirs(os.path.dirname(path), exist_ok=True)
    table = pa.table({"text": docs})
    pq.write_table(table, paths["parquet, 1,000-row groups"], row_group_size=DOCS_PER_GROUP)
    pq.write_table(table, paths["parquet, one row group"], row_group_size=len(docs))
    with open(paths["jsonl"], "w") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    return paths


CHILD = """
import json, sys, time
from yxanul_ray.config import job_from_dict
from yxanul_ray.hub import resolve_files
from yxanul_ray.hub import Redacted
from yxanul_ray.readers import read_file_docs, read_holdout_docs
from yxanul_ray.stage_data import read_spec
path, fmt, what = sys.argv[1:4]
job = job_from_dict({"sources": {"a": {"path": path, "format": fmt, "validation_docs": 64}},
                     "model": {"preset": "tiny"}, "curriculum": {"target_tokens": 64, "stages": [
                         {"name": "s", "seq_len": 8, "tokens": 64, "batch_size": 8, "mix": {"a": 1.0}}]}}, "<bench>")
spec = read_spec(job, resolve_files(job.sources["a"]))
def status_mib(field):  # VmHWM, not ru_maxrss: that counts the forking parent's pages before exec
    return next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith(field)) / 1024
before_mib = status_mib("VmRSS")
start = time.perf_counter()
if what == "pass":
    rows = sum(t.num_rows for t in read_file_docs(spec, Redacted(None), 0, 0, 0, None, False))
else:
    rows = len(read_holdout_docs(spec))
print(json.dumps({"s": time.perf_counter() - start, "rows": rows, "before_mib": before_mib,
                  "peak_rss_mib": status_mib("VmHWM")}))
"""


def measure_read(path: str, fmt: str, what: str) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", CHILD, path, fmt, what], capture_output=True, text=True, cwd=root,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def plan_figures(n_files: int, stage_tokens: int, with_ray: bool) -> None:
    from ray import cloudpickle

    from yxanul_ray.cursors import SourceCursor
    from yxanul_ray.hub import SourceFiles
    from yxanul_ray.read_plan import MIN_TOKENS_PER_FILE_BYTE, planned_reads
    from yxanul_ray.readers import ReadSpec
    from yxanul_ray.sources import make_datasource

    folder = tempfile.mkdtemp(prefix="yxanul-plan-")
    import pyarrow as pa
    import pyarrow.parquet as pq

    first = os.path.join(folder, "train-00000.parquet")
    pq.write_table(pa.table({"text": [f"document {i} " * 50 for i in range(200)]}), first)
    paths = [first] + [os.path.join(folder, f"train-{i:05d}.parquet") for i in range(1, n_files)]
    for p in paths[1:]:
        os.link(first, p)
    size = 2_000_000_000  # as listed: the reads of a 2 GB shard, not the stand-in's few KB
    spec = ReadSpec(files=SourceFiles("fineweb", "local", tuple(paths), "parquet", sizes=(size,) * n_files),
                    text_field="text", max_doc_chars=1_000_000, holdout_docs=64, seed=1234)
    reads = planned_reads(spec, SourceCursor(), stage_tokens)
    passes = int(stage_tokens / (n_files * size * MIN_TOKENS_PER_FILE_BYTE)) + 3  # the old plan's passes
    for label, n in (("planned_reads", reads), ("whole passes, as planned before 3ffea10", passes * n_files)):
        tasks = make_datasource(spec, SourceCursor(), n).get_read_tasks(1)
        pickled = sum(len(cloudpickle.dumps(t)) for t in tasks)
        print(f"  {label}: {n:,} read tasks, pickled {pickled / 2**20:.1f} MiB ({pickled / len(tasks) / 1024:.1f} "
              "KiB each)")
    if with_ray:
        from yxanul_ray.raycluster import init_ray

        ray = init_ray(num_cpus=4, dashboard=False)
        for label, n in (("planned_reads", reads), ("whole passes, as planned before 3ffea10", passes * n_files)) * 2:
            start = time.perf_counter()
            ds = ray.data.read_datasource(make_datasource(spec, SourceCursor(), n), override_num_blocks=1,
                                          compute=ray.data.TaskPoolStrategy(size=2))
            it = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
            next(it)
            print(f"  {label}: first block {time.perf_counter() - start:.2f} s after the Dataset was made")
            del it, ds
        ray.shutdown()
    for p in paths:
        os.remove(p)
    os.rmdir(folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=768, help="MiB of text in the shard")
    ap.add_argument("--files", type=int, default=2410)
    ap.add_argument("--stage-tokens", type=int, default=550_000_000)
    ap.add_argument("--ray", action="store_true", help="also time a stage's first block through Ray Data")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="yxanul-large-") as folder:
        start = time.perf_counter()
        shards = write_shards(folder, args.mb)
        print(f"shards of {args.mb} MiB of text written in {time.perf_counter() - start:.1f} s")
        for kind, path in shards.items():
            fmt = "jsonl" if path.endswith(".jsonl") else "parquet"
            size_mib = os.path.getsize(path) / 2**20
            for what, label in (("pass", "read task's pass"), ("holdout", "held-out documents")):
                r = measure_read(path, fmt, what)
                print(f"{kind} ({size_mib:.0f} MiB): {label}: {r['rows']:,} rows in {r['s']:.2f} s, "
                      f"peak RSS {r['peak_rss_mib']:.0f} MiB ({r['before_mib']:.0f} MiB before the read)")
    print(f"a stage of {args.stage_tokens:,} tokens over {args.files:,} files of 2 GB:")
    plan_figures(args.files, args.stage_tokens, args.ray)


if __name__ == "__main__":
    main()

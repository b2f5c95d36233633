"""The larger local corpus (`yxanul-ray demo-data DIR --tokens N`): real manual-page and Python
text, three domains in the sources' parquet schema, at least the tokens asked for, the same bytes
on every build, and a tokenizer trained on it that the run loads."""

from __future__ import annotations

import glob
import gzip
import hashlib
import os
import sysconfig

import pyarrow.parquet as pq
import pytest

from yxanul_ray.cli import main
from yxanul_ray.local_corpus import build_local_corpus, parse_tokens, troff_text
from yxanul_ray.tokenizer import load_tokenizer

PAGE = r""".\" a comment that is dropped
.TH GREP 1 "2024" "GNU grep 3.8" "User Commands"
.SH NAME
grep \- print lines that match patterns
.SH DESCRIPTION
.B grep
searches for \fIPATTERNS\fP in each \fBFILE\fR.
.TP
.BR \-i ", " \-\-ignore\-case
Ignore case distinctions in patterns and input data.
"""


def test_troff_text_keeps_the_words_and_drops_the_markup():
    text = troff_text(PAGE)
    assert "comment" not in text and "\\f" not in text and ".TP" not in text
    assert "grep - print lines that match patterns" in text
    assert "grep searches for PATTERNS in each FILE." in text
    assert "-i , --ignore-case" in text and "Ignore case distinctions" in text


def test_parse_tokens():
    assert parse_tokens("50M") == 50_000_000 and parse_tokens("800k") == 800_000 and parse_tokens("1200") == 1200
    with pytest.raises(ValueError, match="not a token count"):
        parse_tokens("lots")


def _small_sources(tmp_path) -> tuple[list[str], str]:
    """One real package of the standard library (its source and docstrings) and a manual page."""
    man = tmp_path / "man" / "man1"
    man.mkdir(parents=True)
    with gzip.open(man / "grep.1.gz", "wt") as f:
        f.write(PAGE * 8)
    return [os.path.join(sysconfig.get_paths()["stdlib"], "json")], str(tmp_path / "man")


def _digest(root: str) -> str:
    h = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
        if os.path.isfile(path):
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def test_a_corpus_of_the_tokens_asked_for_built_alike_twice(tmp_path):
    roots, man_root = _small_sources(tmp_path)
    counts = build_local_corpus(str(tmp_path / "a"), 400_000, vocab_size=512, log=lambda _: None, roots=roots,
                                man_root=man_root)
    assert set(counts) == {"fineweb", "code", "math"}
    assert sum(n for _, _, n in counts.values()) >= 400_000  # GPT-2 tokens; math makes up what prose and code lack
    for name in counts:
        files = sorted(glob.glob(str(tmp_path / "a" / name / "*.parquet")))
        assert files
        texts = [t for f in files for t in pq.read_table(f).column("text").to_pylist()]
        assert len(texts) == counts[name][0] and all(isinstance(t, str) and t.strip() for t in texts)

    def docs_of(name: str) -> list[str]:
        files = glob.glob(str(tmp_path / "a" / name / "*.parquet"))
        return [t for f in files for t in pq.read_table(f)["text"].to_pylist()]

    assert any("print lines that match patterns" in t for t in docs_of("fineweb"))  # the manual page, as text
    assert any(t.startswith("Serialize ``obj`` to a JSON formatted") for t in docs_of("fineweb"))  # json.dumps'
    assert any(t.startswith("# file: json/") for t in docs_of("code"))  # a real source file, named
    tok = load_tokenizer(str(tmp_path / "a" / "tokenizer.json"))
    assert tok.vocab_size == 512 and tok.eos_id == 0
    assert tok.decode(tok.encode_batch(["def loads(s):"])[0]) == "def loads(s):"
    build_local_corpus(str(tmp_path / "b"), 400_000, vocab_size=512, log=lambda _: None, roots=roots,
                       man_root=man_root)
    assert _digest(str(tmp_path / "a")) == _digest(str(tmp_path / "b"))


@pytest.mark.parametrize("args, problem", [(["--tokens", "lots"], "--tokens: 'lots' is not a token count"),
                                           (["--tokens", "10k"], "--tokens must be at least 100k")])
def test_demo_data_refuses_a_bad_token_count(tmp_path, capsys, args, problem):
    assert main(["demo-data", str(tmp_path / "c"), *args]) == 2
    assert problem in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "c")

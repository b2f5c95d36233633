"""A larger three-domain corpus for comparing schedules, built from text this machine already has
(`yxanul-ray demo-data DIR --tokens 50M`). It is not FineWeb; it is what a Python machine offers:

- fineweb/ (prose): the English manual pages under /usr/share/man (troff markup stripped), Python's
  help topics, and the docstrings of the standard library and of every installed package;
- code/: the Python source files of the standard library and of the installed packages;
- math/: generated worked problems with computed, so correct, answers (demo_corpus's kinds).

Documents are deduplicated, shuffled with a fixed seed (a domain's order must not drift from one
package to the next over a run) and written as parquet in the sources' schema, with a byte-level
BPE tokenizer (`tokenizer.json`) trained on a fixed sample of them: at a vocabulary of 8,192
instead of GPT-2's 50,257, the output layer no longer dominates a small model's CPU step. The same
installed packages and manual pages give the same corpus.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import math
import os
import random
import re
import statistics
import sysconfig
from concurrent.futures import ProcessPoolExecutor

from yxanul_ray.demo_corpus import math_documents, write_parquet_shards

SHARES = {"fineweb": 0.6, "math": 0.2, "code": 0.2}
"""Each domain's share of the requested tokens (GPT-2 tokens); a domain short of its share is
made up by the others, so the corpus holds at least the tokens asked for."""
SEED = 20261206
FILE_CHARS = 16 << 20
"""Text per parquet file, about: more files give more read tasks."""
ROWS_PER_GROUP = 1024
TOKENIZER_SAMPLE_CHARS = 8 << 20
"""Characters of each domain the tokenizer is trained on (the first, in the shuffled order)."""
MAN_ROOT = "/usr/share/man"
PAGES_PER_FAMILY = 500


def parse_tokens(text: str) -> int:
    """`50M`, `2.5m`, `800k`, `1B` or a plain integer."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([kKmMbB]?)\s*", text)
    if not m:
        raise ValueError(f"{text!r} is not a token count; e.g. 50M, 800k or 1000000")
    return int(float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}[m.group(2).lower()])


# ---- prose ------------------------------------------------------------------------------------

_ESCAPES = [(re.compile(a), b) for a, b in [
    (r"\\f(\[[^\]]*\]|\(..|.)", ""), (r"\\-", "-"), (r"\\\((em|en)|\\\[(em|en)\]", "-"),
    (r"\\\(aq|\\\[aq\]", "'"), (r"\\\((dq|lq|rq)|\\\[(dq|lq|rq)\]", '"'), (r"\\\(bu|\\\[bu\]", "*"),
    (r"\\e", "\\\\"), (r"\\[&:/,%c]", ""), (r"\\[ ~0]", " "), (r"\\\*(\(..|\[[^\]]*\]|.)", ""),
    (r"\\s([-+]?\d+|\(\d\d|\[\d+\])", ""), (r"\\[hvwlLxNZ]'[^']*'", ""), (r"\\(\(..|\[[^\]]*\])", ""),
    (r"\\.", ""),
]]
_BREAKS = {"PP", "P", "LP", "Pp", "sp", "br", "TP", "IP", "HP", "RS", "RE", "nf", "fi", "SH", "SS", "Sh", "Ss"}
_FONT_MACROS = {"B", "I", "BR", "IR", "RB", "RI", "BI", "IB", "SM", "SB", "Nm", "Ar", "Fl", "Cm", "Pa", "Nd"}


def troff_text(src: str) -> str:
    """A manual page's troff source as plain text: the text lines and the words of the font and
    heading macros kept, other requests and the escapes dropped. Crude, and readable."""
    out = []
    for line in src.splitlines():
        if line.startswith((".\\\"", "'\\\"", ".\\#")):
            continue
        if line.startswith((".", "'")):
            macro, _, arg = line[1:].strip().partition(" ")
            arg = arg.strip()
            if macro in _BREAKS:
                out.append("\n\n" if macro in ("SH", "SS", "Sh", "Ss", "PP", "P", "LP", "Pp") else "\n")
                if arg:
                    out.append(arg.strip('"') + "\n")
            elif macro in _FONT_MACROS and arg:
                out.append(arg.replace('"', "") + " ")
            continue
        out.append(line + ("\n" if not line.endswith(" ") else ""))
    text = "".join(out)
    for rx, rep in _ESCAPES:
        text = rx.sub(rep, text)
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" ?\n ?", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def man_pages(root: str = MAN_ROOT) -> list[str]:
    """The English manual pages' files (sections 1-8), at most PAGES_PER_FAMILY of one command
    family (`gcloud-*` is 16,631 of this machine's 19,778 pages), evenly spread over its names."""
    families: dict[str, list[str]] = {}
    for section in "12345678":
        folder = os.path.join(root, f"man{section}")
        if os.path.isdir(folder):
            for name in sorted(os.listdir(folder)):
                families.setdefault(re.split(r"[-_.]", name, maxsplit=1)[0], []).append(os.path.join(folder, name))
    pages = []
    for paths in families.values():
        step = max(1.0, len(paths) / PAGES_PER_FAMILY)
        pages += [paths[int(i * step)] for i in range(min(len(paths), PAGES_PER_FAMILY))]
    return pages


def man_documents(root: str = MAN_ROOT) -> list[str]:
    """The manual pages of man_pages as text (links and `.so` redirections left out)."""
    docs = []
    for path in man_pages(root):
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        try:
            with (gzip.open(path) if path.endswith(".gz") else open(path, "rb")) as f:
                src = f.read().decode("utf-8", "replace")
        except (OSError, EOFError):
            continue
        text = "" if src.lstrip().startswith(".so ") else troff_text(src)
        if len(text) >= 400:
            docs.append(text)
    return docs


def _file_docstrings(path: str) -> list[str]:
    """Every docstring in one Python file longer than 120 characters (module, classes, functions)."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError, RecursionError):
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return [d for d in (ast.get_docstring(n) for n in ast.walk(tree) if isinstance(n, kinds)) if d and len(d) > 120]


def python_files(roots: list[str]) -> list[str]:
    """The .py files under `roots`, sorted, without tests, and without a site-packages folder
    that is not itself a root (the standard library's holds what was installed system-wide)."""
    skip = {"test", "tests", "__pycache__", "idlelib", "site-packages", "dist-packages"}
    out = []
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d not in skip)
            out += [os.path.join(folder, f) for f in sorted(files) if f.endswith(".py")]
    return out


def source_roots() -> list[str]:
    """The standard library and the installed packages (this interpreter's)."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys(p for p in (paths["stdlib"], paths["purelib"], paths["platlib"]) if os.path.isdir(p)))


def docstring_documents(files: list[str]) -> list[str]:
    from pydoc_data.topics import topics

    docs = [f"{name}\n\n{text.strip()}" for name, text in sorted(topics.items()) if len(text) > 200]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for found in pool.map(_file_docstrings, files, chunksize=64):
            docs += found
    return docs


def code_documents(files: list[str], roots: list[str]) -> list[str]:
    docs = []
    for path in files:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        if len(text) > 200:
            rel = next((os.path.relpath(path, os.path.dirname(r)) for r in roots if path.startswith(r + os.sep)), path)
            docs.append(f"# file: {rel}\n{text}")
    return docs


# ---- assembly ---------------------------------------------------------------------------------


def unique_shuffled(docs: list[str], seed: int) -> list[str]:
    """Documents with exact duplicates (vendored copies, inherited docstrings) left out, in a
    fixed random order."""
    seen, out = set(), []
    for d in docs:
        h = hashlib.blake2b(d.encode("utf-8", "replace"), digest_size=16).digest()
        if h not in seen:
            seen.add(h)
            out.append(d)
    random.Random(seed).shuffle(out)
    return out


def take_tokens(docs: list[str], budget: int, count) -> tuple[list[str], int]:
    """The first documents of `docs` that hold `budget` tokens (all if they hold fewer)."""
    taken, tokens = [], 0
    for first in range(0, len(docs), 512):
        chunk = docs[first:first + 512]
        for doc, n in zip(chunk, count(chunk)):
            if tokens >= budget:
                return taken, tokens
            taken.append(doc)
            tokens += n
    return taken, tokens


def build_local_corpus(out_dir: str, tokens: int, vocab_size: int = 8192, log=print, roots: list[str] | None = None,
                       man_root: str = MAN_ROOT) -> dict[str, tuple[int, int, int]]:
    """Write fineweb/, math/, code/ parquet shards and tokenizer.json under out_dir, holding at least
    `tokens` GPT-2 tokens, from the Python files under `roots` (default: source_roots()) and the
    manual pages under `man_root`; returns (documents, characters, GPT-2 tokens) per domain."""
    from yxanul_ray.tokenizer import load_tokenizer

    gpt2 = load_tokenizer("gpt2")

    def count(texts: list[str]) -> list[int]:
        return [len(ids) + 1 for ids in gpt2.encode_batch(texts)]  # + the EOS each document gets

    roots = roots or source_roots()
    files = python_files(roots)
    log(f"reading {len(files):,} Python files under {', '.join(roots)} and the manual pages in {man_root}")
    pools = {
        "fineweb": unique_shuffled(man_documents(man_root) + docstring_documents(files), SEED),
        "code": unique_shuffled(code_documents(files, roots), SEED + 1),
    }
    chosen: dict[str, tuple[list[str], int]] = {}
    short = 0
    for name in ("fineweb", "code"):
        budget = math.ceil(SHARES[name] * tokens) + (short if name == "code" else 0)
        chosen[name] = take_tokens(pools[name], budget, count)
        short = max(0, budget - chosen[name][1])
        if short:
            log(f"{name}: the machine's text holds {chosen[name][1]:,} tokens, {short:,} short of its share; the "
                "other domains make them up")
    math_budget = tokens - chosen["fineweb"][1] - chosen["code"][1]
    per_doc = statistics.fmean(count(math_documents(2000, seed=SEED)))
    chosen["math"] = take_tokens(math_documents(math.ceil(max(math_budget, 0) / per_doc * 1.02) + 2000, seed=SEED),
                                 max(math_budget, math.ceil(SHARES["math"] * tokens)), count)
    out = {}
    for name, (docs, n) in chosen.items():
        chars = sum(map(len, docs))
        write_parquet_shards(docs, os.path.join(out_dir, name), files=max(4, math.ceil(chars / FILE_CHARS)),
                             rows_per_group=ROWS_PER_GROUP)
        out[name] = (len(docs), chars, n)
    train_tokenizer({name: docs for name, (docs, _) in chosen.items()}, vocab_size,
                    os.path.join(out_dir, "tokenizer.json"))
    return out


def train_tokenizer(domains: dict[str, list[str]], vocab_size: int, path: str) -> str:
    """A byte-level BPE (GPT-2's pre-tokenization, `<|endoftext|>` as EOS) trained on the first
    TOKENIZER_SAMPLE_CHARS of each domain, written to `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    def sample():
        for docs in domains.values():
            chars = 0
            for d in docs:
                if chars >= TOKENIZER_SAMPLE_CHARS:
                    break
                chars += len(d)
                yield d

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(sample(), trainer=trainer)
    tok.save(path)
    return path

"""Held-out sets sized in tokens, before any cluster work.

Validation evaluates `curriculum.validation_rows` rows of `validation_seq_len` tokens per source,
packed from the source's held-out documents (the last `validation_docs` of its last file). A
source whose documents cannot fill those rows was evaluated on fewer, or, below one row, left out
of validation without a word (the demo's math at validation_seq_len 1024). Now such a source holds
out more documents, from the end of the same file, so every domain is measured on the rows asked
for; where the file cannot supply them, the run is refused with the numbers.
"""

from __future__ import annotations

import dataclasses
import math
import os

from yxanul_ray.hub import SourceFiles
from yxanul_ray.readers import read_holdout_docs
from yxanul_ray.specs import ConfigError, JobSpec
from yxanul_ray.stage_data import read_spec


def stream_tokens(token_counts: list[int]) -> int:
    """Stream positions of documents packed with an EOS after each (packing.Packer's stream)."""
    return sum(n + 1 for n in token_counts)


def tokens_needed(rows: int, seq_len: int) -> int:
    """Stream positions that `rows` validation rows of `seq_len` need (rows of seq_len + 1, no overlap)."""
    return rows * seq_len + 1 if rows > 0 else 0


def next_doc_count(docs: int, have: int, need: int) -> int:
    """How many documents to try next when `docs` gave `have` of `need` tokens: scaled by the
    shortfall with a quarter's margin, at least one more, at most 16x."""
    guess = math.ceil(docs * need / max(have, 1) * 1.25)
    return min(max(guess, docs + 1), 16 * docs)


def sized_holdouts(job: JobSpec, files: dict[str, SourceFiles], tokenizer) -> tuple[JobSpec, list[str]]:
    """`job` with each source's validation_docs raised where its held-out documents cannot fill
    the validation rows, and a line per source raised. Raises ConfigError, naming the source, its
    last file and the numbers, where that file cannot fill them."""
    cur = job.curriculum
    need = tokens_needed(cur.validation_rows, cur.validation_seq_len)
    if not need:
        return job, []
    sources, notes = dict(job.sources), []
    for name, source_files in files.items():
        src = job.sources[name]
        if src.validation_docs == 0:
            continue
        docs, found, have = src.validation_docs, -1, 0
        while True:
            texts = read_holdout_docs(dataclasses.replace(read_spec(job, source_files), holdout_docs=docs))
            have = stream_tokens([len(ids) for ids in tokenizer.encode_batch(texts)])
            if have >= need:
                break
            if len(texts) == found:  # asked for more documents and got none: the file has no more
                raise _too_small(job, name, source_files.paths[-1], len(texts), have)
            found, docs = len(texts), next_doc_count(docs, have, need)
        if docs != src.validation_docs:
            sources[name] = dataclasses.replace(src, validation_docs=docs)
            notes.append(f"sources.{name}.validation_docs: {src.validation_docs} -> {docs}, so that its held-out "
                         f"documents fill curriculum.validation_rows={cur.validation_rows} rows of "
                         f"validation_seq_len={cur.validation_seq_len} tokens (the last {docs} documents of "
                         f"{os.path.basename(source_files.paths[-1])}, kept out of training)")
    return dataclasses.replace(job, sources=sources), notes


def _too_small(job: JobSpec, name: str, path: str, docs: int, have: int) -> ConfigError:
    cur = job.curriculum
    fits = (have - 1) // cur.validation_seq_len
    fix = (f"curriculum.validation_rows={fits} (or a shorter validation_seq_len)" if fits else
           f"curriculum.validation_seq_len={max(1, have - 1)} or shorter")
    return ConfigError(f"{job.path}: sources.{name}: its held-out documents cannot fill curriculum.validation_rows="
                       f"{cur.validation_rows} rows of validation_seq_len={cur.validation_seq_len} tokens "
                       f"({tokens_needed(cur.validation_rows, cur.validation_seq_len):,} tokens): its last file, "
                       f"{path}, holds {docs:,} usable documents of {have:,} tokens in all; fix: {fix}, a larger last "
                       f"file, or sources.{name}.validation_docs: 0 to leave {name} out of validation")



"""Running stages of the real Ray Data pipeline from tests (plain functions)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tests.helpers import CONFIGS
from yxanul_ray.config import job_from_dict, load_job
from yxanul_ray.cursors import SourceCursor
from yxanul_ray.hub import resolve_files
from yxanul_ray.stage_data import build_stage_data, iter_worker_batches
from yxanul_ray.tokenizer import load_tokenizer


def demo_job(corpus: str, *extra: str, scale: int = 10):
    """configs/demo.yaml on `corpus`, every stage budget divided by `scale` (the target too)."""
    from yxanul_ray.config import read_yaml

    raw = read_yaml(os.path.join(CONFIGS, "demo.yaml"))
    total = 0
    overrides = [f"sources.{s}.path={corpus}/{s}/*.parquet" for s in ("fineweb", "math", "code")]
    for i, st in enumerate(raw["curriculum"]["stages"]):
        tokens = st["tokens"] // scale
        total += tokens
        overrides.append(f"curriculum.stages.{i}.tokens={tokens}")
    overrides.append(f"curriculum.target_tokens={total}")
    return load_job(os.path.join(CONFIGS, "demo.yaml"), overrides + list(extra))


def run_stage(job, stage_index: int, cursors: dict, world: int, packers, files=None):
    """Consume one stage on `world` concurrent consumers; returns (per-rank batches, end state)."""
    import ray

    files = files or {s: resolve_files(spec) for s, spec in job.sources.items()}
    eos = load_tokenizer(job.data.tokenizer).eos_id
    sd = build_stage_data(job, stage_index, cursors, world, files, eos, packers)
    ids = {n: i for i, n in enumerate(job.sources)}
    splits = sd.split(world)
    sd.start()
    with ThreadPoolExecutor(max_workers=world) as pool:
        per_rank = list(pool.map(lambda it: list(iter_worker_batches(it, sd.schedule, ids, world=world)), splits))
    end = ray.get(sd.end_state)
    return sd, per_rank, end


def next_cursors(end: dict, cursors: dict) -> dict:
    out = dict(cursors)
    out.update({s: SourceCursor.from_dict(v["cursor"]) for s, v in end.items()})
    return out


def write_docs(path: str, texts: list, *, binary: bool = False, row_group_size: int = 4) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    typ = pa.binary() if binary else pa.string()
    pq.write_table(pa.table({"text": pa.array(texts, typ)}), path, row_group_size=row_group_size)


def one_source_job(path: str, *, fmt: str = "parquet", seq_len: int = 8, tokens: int = 256, batch: int = 8,
                   max_doc_chars: int = 1_000_000, seed: int = 1, holdout: int = 0, extra_stages=()):
    stages = [{"name": "s0", "seq_len": seq_len, "tokens": tokens, "batch_size": batch, "mix": {"a": 1.0}}]
    stages += list(extra_stages)
    return job_from_dict({
        "run": {"workers": 1, "seed": seed},
        "data": {"max_doc_chars": max_doc_chars, "tokenize_tasks": 1},
        "sources": {"a": {"path": path, "format": fmt, "validation_docs": holdout}},
        "model": {"preset": "tiny"},
        "curriculum": {"target_tokens": sum(s["tokens"] for s in stages), "stages": stages},
    }, "<test>")


def order_of(spec) -> list[int]:
    from yxanul_ray.cursors import file_order

    return list(file_order(len(spec.files.paths), 0, spec.seed, spec.files.source))


def as_raw(job) -> dict:
    d = job.to_dict()
    d.pop("path")
    for s in d["sources"].values():
        s.pop("name")
    return d


TOK = load_tokenizer("gpt2")


def stream_tokens(texts: list[str]) -> np.ndarray:
    return np.concatenate([np.append(np.array(ids, dtype=np.int32), TOK.eos_id) for ids in TOK.encode_batch(texts)])

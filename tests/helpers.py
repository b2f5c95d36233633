"""Small builders shared by the tests (plain functions, imported explicitly)."""

from __future__ import annotations

import copy
import os

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


def base_config(source_dir: str) -> dict:
    """A small valid job: three local parquet sources under `source_dir`, three stages."""
    return copy.deepcopy({
        "run": {"name": "t", "workers": 2, "use_gpu": False, "seed": 7},
        "data": {"tokenizer": "gpt2"},
        "sources": {
            name: {"path": os.path.join(source_dir, name, "*.parquet"), "format": "parquet"}
            for name in ("fineweb", "math", "code")
        },
        "model": {"preset": "tiny", "backend": "torch"},
        "optimizer": {"peak_lr": 1e-3, "warmup_tokens": 100},
        "curriculum": {
            "target_tokens": 2048 + 4096 + 8192,
            "stages": [
                {"name": "a", "seq_len": 8, "tokens": 2048, "batch_size": 16,
                 "mix": {"fineweb": 0.5, "math": 0.25, "code": 0.25}},
                {"name": "b", "seq_len": 16, "tokens": 4096, "batch_size": 16,
                 "mix": {"fineweb": 0.75, "math": 0.25, "code": 0.0}},
                {"name": "c", "seq_len": 32, "tokens": 8192, "batch_size": 8,
                 "mix": {"fineweb": 0.5, "math": 0.25, "code": 0.25}},
            ],
        },
    })


def write_yaml(path: str, data: dict) -> str:
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path


def demo_subset(path: str, first: int, last: int, scale: float = 1.0, **run: object) -> str:
    """configs/demo.yaml cut to its stages[first:last] (budgets times `scale`, target to match)
    and written to `path`: the same model, corpus, mixes and seq_lens, for tests that need a few
    real stage switches rather than all ten (each switch costs ~25 s on 2 cores)."""
    with open(os.path.join(CONFIGS, "demo.yaml"), encoding="utf-8") as f:
        data = yaml.safe_load(f)
    stages = data["curriculum"]["stages"][first:last]
    for st in stages:
        st["tokens"] = int(st["tokens"] * scale)
    data["curriculum"]["stages"] = stages
    data["curriculum"]["target_tokens"] = sum(st["tokens"] for st in stages)
    data["run"].update(run)
    return write_yaml(path, data)


TOKENIZER_TEXTS = [f"Document {i} counts {i * 7} apples and {i % 5} pears; the sum is {i * 7 + i % 5}."
                   for i in range(60)]


def train_tokenizer_json(path: str, special_tokens: tuple[str, ...] = ("<|endoftext|>",), vocab: int = 320) -> str:
    """A small byte-level BPE trained on TOKENIZER_TEXTS with the `tokenizers` library, saved as a
    tokenizer.json: a tokenizer other than GPT-2's, as a user's own would be."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TOKENIZER_TEXTS, trainer)
    tok.save(path)
    return path


def undisturbed_run(job) -> tuple[dict[tuple[int, int], list[str]], dict]:
    """An undisturbed run's data, made in this process (local_data, the pipeline's own functions),
    each stage from where the last one stopped: (stage, step in stage) -> a digest of each of the
    step's rows, and source -> its SourceStats over the run."""
    import hashlib

    from yxanul_ray.cursors import SourceCursor, SourceStats
    from yxanul_ray.hub import resolve_files
    from yxanul_ray.local_data import local_global_batches
    from yxanul_ray.tokenizer import load_tokenizer

    cwd = os.getcwd()
    os.chdir(REPO)  # the demo configs' corpus paths are relative to the repo
    try:
        files = {s: resolve_files(spec) for s, spec in job.sources.items()}
        eos_id = load_tokenizer(job.data.tokenizer).eos_id
        cursors, steps, totals = {}, {}, {}
        for k in range(len(job.curriculum.stages)):
            batches, sources = local_global_batches(job, k, cursors, files, eos_id, 1)
            for i, batch in enumerate(batches):
                steps[(k, i)] = [hashlib.sha1(row.tobytes()).hexdigest()[:12] for row in batch["tokens"]]
            for s, src in sources.items():
                report = src.end_report()
                cursors[s] = SourceCursor.from_dict(report["cursor"])
                totals[s] = totals.get(s, SourceStats()).add(SourceStats.from_dict(report["stats"]))
    finally:
        os.chdir(cwd)
    return steps, totals

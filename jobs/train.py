"""Entrypoint for `ray job submit --working-dir . -- python jobs/train.py --config configs/...`.

Also accepts the user's original flags: `--curriculum` (always on), `--model-size 270M`,
`--target-tokens N` (stage budgets scaled to N) and `--curriculum-config PATH`. With no Ray
cluster running it starts one in-process. `--resume CHECKPOINT` without `--config` takes the
checkpoint's own settings (its job.json).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from yxanul_ray.cli import reporting_errors  # noqa: E402
from yxanul_ray.config import load_job, scaled_budget_overrides  # noqa: E402
from yxanul_ray.storage import storage_join  # noqa: E402

DEFAULT_CONFIG = "configs/yxanul_270m_progressive_curriculum.yaml"
MODEL_SIZES = {"270M": "270m", "270m": "270m", "yxanul-270M": "yxanul-270m", "yxanul-270m": "yxanul-270m",
               "demo": "demo", "tiny": "tiny"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", "--curriculum-config", dest="config", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--resume", metavar="CHECKPOINT")
    ap.add_argument("--curriculum", action="store_true", help="accepted for compatibility (always on)")
    ap.add_argument("--model-size", choices=sorted(MODEL_SIZES))
    ap.add_argument("--target-tokens", type=int)
    args = ap.parse_args(argv)
    overrides = list(args.overrides)
    if args.model_size:
        overrides.append(f"model.preset={MODEL_SIZES[args.model_size]}")
    return reporting_errors(lambda: train(args.config, overrides, args.target_tokens, args.resume))


def train(config: str | None, overrides: list[str], target_tokens: int | None, resume: str | None) -> int:
    from yxanul_ray.driver import checkpoint_path, prepare_demo_corpus, run_training

    if resume and not config:
        # --resume without --config continues the run under its own settings (the checkpoint's
        # job.json, which YAML reads), --set overrides applied as to any config. Checked first, so
        # a run's directory given instead is named as such (its latest checkpoint in the fix),
        # not as a missing config file; with --config, run_training's resume check says the same.
        config = storage_join(checkpoint_path(resume), "job.json")
    config = config or DEFAULT_CONFIG
    prepare_demo_corpus(config, overrides)
    job = load_job(config, overrides)
    if target_tokens:
        scaled = scaled_budget_overrides(job, target_tokens)
        if scaled:
            print(f"--target-tokens {target_tokens:,}: stage budgets scaled by "
                  f"{target_tokens / job.curriculum.target_tokens:.4g}", flush=True)
            job = load_job(config, overrides + scaled)
    return run_training(job, resume=resume)


if __name__ == "__main__":
    sys.exit(main())

"""Entrypoint for `ray job submit --working-dir . -- python jobs/train.py --config configs/...`.

Also accepts the user's original flags: `--curriculum` (always on), `--model-size 270M`,
`--target-tokens N` (stage budgets scaled to N) and `--curriculum-config PATH`. With no Ray
cluster running it starts one in-process.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from yxanul_ray.config import ConfigError, load_job, read_yaml  # noqa: E402

DEFAULT_CONFIG = "configs/yxanul_270m_progressive_curriculum.yaml"
MODEL_SIZES = {"270M": "270m", "270m": "270m", "yxanul-270M": "yxanul-270m", "yxanul-270m": "yxanul-270m",
               "demo": "demo", "tiny": "tiny"}


def scaled_budgets(config: str, overrides: list[str], target: int) -> list[str]:
    """--target-tokens N: every stage's budget scaled by N / the config's target (the last stage
    absorbs rounding), so the curriculum keeps its shape and the run stops exactly at N."""
    from yxanul_ray.config import apply_override

    raw = read_yaml(config)
    for item in overrides:
        apply_override(raw, item, config)
    stages = raw["curriculum"]["stages"]
    total = sum(int(s["tokens"]) for s in stages)
    if total == target:
        return []
    out, used = [], 0
    for i, st in enumerate(stages):
        tokens = target - used if i == len(stages) - 1 else max(1, int(st["tokens"]) * target // total)
        used += tokens
        out.append(f"curriculum.stages.{i}.tokens={tokens}")
    print(f"--target-tokens {target:,}: stage budgets scaled by {target / total:.4g}", flush=True)
    return out + [f"curriculum.target_tokens={target}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", "--curriculum-config", dest="config", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--resume", metavar="CHECKPOINT")
    ap.add_argument("--curriculum", action="store_true", help="accepted for compatibility (always on)")
    ap.add_argument("--model-size", choices=sorted(MODEL_SIZES))
    ap.add_argument("--target-tokens", type=int)
    args = ap.parse_args(argv)
    config = args.config or DEFAULT_CONFIG
    overrides = list(args.overrides)
    if args.model_size:
        overrides.append(f"model.preset={MODEL_SIZES[args.model_size]}")
    try:
        from yxanul_ray.driver import prepare_demo_corpus, run_training

        prepare_demo_corpus(config, overrides)
        if args.target_tokens:
            overrides += scaled_budgets(config, overrides, args.target_tokens)
        job = load_job(config, overrides)
        return run_training(job, resume=args.resume)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

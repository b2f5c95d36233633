"""What the benchmark scripts share: the job they measure, from the command line as
`yxanul-ray train` takes it."""

from __future__ import annotations

from yxanul_ray.preflight import prepare_demo_corpus
from yxanul_ray.specs import JobSpec


def benchmark_job(description: str, forced: tuple[str, ...] = (), argv: list[str] | None = None,
                  parents: tuple = ()) -> tuple[JobSpec, str, list[str]]:
    """A benchmark script's `--config`, `--set KEY=VALUE` and `--target-tokens N` (as `yxanul-ray train`
    takes them), from `argv` (default: the command line): the job with `forced` overrides last,
    the demo corpus built where the config names one, and the config path and the user's
    overrides, the scaled budgets included (to train on the same). `parents`: the
    script's own argument parsers (add_help=False), so --help lists their options too."""
    import argparse

    from yxanul_ray.config import load_job, scaled_budget_overrides

    ap = argparse.ArgumentParser(description=description, parents=list(parents))
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--target-tokens", type=int, help="stage budgets scaled to this total, as train does")
    args = ap.parse_args(argv)
    prepare_demo_corpus(args.config, args.overrides)
    overrides = list(args.overrides)
    if args.target_tokens:
        overrides += scaled_budget_overrides(load_job(args.config, overrides), args.target_tokens)
    return load_job(args.config, overrides + list(forced)), args.config, overrides

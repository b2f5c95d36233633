"""`yxanul-ray` command line: plan, demo-data, check, train, compare, export, config-docs.

Each command validates its config before importing torch or Ray, so bad input costs a second,
not a cluster start. Exit codes: 0 success, 1 a failed check or run, 2 bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from yxanul_ray.config import load_job
from yxanul_ray.hub import SourceUnavailable
from yxanul_ray.specs import ConfigError
from yxanul_ray.stopping import EXIT_INTERRUPTED
from yxanul_ray.storage import StorageError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="curriculum YAML, e.g. configs/demo.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set run.workers=2 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yxanul-ray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="print the stage table, totals, warnings and a time estimate")
    _add_config_args(p)

    p = sub.add_parser("train", help="run the curriculum on Ray (joins a running cluster or starts one)")
    add_train_args(p)

    p = sub.add_parser("compare", help="does the curriculum pay? train arms derived from it, compare held-out loss")
    add_compare_args(p)

    p = sub.add_parser("check", help="check every source streams, each stage's mix, transitions; estimate time")
    add_check_args(p)

    p = sub.add_parser("export", help="write a checkpoint as a Hugging Face Llama model")
    p.add_argument("checkpoint", help="a checkpoint directory (holds model.pt, state.json, job.json)")
    p.add_argument("out_dir")
    p.add_argument("--tokenizer", metavar="SPEC", help="the run's tokenizer.json where it is now (its path, or its "
                   "directory), when the one the run named has moved; held to the content the run trained on")
    p.add_argument("--push-to-hub", metavar="REPO", help="then upload the folder to this model repo on the run's Hub "
                   "(data.hf_endpoint), made private if it does not exist; the token is HF_TOKEN or `hf auth login`'s")

    p = sub.add_parser("config-docs", help="write the config reference (docs/config.md) from the Spec classes")
    p.add_argument("--out", default="docs/config.md", help="where to write it (default: docs/config.md)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if the file differs")

    p = sub.add_parser("demo-data", help="build the offline demo corpus (parquet) in DIR")
    p.add_argument("dir", nargs="?", default="data/demo")
    p.add_argument("--scale", type=float, default=1.0, help="corpus size multiplier (benchmarks)")
    p.add_argument("--tokens", metavar="N", help="instead, a corpus of at least N GPT-2 tokens (e.g. 50M) from the "
                   "manual pages, docstrings and sources this machine has, with a tokenizer.json trained on it")
    p.add_argument("--vocab", type=int, default=8192, help="with --tokens: the tokenizer's vocabulary size")
    return parser


def cmd_plan(args: argparse.Namespace) -> int:
    from yxanul_ray.plan import render_plan

    job = load_job(args.config, args.overrides)
    print(render_plan(job))
    return 0


DEFAULT_CONFIG = "configs/yxanul_270m_progressive_curriculum.yaml"
MODEL_SIZES = {"270M": "270m", "270m": "270m", "yxanul-270M": "yxanul-270m", "yxanul-270m": "yxanul-270m",
               "demo": "demo", "tiny": "tiny"}


def add_train_args(p: argparse.ArgumentParser) -> None:
    """`train`'s options, the user's original flags among them (`--curriculum`, `--model-size`,
    `--target-tokens`, `--curriculum-config`)."""
    p.add_argument("config", nargs="?", help=f"curriculum YAML (default: {DEFAULT_CONFIG}; with --resume alone, "
                   "the checkpoint's own settings)")
    p.add_argument("--config", "--curriculum-config", dest="config_flag", metavar="CONFIG", help="the same, as a flag")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set run.workers=2 (repeatable)")
    p.add_argument("--resume", metavar="CHECKPOINT", help="continue from a checkpoint (a directory or a storage URI)")
    p.add_argument("--curriculum", action="store_true", help="accepted for compatibility (always on)")
    p.add_argument("--model-size", choices=sorted(MODEL_SIZES), help="model.preset by the user's size names")
    p.add_argument("--target-tokens", type=int, metavar="N", help="every stage budget scaled to total N")
    p.add_argument("--new-run", action="store_true", help="start a new run even where this job's run has "
                   "checkpoints in storage (by default the same job goes on from its latest)")


def cmd_train(args: argparse.Namespace) -> int:
    from yxanul_ray.config import scaled_budget_overrides
    from yxanul_ray.preflight import prepare_demo_corpus
    from yxanul_ray.storage import storage_join

    config = _one_config(args)
    overrides = list(args.overrides)
    if args.model_size:
        overrides.append(f"model.preset={MODEL_SIZES[args.model_size]}")
    if args.resume and not config:
        # --resume alone continues the run under its own settings (the checkpoint's job.json).
        # Checked first, so a run's directory given instead is named as such, with its latest
        # checkpoint in the fix, not as a missing config file.
        from yxanul_ray.checkpoint import checkpoint_path

        config = storage_join(checkpoint_path(args.resume), "job.json")
    config = config or DEFAULT_CONFIG
    prepare_demo_corpus(config, overrides)
    job = load_job(config, overrides)
    if args.target_tokens:
        scaled = scaled_budget_overrides(job, args.target_tokens)
        if scaled:
            print(f"--target-tokens {args.target_tokens:,}: stage budgets scaled by "
                  f"{args.target_tokens / job.curriculum.target_tokens:.4g}", flush=True)
            job = load_job(config, overrides + scaled)
    from yxanul_ray.launch import run_training  # torch and Ray only now, the config valid

    return run_training(job, resume=args.resume, new_run=args.new_run)


def _one_config(args: argparse.Namespace) -> str | None:
    """The config given as an argument or as --config (the same both ways, or one of them)."""
    if args.config and args.config_flag and args.config != args.config_flag:
        raise ConfigError(f"two configs given ({args.config} and --config {args.config_flag}); fix: give one")
    return args.config or args.config_flag


def add_compare_args(p: argparse.ArgumentParser) -> None:
    _add_config_args(p)
    p.add_argument("--arms", default="curriculum,flat,compressed:0.75",
                   help="comma-separated: curriculum, flat, seq-only, mix-only, compressed:F (flat is always run)")
    p.add_argument("--seeds", type=int, default=1, help="initial weights per arm (run.seed, run.seed+1, ...)")
    p.add_argument("--tokens-scale", type=float, default=1.0, metavar="F",
                   help="every arm on F x the config's target (stage budgets and warmup scaled alike)")
    p.add_argument("--eval-seq-len", type=int, metavar="L", help="held-out rows' seq_len (default: the last stage's)")
    p.add_argument("--eval-every", type=float, default=0.05, metavar="F",
                   help="validate every F x the target tokens (default 0.05)")
    p.add_argument("--out", default="runs/compare", metavar="DIR", help="where compare.json and compare.png go")


def cmd_compare(args: argparse.Namespace) -> int:
    from yxanul_ray.compare import compare_spec, run_compare
    from yxanul_ray.preflight import prepare_demo_corpus

    prepare_demo_corpus(args.config, args.overrides)
    job = load_job(args.config, args.overrides)
    spec = compare_spec(job, args.arms, args.seeds, args.tokens_scale, args.eval_seq_len, args.eval_every, args.out)
    return run_compare(job, spec)


def add_check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help=f"curriculum YAML (default: {DEFAULT_CONFIG})")
    p.add_argument("--config", dest="config_flag", metavar="CONFIG", help="the same, as a flag")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set run.workers=2 (repeatable)")
    p.add_argument("--test-all", action="store_true", help="all stages (default: first and last)")
    p.add_argument("--stage", type=int, help="one stage, 1-based")
    p.add_argument("--test-transitions", action="store_true", help="walk every stage boundary")
    p.add_argument("--sample", type=int, default=0, metavar="N", help="print N decoded packed rows per stage")
    p.add_argument("--steps", type=int, default=2, help="global batches sampled per stage")
    p.add_argument("--estimate", action="store_true", help="estimate the curriculum's wall time")
    p.add_argument("--gpu-json", help="per-seq_len GPU throughput from benchmarks/benchmark_gpu_step.py")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def cmd_check(args: argparse.Namespace) -> int:
    import json

    from yxanul_ray.check import load_gpu_rates, render, run_check
    from yxanul_ray.preflight import prepare_demo_corpus

    try:
        gpu_rates = load_gpu_rates(args.gpu_json) if args.gpu_json else None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    config = _one_config(args) or DEFAULT_CONFIG
    prepare_demo_corpus(config, args.overrides)
    job = load_job(config, args.overrides)
    try:
        checks, report = run_check(job, test_all=args.test_all, stage=args.stage,
                                   transitions=args.test_transitions, sample_rows=args.sample,
                                   do_estimate=args.estimate or gpu_rates is not None, gpu_rates=gpu_rates,
                                   steps=args.steps)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        # One line, so a reader can pick it out of any log lines that Ray prints around it.
        print(json.dumps({"checks": [vars(c) for c in checks], **report}, default=str))
    else:
        print(render(checks, report))
    return 0 if all(c.ok for c in checks) else 1


def cmd_export(args: argparse.Namespace) -> int:
    from yxanul_ray.checkpoint import checked_checkpoint, load_model_tensors
    from yxanul_ray.config import job_from_dict
    from yxanul_ray.export import check_push_target, export_hf, model_card, push_to_hub, trained_tokenizer
    from yxanul_ray.storage import local_copy, storage_join

    if args.push_to_hub:
        check_push_target(args.push_to_hub)
    # A run's directory given instead, or a checkpoint copied in part: one line, the fix naming
    # the run's latest whole checkpoint.
    state, job_dict = checked_checkpoint(args.checkpoint, "yxanul-ray export")
    job = job_from_dict(job_dict, storage_join(args.checkpoint, "job.json"), check_files=False)
    # Before the tensors are read (a bucket's checkpoint is downloaded whole): the tokenizer, then
    # where the export goes.
    tokenizer = trained_tokenizer(args.checkpoint, job.data.tokenizer, state.coordinator.get("tokenizer"),
                                  args.tokenizer, job.data.hf_endpoint)
    try:
        os.makedirs(args.out_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"yxanul-ray export OUT_DIR {args.out_dir}: cannot be made a directory ({e.strerror or e}); "
                          "fix: a directory this user can create, or an existing one (its files of the same name are "
                          "replaced)") from None
    with local_copy(args.checkpoint) as path:  # a URI's checkpoint downloaded first
        model_state = load_model_tensors(path)
    export_hf(model_state, job.model.shape, tokenizer, args.out_dir,
              model_card(job.to_dict(), state.to_dict(), args.checkpoint))
    print(f"exported {args.checkpoint} -> {args.out_dir} (Hugging Face Llama format)")
    if args.push_to_hub:
        url = push_to_hub(args.out_dir, args.push_to_hub, job.data.hf_endpoint,
                          f"Export {job.run.name} at {state.tokens:,} tokens (yxanul-ray)")
        print(f"pushed {args.out_dir} -> {url}")
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from yxanul_ray.demo_corpus import build_demo_corpus

    if args.tokens:
        return _local_corpus(args)
    counts = build_demo_corpus(args.dir, scale=args.scale)
    for name, (docs, chars) in counts.items():
        print(f"{name}: {docs:,} documents, {chars:,} characters -> {args.dir}/{name}/")
    return 0


def _local_corpus(args: argparse.Namespace) -> int:
    from yxanul_ray.local_corpus import build_local_corpus, parse_tokens

    try:
        tokens = parse_tokens(args.tokens)
    except ValueError as e:
        raise ConfigError(f"yxanul-ray demo-data --tokens: {e}") from None
    if tokens < 100_000 or not 256 < args.vocab <= 65_536:
        raise ConfigError("yxanul-ray demo-data: --tokens must be at least 100k and --vocab in 257..65536")
    counts = build_local_corpus(args.dir, tokens, args.vocab, log=lambda line: print(line, flush=True))
    for name, (docs, chars, n) in counts.items():
        print(f"{name}: {docs:,} documents, {chars:,} characters, {n:,} GPT-2 tokens -> {args.dir}/{name}/")
    print(f"tokenizer: {args.dir}/tokenizer.json (byte-level BPE, {args.vocab:,} tokens, trained on this corpus)")
    return 0


def cmd_config_docs(args: argparse.Namespace) -> int:
    from yxanul_ray.config_docs import render

    text = render()
    if args.check:
        try:
            with open(args.out, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current != text:
            print(f"{args.out} is stale; fix: yxanul-ray config-docs --out {args.out}", file=sys.stderr)
            return 1
        return 0
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {args.out}")
    return 0


COMMANDS = {"plan": cmd_plan, "train": cmd_train, "compare": cmd_compare, "check": cmd_check,
            "export": cmd_export, "config-docs": cmd_config_docs, "demo-data": cmd_demo_data}


def reporting_errors(command: Callable[[], int]) -> int:
    """Run a command; an error the user can act on is one line on stderr, not a traceback.
    Every entry point (this CLI and the jobs/ files, which call it) exits through here, so
    one error gets one exit code: 2 bad input, 1 a source or storage that could not be read."""
    try:
        return command()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (SourceUnavailable, StorageError) as e:  # the Hub (a commit to pin, a resume's files), a bucket
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before a run began (a run's own says where to go on from)
        print("stopped (interrupted)", file=sys.stderr)
        return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return reporting_errors(lambda: COMMANDS[args.command](args))


if __name__ == "__main__":
    sys.exit(main())

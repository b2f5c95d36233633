"""`yxanul-ray compare`: does the curriculum pay? The config's model trained under several
schedules derived from its curriculum (arms.py), one arm after another through the train path
(the same Ray Data pipeline, coordinator and step as `train`), each validated at matched token
points on the same held-out documents, and the result as compare.json, compare.png, a table and
a verdict (compare_report.py).

Every flag is checked, and every arm's job derived and validated, before any cluster work; the
sources are listed and the held-out sets sized once, for all arms.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass

from yxanul_ray.arms import Arm, arm_job, parse_arms, scale_job
from yxanul_ray.compare_report import matched_points, plot, summarize, table, verdict
from yxanul_ray.curriculum import plan_curriculum
from yxanul_ray.specs import ConfigError, JobSpec
from yxanul_ray.storage import storage_join


@dataclass(frozen=True)
class CompareSpec:
    arms: list[Arm]
    seeds: int
    tokens_scale: float
    eval_seq_len: int
    eval_every: float
    """Validation every this share of the (scaled) target, in trained tokens."""
    out_dir: str


def compare_spec(job: JobSpec, arms: str, seeds: int, tokens_scale: float, eval_seq_len: int | None,
                 eval_every: float, out_dir: str) -> CompareSpec:
    """The flags checked against the config; a ConfigError naming the flag and the fix."""
    def bad(flag: str, problem: str) -> ConfigError:
        return ConfigError(f"yxanul-ray compare {flag}: {problem}")

    try:
        parsed = parse_arms(arms)
    except ValueError as e:
        raise bad("--arms", str(e)) from None
    if seeds < 1:
        raise bad("--seeds", f"{seeds}: at least 1 (2 or more measure the seed-to-seed spread)")
    if not 0 < tokens_scale <= 1e6:
        raise bad("--tokens-scale", f"{tokens_scale:g}: must be > 0 (0.5 trains every arm on half the config's target)")
    if not 0 < eval_every <= 1:
        raise bad("--eval-every", f"{eval_every:g}: a share of the target in (0, 1], e.g. 0.05")
    max_len = job.model.shape.max_seq_len
    seq = eval_seq_len if eval_seq_len is not None else job.curriculum.stages[-1].seq_len
    if not 0 < seq <= max_len:
        raise bad("--eval-seq-len", f"{seq} is beyond the model's max_seq_len {max_len} (model.overrides.max_seq_len)"
                  if seq > 0 else f"{seq}: must be > 0")
    if job.curriculum.validation_rows < 1:
        raise ConfigError(f"{job.path}: curriculum.validation_rows: 0, but the comparison is measured on held-out "
                          "rows; fix: --set curriculum.validation_rows=8 (or more)")
    return CompareSpec(parsed, seeds, tokens_scale, seq, eval_every, out_dir)


def comparison_base(job: JobSpec, spec: CompareSpec) -> tuple[JobSpec, list[str]]:
    """The config every arm derives from: scaled to --tokens-scale (warmup too), validated at
    --eval-seq-len every --eval-every of the target, one precision for all stages. Also notes."""
    notes = []
    try:
        base = scale_job(job, spec.tokens_scale) if spec.tokens_scale != 1 else job
    except ValueError as e:
        raise ConfigError(f"yxanul-ray compare --tokens-scale: {e}") from None
    fp8 = [st.fp8 for st in base.curriculum.stages]
    if any(fp8) and not all(fp8):
        notes.append("FP8 off in every arm (the config turns it on in some stages only; arms compare at one precision)")
        base = dataclasses.replace(base, curriculum=dataclasses.replace(
            base.curriculum, stages=[dataclasses.replace(st, fp8=False) for st in base.curriculum.stages]))
    every = max(1, round(spec.eval_every * base.curriculum.target_tokens))
    cur = dataclasses.replace(base.curriculum, validation_seq_len=spec.eval_seq_len, validation_every_tokens=every)
    return dataclasses.replace(base, curriculum=cur), notes


def arm_jobs(base: JobSpec, spec: CompareSpec) -> list[list[JobSpec]]:
    """jobs[seed index][arm index], each validated (a ConfigError names the arm)."""
    from yxanul_ray.preflight import check_plan

    jobs = [[arm_job(base, arm, i) for arm in spec.arms] for i in range(spec.seeds)]
    for job in jobs[0]:
        check_plan(job)
    return jobs


def run_compare(job: JobSpec, spec: CompareSpec) -> int:
    """Train every arm for every seed, then write and print the comparison. Exit code as `train`'s."""
    from yxanul_ray.preflight import preflight

    base, notes = comparison_base(job, spec)
    arm_jobs(base, spec)  # every arm checked before anything is read or started
    os.makedirs(spec.out_dir, exist_ok=True)
    base, listing, _ = preflight(base)  # sources listed, held-out sets sized once for every arm
    jobs = arm_jobs(base, spec)
    for note in notes:
        print(f"compare: {note}", flush=True)
    print(describe(jobs[0], spec), flush=True)
    runs: dict[str, list[dict]] = {arm.name: [] for arm in spec.arms}
    for i, seed_jobs in enumerate(jobs):
        for arm, arm_job_ in zip(spec.arms, seed_jobs):
            print(f"\n=== compare: arm {arm.name}, seed {i + 1}/{spec.seeds} (run.seed {arm_job_.run.seed}) ===",
                  flush=True)
            code, record = train_arm(arm_job_, listing)
            if record is None:
                write_json(spec, base, runs, None)
                print(f"compare: arm {arm.name} did not finish (exit {code}); the arms that did are in "
                      f"{os.path.join(spec.out_dir, 'compare.json')}", flush=True)
                return code
            runs[arm.name].append(record)
            write_json(spec, base, runs, None)  # after every arm, so a long comparison can be read as it goes
    return report(spec, base, runs)


def describe(jobs: list[JobSpec], spec: CompareSpec) -> str:
    """The arms' stages, before training: what each arm trains."""
    lines = [f"compare: {len(jobs)} arm(s) x {spec.seeds} seed(s); validation at seq_len {spec.eval_seq_len} every "
             f"{jobs[0].curriculum.validation_every_tokens:,} tokens"]
    for arm, job in zip(spec.arms, jobs):
        plans = plan_curriculum(job.curriculum)
        stages = "; ".join(f"{st.seq_len}x{st.global_batch}: {st.tokens:,}" for st in job.curriculum.stages)
        lines.append(f"  {arm.name:<16} {job.curriculum.target_tokens:>12,} tokens in {sum(p.steps for p in plans):,} "
                     f"steps, {len(plans)} stage(s) [seq_len x batch: tokens]: {stages}")
    return "\n".join(lines)


def train_arm(job: JobSpec, listing) -> tuple[int, dict | None]:
    """One arm's run through the train path: (exit code, its record), the record None unless it
    finished. Ray started (or joined) on the first arm stays up for the rest."""
    from yxanul_ray.checkpoint import load_state
    from yxanul_ray.launch import start_and_fit
    from yxanul_ray.stopping import EXIT_INTERRUPTED, EXIT_TERMINATED, sigterm_interrupts, stop_signal

    started = time.time()
    run_name = f"{job.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = storage_join(job.run.storage_path, run_name)
    try:
        with sigterm_interrupts() as received:
            result = start_and_fit(job, listing, None, run_name, run_dir, started, num_to_keep=1)
    except (KeyboardInterrupt, SystemExit) as stop:
        how = stop_signal(received, stop)
        print(f"compare stopped ({how})", flush=True)
        return (EXIT_TERMINATED if how == "SIGTERM" else EXIT_INTERRUPTED), None
    except Exception as e:
        train_module = sys.modules.get("ray.train")
        if train_module is None or not isinstance(e, train_module.TrainingFailedError):
            raise
        print(e, flush=True)
        return 1, None
    if result.return_value or result.checkpoint is None:
        print(f"training refused: {result.return_value}", flush=True)
        return 1, None
    state, _ = load_state(storage_join(run_dir, os.path.basename(result.checkpoint.path)))
    cur = job.curriculum
    return 0, {"seed": job.run.seed, "run_dir": run_dir, "initial_weights": state.initial_weights,
               "tokens": state.tokens, "steps": state.step, "train_seconds": round(state.train_seconds, 3),
               "run_seconds": round(time.time() - started, 1),
               "stages": [{"name": st.name, "seq_len": st.seq_len, "tokens": st.tokens, "batch": st.global_batch,
                           "mix": st.mix} for st in cur.stages],
               "tokens_by_source": state.tokens_by_source, "stage_tokens_by_source": state.stage_tokens_by_source,
               "points": matched_points(state.validation, cur.validation_every_tokens, cur.target_tokens)}


def write_json(spec: CompareSpec, base: JobSpec, runs: dict[str, list[dict]], summary: dict | None,
               verdict: list[str] | None = None) -> str:
    path = os.path.join(spec.out_dir, "compare.json")
    doc = {"config": base.path, "arms": [a.name for a in spec.arms], "seeds": spec.seeds,
           "tokens_scale": spec.tokens_scale, "target_tokens": base.curriculum.target_tokens,
           "eval_seq_len": spec.eval_seq_len, "eval_every_tokens": base.curriculum.validation_every_tokens,
           "validation_rows": base.curriculum.validation_rows,
           "validation_docs": {name: src.validation_docs for name, src in base.sources.items()},
           "model": dataclasses.asdict(base.model.shape), "workers": base.run.max_workers,
           "runs": runs, "summary": summary, "verdict": verdict}
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)
    return path


def report(spec: CompareSpec, base: JobSpec, runs: dict[str, list[dict]]) -> int:
    summary = summarize(runs)
    lines = verdict(summary)
    path = write_json(spec, base, runs, summary, lines)
    sources = list(runs["flat"][0]["points"][-1]["loss"])
    png = plot(runs, os.path.join(spec.out_dir, "compare.png"),
               f"{os.path.basename(base.path)}: {spec.seeds} seed(s), held-out loss at seq_len {spec.eval_seq_len}")
    print("\n" + table(summary, sources), flush=True)
    print("\nverdict:\n  " + "\n  ".join(lines), flush=True)
    print(f"\ncompare: {path}, {png}", flush=True)
    return 0

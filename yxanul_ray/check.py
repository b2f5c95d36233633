"""`check`: before spending a cluster's hours, prove every source streams, each stage's mix comes
out right, stage k+1 starts where stage k stopped, and estimate the run's time.

Each tested stage runs through the real pipeline (world size 1, so its rows are in stream order)
on a sample of its budget: a few global batches at the stage's own seq_len, batch and mix.
"""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np

from yxanul_ray.curriculum import default_tokens_per_s
from yxanul_ray.cursors import SourceCursor
from yxanul_ray.specs import JobSpec


@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    detail: str


def stages_to_test(n: int, test_all: bool, stage: int | None) -> list[int]:
    """0-based stage indices: --stage N (1-based), --test-all, else the first and the last."""
    if stage is not None:
        if not 1 <= stage <= n:
            raise ValueError(f"--stage {stage}: the curriculum has stages 1..{n}")
        return [stage - 1]
    return list(range(n)) if test_all else sorted({0, n - 1})


def sample_job(job: JobSpec, steps: int) -> JobSpec:
    """Every stage cut to `steps` full global batches (same seq_len, batch and mix)."""
    stages = [dataclasses.replace(st, tokens=st.step_tokens * steps) for st in job.curriculum.stages]
    cur = dataclasses.replace(job.curriculum, stages=stages, target_tokens=sum(s.tokens for s in stages))
    return dataclasses.replace(job, curriculum=cur, run=dataclasses.replace(job.run, workers=1))


def connectivity(job: JobSpec) -> tuple[list[Check], dict]:
    """Each source: list files and read its first document; time to first row. The sources are
    asked at once, as the run's start asks the Hub (manifest.list_sources): each waits on its own
    round trips, not on the others'. Checks come back in the config's order."""
    from yxanul_ray.hub import at_once

    names = list(job.sources)
    results = at_once(lambda name: _source_connectivity(job, name), names)
    checks = [check for check, _ in results]
    files = {name: f for name, (_, f) in zip(names, results) if f is not None}
    return checks, files


def _source_connectivity(job: JobSpec, name: str):
    """(its Check, its SourceFiles or None): list the source's files and read its first document."""
    from yxanul_ray.hub import Redacted, SourceUnavailable, hf_token, resolve_files
    from yxanul_ray.readers import read_file_docs
    from yxanul_ray.stage_data import read_spec

    spec = job.sources[name]
    t0 = time.perf_counter()
    try:
        f = resolve_files(spec, job.data.hf_endpoint)
        rs = dataclasses.replace(read_spec(job, f), holdout_docs=0)
        token = Redacted(hf_token() if f.kind == "hf" else None)
        first = None
        for i in range(len(f.paths)):
            for table in read_file_docs(rs, token, 0, i, i, None, False):
                texts = [t for t, bad in zip(table.column("text").to_pylist(), table.column("bad").to_pylist())
                         if not bad]
                if texts:
                    first = texts[0]
                    break
            if first is not None:
                break
        if first is None:
            raise SourceUnavailable(f"source {name}: no readable document in {len(f.paths)} file(s) "
                                    f"(empty files or only malformed rows)")
        where = spec.hf or spec.path
        return Check(f"connectivity {name}", True, f"{len(f.paths)} file(s) at {where}; first row in "
                     f"{time.perf_counter() - t0:.2f} s"), f
    except (SourceUnavailable, KeyError, OSError, ValueError) as e:
        return Check(f"connectivity {name}", False, str(e).strip("'\"")), None


def run_stage_sample(job: JobSpec, k: int, cursors: dict, files: dict, packers, sample_rows: int) -> dict:
    import ray

    from yxanul_ray.stage_data import StageBatches, build_stage_data, source_ids
    from yxanul_ray.tokenizer import load_tokenizer, run_tokenizer

    tokenizer, _ = run_tokenizer(job.data.tokenizer, job.data.hf_endpoint)  # what the run's tasks load
    tok = load_tokenizer(tokenizer)
    st = job.curriculum.stages[k]
    t0 = time.perf_counter()
    sd = build_stage_data(job, k, cursors, 1, files, tok.eos_id, packers, tokenizer=tokenizer)
    ids = source_ids(job)
    [iterator] = sd.split(1)
    sd.start()
    batches = list(StageBatches(iterator, sd.schedule, ids))
    elapsed = time.perf_counter() - t0
    end = ray.get(sd.end_state)
    rows = np.concatenate([b["tokens"] for b in batches])
    source = np.concatenate([b["source"] for b in batches])
    names = {i: n for n, i in ids.items()}
    tokens_by_source = {names[i]: int((source == i).sum()) * st.seq_len for i in np.unique(source)}
    per_source_rows = {s: rows[source == ids[s]] for s in tokens_by_source}
    return {
        "stage": k + 1, "name": st.name, "seq_len": st.seq_len, "rows": len(rows), "tokens": len(rows) * st.seq_len,
        "seconds": elapsed, "rows_per_s": len(rows) / elapsed, "tokens_per_s": len(rows) * st.seq_len / elapsed,
        "eos": int((rows[:, 1:] == tok.eos_id).sum()), "tokens_by_source": tokens_by_source,
        "target_mix": dict(st.mix), "end": end,
        "samples": {s: tok.decode(r[0]) for s, r in per_source_rows.items() if len(r)},
        "sample_rows": [tok.decode(r) for r in rows[:sample_rows]],
        "first_row": {s: r[0].tolist() for s, r in per_source_rows.items() if len(r)},
        "last_row": {s: r[-1].tolist() for s, r in per_source_rows.items() if len(r)},
    }


def mix_check(r: dict, job: JobSpec) -> Check:
    total = sum(r["tokens_by_source"].values())
    st = job.curriculum.stages[r["stage"] - 1]
    worst, parts = 0.0, []
    for s, w in st.mix.items():
        got = r["tokens_by_source"].get(s, 0)
        dev_rows = abs(got - w * total) / st.seq_len
        worst = max(worst, dev_rows)
        parts.append(f"{s} {got / max(1, total):.2%} (target {w:.0%})")
    steps = max(1, total // st.step_tokens)
    ok = worst <= 1.0 + 1e-9  # within one row of the ratio over the whole sample
    return Check(f"stage {r['stage']} mix", ok, ", ".join(parts) + f"; worst deviation {worst:.2f} rows over "
                 f"{steps} step(s)")


def transition_checks(prev: dict, cur: dict, job: JobSpec) -> list[Check]:
    """Stage k+1 starts where stage k stopped, per source; seq_len and mix change as configured."""
    out = []
    a, b = job.curriculum.stages[prev["stage"] - 1], job.curriculum.stages[cur["stage"] - 1]
    for s in cur["first_row"]:
        if s not in prev["last_row"]:
            continue
        end = SourceCursor.from_dict(prev["end"][s]["cursor"])
        continuous = prev["last_row"][s][-1] == cur["first_row"][s][0]
        out.append(Check(f"transition {prev['stage']}->{cur['stage']} {s}", continuous,
                         f"stage {cur['stage']} starts at {end.to_dict()} with the last trained token of stage "
                         f"{prev['stage']} as its first input: " + ("no document repeated, none skipped"
                                                                   if continuous else "DISCONTINUOUS")))
    shape_ok = cur["seq_len"] == b.seq_len and prev["seq_len"] == a.seq_len
    out.append(Check(f"transition {prev['stage']}->{cur['stage']} shape", shape_ok,
                     f"seq_len {a.seq_len} -> {b.seq_len}, mix {a.mix} -> {b.mix}"))
    return out


def load_gpu_rates(path: str) -> dict[int, float]:
    """{seq_len: best tokens/s per GPU} from benchmarks/benchmark_gpu_step.py's project.json. Read
    before any cluster work, so a wrong file fails in a second with its name and the field."""
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise ValueError(f"--gpu-json {path}: cannot read it ({e.strerror}); pass the project.json "
                         "that benchmarks/benchmark_gpu_step.py wrote") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--gpu-json {path}: not JSON (line {e.lineno}: {e.msg})") from None
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ValueError(f"--gpu-json {path}: field 'rows' is missing or not a list; expected the "
                         "project.json of benchmarks/benchmark_gpu_step.py")
    rates: dict[int, float] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "seq" not in row:
            raise ValueError(f"--gpu-json {path}: rows[{i}] has no 'seq' field")
        if "tok_s" not in row:
            continue  # a shape that failed on the GPU (its row holds the error), not a rate
        try:
            seq_len, tok_s = int(row["seq"]), float(row["tok_s"])
        except (TypeError, ValueError):
            raise ValueError(f"--gpu-json {path}: rows[{i}].seq / .tok_s must be numbers") from None
        if tok_s <= 0:
            raise ValueError(f"--gpu-json {path}: rows[{i}].tok_s must be > 0, got {tok_s}")
        rates[seq_len] = max(rates.get(seq_len, 0.0), tok_s)
    if not rates:
        raise ValueError(f"--gpu-json {path}: no row has a 'tok_s' (every benchmarked shape failed?)")
    return rates


def estimate(job: JobSpec, pipeline_rates: dict[int, float],
             gpu_by_seq: dict[int, float] | None = None) -> tuple[list[dict], float]:
    """Per stage: GPU-side rate (config, benchmark figures per GPU by seq_len times the workers,
    else the user's 4090 figures) vs the measured pipeline rate; the slower side bounds the stage."""
    gpu_by_seq = gpu_by_seq or {}
    rows, total = [], 0.0
    measured = list(pipeline_rates.values())
    fallback = float(np.median(measured)) if measured else None
    for k, st in enumerate(job.curriculum.stages):
        gpu = st.estimate_tokens_per_s or gpu_by_seq.get(st.seq_len) or default_tokens_per_s(st.seq_len)
        gpu *= job.run.max_workers if (gpu_by_seq.get(st.seq_len) and not st.estimate_tokens_per_s) else 1
        data = pipeline_rates.get(k, fallback)
        rate = min(gpu, data) if data else gpu
        secs = st.tokens / rate
        total += secs
        rows.append({"stage": k + 1, "name": st.name, "gpu_tokens_per_s": gpu, "data_tokens_per_s": data,
                     "bound": "data" if data and data < gpu else "gpu", "seconds": secs})
    return rows, total


def run_check(job: JobSpec, *, test_all: bool = False, stage: int | None = None, transitions: bool = False,
              sample_rows: int = 0, do_estimate: bool = False, gpu_rates: dict[int, float] | None = None,
              steps: int = 2) -> tuple[list[Check], dict]:
    """All checks; returns (checks, machine-readable report)."""
    from yxanul_ray.preflight import absolute_paths, check_tokenizer, pin_hub_endpoint

    job = pin_hub_endpoint(job)  # one Hub for this process and the stage samples' read tasks
    check_tokenizer(job)  # a ConfigError, as `train` gives it before any cluster work
    n = len(job.curriculum.stages)
    indices = list(range(n)) if transitions else stages_to_test(n, test_all, stage)
    checks, files = connectivity(job)
    report: dict = {"config": job.path, "stages": [], "estimate": None}
    if not all(c.ok for c in checks):
        return checks, report

    from yxanul_ray.raycluster import init_ray, quiet_ray_data

    init_ray(num_cpus=4, dashboard=False)  # first: it sets Ray's environment before Ray is imported
    quiet_ray_data()
    from yxanul_ray.stage_packers import StagePackers  # a Ray actor: imports Ray
    sjob = sample_job(absolute_paths(job), steps)
    packers = StagePackers.remote()
    cursors: dict = {}
    prev = None
    rates: dict[int, float] = {}
    for k in range(max(indices) + 1):
        if k not in indices and not transitions:
            continue  # stages between the tested ones start from the beginning of each source
        r = run_stage_sample(sjob, k, cursors, files, packers, sample_rows)
        report["stages"].append({key: v for key, v in r.items() if key not in ("first_row", "last_row", "end")})
        rates[k] = r["tokens_per_s"]
        checks.append(mix_check(r, sjob))
        checks.append(Check(f"stage {k + 1} rows", r["rows"] * r["seq_len"] == sjob.curriculum.stages[k].tokens,
                            f"{r['rows']:,} rows of {r['seq_len']} ({r['tokens']:,} tokens), {r['eos']:,} EOS, "
                            f"{r['rows_per_s']:,.0f} rows/s, {r['tokens_per_s']:,.0f} tokens/s"))
        if transitions and prev is not None:
            checks += transition_checks(prev, r, sjob)
        prev = r
        if transitions:
            cursors = {**cursors, **{s: SourceCursor.from_dict(v["cursor"]) for s, v in r["end"].items()}}
    if do_estimate:
        rows, total = estimate(job, rates, gpu_rates)
        report["estimate"] = {"stages": rows, "total_seconds": total}
    return checks, report


def render(checks: list[Check], report: dict) -> str:
    lines = [f"Streaming check for {report['config']}", ""]
    for r in report["stages"]:
        lines.append(f"Stage {r['stage']} ({r['name']}, seq_len {r['seq_len']}): {r['rows']:,} rows, "
                     f"{r['tokens_per_s']:,.0f} tokens/s through read -> tokenize -> pack -> mix")
        for s, text in r["samples"].items():
            lines.append(f"  sample {s}: {text[:160]!r}")
        for i, text in enumerate(r["sample_rows"]):
            lines.append(f"  row {i}: {text[:160]!r}")
    if report.get("estimate"):
        est = report["estimate"]
        lines += ["", f"{'#':>2} {'stage':<22} {'GPU tok/s':>10} {'data tok/s':>11} {'bound':>6} {'time':>9}"]
        for r in est["stages"]:
            data = f"{r['data_tokens_per_s']:,.0f}" if r["data_tokens_per_s"] else "-"
            lines.append(f"{r['stage']:>2} {r['name'][:22]:<22} {r['gpu_tokens_per_s']:>10,.0f} {data:>11} "
                         f"{r['bound']:>6} {r['seconds'] / 60:>8.1f}m")
        lines.append(f"estimated total: {est['total_seconds'] / 3600:.2f} h")
    lines.append("")
    lines += [f"{'PASS' if c.ok else 'FAIL'}  {c.name}: {c.detail}" for c in checks]
    failed = sum(not c.ok for c in checks)
    lines.append(f"\n{len(checks) - failed} passed, {failed} failed")
    return "\n".join(lines)

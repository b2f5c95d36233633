"""The whole job on a real Ray cluster: `ray job submit` of the demo curriculum, a worker, the
packing actor and the coordinator killed mid-run, and `--resume` from a mid-stage checkpoint; a
run stopped (Ctrl-C, `ray job stop`), failed for good, or refused by a restarted coordinator
(its files changed) names the checkpoint to go on from. Two
CPU workers with DDP on 2 cores."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
import yaml

from tests.helpers import REPO, demo_subset, undisturbed_run, write_yaml
from yxanul_ray.checkpoint import TrainState
from yxanul_ray.config import load_job
from yxanul_ray.reference_loop import run_reference
from yxanul_ray.report import final_summary

pytestmark = pytest.mark.ray
DEMO = os.path.join(REPO, "configs", "demo.yaml")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
DONE = re.compile(r"Stage (\d+)/(\d+) done: ([\d,]+) tokens; realised mix: (.*)")
MIX_ITEM = re.compile(r"(\w+) ([\d,]+) \(")


def load_demo(*overrides: str):
    """configs/demo.yaml as the job sees it. Its corpus lives in the repo's data/demo (built here
    if missing: a `ray job submit` run builds its own copy inside the uploaded working dir)."""
    from yxanul_ray.preflight import prepare_demo_corpus

    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        prepare_demo_corpus(DEMO, list(overrides))
        return load_job(DEMO, list(overrides))
    finally:
        os.chdir(cwd)


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def stage_results(output: str) -> dict[int, dict]:
    """{stage: {"tokens": n, "mix": {source: tokens}}} from the rank-0 'done' lines (last wins)."""
    out = {}
    for line in ANSI.sub("", output).splitlines():
        m = DONE.search(line)
        if m:
            mix = {s: _int(n) for s, n in MIX_ITEM.findall(m.group(4))}
            out[int(m.group(1))] = {"tokens": _int(m.group(3)), "mix": mix}
    return out


def assert_curriculum_completed(output: str, job, stages=None) -> None:
    results = stage_results(output)
    stages = stages or range(1, len(job.curriculum.stages) + 1)
    for k in stages:
        st = job.curriculum.stages[k - 1]
        assert k in results, f"stage {k} never finished:\n{output[-3000:]}"
        got = results[k]
        assert got["tokens"] == st.tokens, (k, got)  # each stage ends exactly on its budget
        total = sum(got["mix"].values())
        assert total == st.tokens
        for source, weight in st.mix.items():
            # Within one row of the ratio (plus the stage's final masked positions), whatever the world size.
            assert abs(got["mix"].get(source, 0) - weight * total) <= 2 * st.seq_len, \
                (k, source, got)
    assert f"REACHED TARGET: {job.curriculum.target_tokens:,} tokens" in ANSI.sub("", output)


SOURCE_SUMMARY = re.compile(r"distinct source tokens consumed: [\d,]+|\w+: [\d,]+ documents, .*")


def source_summary(output: str) -> list[str]:
    """The final summary's lines on what the sources gave (distinct tokens; documents, EOS, wraps
    and skipped rows per source), sorted."""
    return sorted(SOURCE_SUMMARY.findall(ANSI.sub("", output)))


def undisturbed_source_summary(job) -> list[str]:
    """source_summary of an undisturbed run of `job` (tests.helpers.undisturbed_run)."""
    _, totals = undisturbed_run(job)
    return source_summary(final_summary(job, TrainState(), {s: st.to_dict() for s, st in totals.items()}))


JOB_ENV = {**os.environ, "RAY_AUTH_MODE": "token"}


def submit_command(address: str, submission_id: str, *args: str, wait: bool = True) -> list[str]:
    # The documented command: the repo's runtime_env (working_dir ".", excludes), from its root.
    return ["ray", "job", "submit", "--address", address, "--submission-id", submission_id,
            *([] if wait else ["--no-wait"]), "--runtime-env", "configs/runtime_env.yaml", "--", "python",
            "jobs/train.py", *args]


def ray_job(address: str, verb: str, submission_id: str, timeout_s: int = 120) -> str:
    """`ray job VERB` (logs, stop, status) of one submission; its output."""
    proc = subprocess.run(["ray", "job", verb, "--address", address, submission_id], capture_output=True,
                          text=True, env=JOB_ENV, timeout=timeout_s)
    return proc.stdout + proc.stderr


def submit(address: str, *args: str, timeout_s: int = 1500) -> str:
    submission_id = f"yxanul-test-{uuid.uuid4().hex[:8]}"
    try:
        proc = subprocess.run(submit_command(address, submission_id, *args), capture_output=True, text=True,
                              timeout=timeout_s, cwd=REPO, env=JOB_ENV)
    finally:
        # Ending the client does not end the job: stop it, or it would hold the cluster's CPUs
        # under the tests that follow (a no-op for a job that has finished).
        ray_job(address, "stop", submission_id)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    return out


@pytest.mark.timeout(1800)
def test_demo_curriculum_via_ray_job_submit(job_address, tmp_path):
    """The README's `ray job submit` of the demo, with a relative storage path: the checkpoints
    go under ~/ray_results, not into Ray's temporary copy of the working dir; the same job
    submitted again goes on from its first attempt's latest checkpoint (here: the final one)."""
    relative = f"yxanul-test-{uuid.uuid4().hex[:8]}"
    durable = os.path.join(os.path.expanduser("~/ray_results"), relative)
    try:
        out = submit(job_address, "--config", "configs/demo.yaml", "--set", f"run.storage_path={relative}")
        assert f"checkpoints go to {durable}" in out
        again = ANSI.sub("", submit(job_address, "--config", "configs/demo.yaml", "--set",
                                    f"run.storage_path={relative}"))
        assert re.search(r"run demo-\w+ has checkpoints in \S+: it goes on from its latest", again), again[-3000:]
        assert "Resumed from" in again and "Stage 1/10:" not in again  # nothing trained twice
        check_demo_run(out, durable)
    finally:
        shutil.rmtree(durable, ignore_errors=True)  # ~400 MB of checkpoints; CI disks can be small


def check_demo_run(out: str, storage: str) -> None:
    job = load_demo()
    assert "2 worker(s)" in out  # two CPU workers with DDP on 2 cores, no deadlock
    assert_curriculum_completed(out, job)
    # Ray Train's echo of each report and Ray Data's notice of the progress bars turned off
    # stay off the console (the workers' and the coordinator's); checkpoint paths stay on it.
    assert "Reporting training result" not in out and "Checkpoint successfully created" in out
    assert not re.search(r"\(CurriculumCoordinator pid=\d+\) Progress bars disabled", ANSI.sub("", out))
    starts = [int(m) for m in re.findall(r"Stage (\d+)/10: ", ANSI.sub("", out))]
    assert starts == sorted(starts) and sorted(set(starts)) == list(range(1, 11))  # all ten, in order
    # Held-out loss per domain at every stage boundary, at one seq_len, and lower at the end.
    val = [dict(re.findall(r"(\w+) loss ([\d.]+)", line))
           for line in re.findall(r"validation \(seq_len 128\): (.*)", ANSI.sub("", out))]
    assert len(val) == 10 and all(v.keys() == {"fineweb", "math", "code"} for v in val), val
    assert all(float(val[-1][s]) < float(val[0][s]) for s in val[0]), val
    checkpoints = glob.glob(os.path.join(storage, "*", "checkpoint_*", "state.json"))
    stages_checkpointed = {json.load(open(p))["stage"] for p in checkpoints}
    assert set(range(1, 11)) <= stages_checkpointed  # a checkpoint at the end of every stage


def _train_proc(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "jobs/train.py", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _train_worker_pids() -> list[int]:
    return _ray_process_pids(b"RayTrainWorker")


def _ray_process_pids(title: bytes) -> list[int]:
    """PIDs of the Ray worker processes whose title (Ray sets it as the command line) has `title`."""
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if title in f.read():
                        pids.append(int(pid))
            except OSError:
                pass
    return pids


VALIDATION = re.compile(r"validation \(seq_len \d+\): (.*)")
STOPPED = re.compile(r"(run stopped \(\w+\)|training failed|training refused: .*?); "
                     r"the latest checkpoint is (\S+) \(stage (\d+)/2, "
                     r"(\d+) steps in, ([\d,]+)/([\d,]+) tokens\); go on from it with: "
                     r"python jobs/train.py --resume (\S+)")


def two_stage_config(tmp_path) -> str:
    """The demo's stages 4 and 5 at half their budgets (8,000 tokens, then 15,000), a checkpoint
    every 2,000 tokens: the first after the first step, some 30 s after the start on 2 cores,
    and 15 s of training after it."""
    load_demo()
    return demo_subset(str(tmp_path / "two_stages.yaml"), 3, 5, scale=0.5, checkpoint_every_tokens=2000)


def assert_names_latest_checkpoint(out: str, storage: str, how: str) -> None:
    """The stopped run's last word names its latest checkpoint and the command that resumes it."""
    m = STOPPED.search(ANSI.sub("", out))
    assert m, out[-3000:]
    assert m.group(1) == how or (how == "training refused" and m.group(1).startswith("training refused: "))
    latest = m.group(2)
    assert m.group(7) == latest
    (run_dir,) = glob.glob(os.path.join(storage, "*"))
    # One the run wrote whole. (Under `ray job stop` the workers may write one more in the
    # seconds between the driver's last word and their end.)
    assert latest in {os.path.dirname(p) for p in glob.glob(os.path.join(run_dir, "checkpoint_*", "model.pt"))}
    state = json.load(open(os.path.join(latest, "state.json")))
    assert (state["stage"] + 1, state["step_in_stage"], state["tokens"]) == (
        int(m.group(3)), int(m.group(4)), _int(m.group(5)))
    assert state["tokens"] < _int(m.group(6)) == 23_000  # stopped before its target


@pytest.mark.timeout(600)
@pytest.mark.parametrize("ending", ["ctrl-c", "failure"])
def test_stopped_or_failed_run_names_the_checkpoint_to_go_on_from(tmp_path, ending):
    """Once a checkpoint is written, Ctrl-C (SIGINT to the driver: Ray Train aborts the run, exit
    130), or a train worker killed with no restarts left (run.max_failures=0: Ray Train's
    TrainingFailedError, exit 1): the driver's last word names the run's latest checkpoint and
    the command that resumes it."""
    storage = str(tmp_path / "runs")
    proc = _train_proc("--config", two_stage_config(tmp_path), "--set", f"run.storage_path={storage}",
                       "--set", "run.max_failures=0")
    lines, stopped = [], False
    try:
        for line in proc.stdout:
            lines.append(line)
            if not stopped and "Checkpoint successfully created" in line:
                # Processes this test started, by PID: the driver, or a train worker of its run.
                pid, sig = (proc.pid, signal.SIGINT) if ending == "ctrl-c" else (_train_worker_pids()[-1],
                                                                                 signal.SIGKILL)
                os.kill(pid, sig)
                stopped = True
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = "".join(lines)
    assert stopped, out[-3000:]
    if ending == "ctrl-c":
        assert proc.returncode == 130, out[-3000:]
        assert_names_latest_checkpoint(out, storage, "run stopped (interrupted)")
    else:
        assert proc.returncode == 1, out[-3000:]
        assert "the run's last error, by rank (Ray's logs hold the tracebacks):" in out
        assert_names_latest_checkpoint(out, storage, "training failed")


@pytest.mark.timeout(600)
def test_a_source_that_runs_out_mid_run_ends_it_at_once_without_restarts(tmp_path):
    """A source of one short document (dictionary-encoded parquet: its footer gives no bound of
    its text, so the driver cannot refuse it) fills the first stage by wrapping, and cannot fill
    the second even in every pass a stage may take. The packing actor's CannotContinue reaches
    every rank at the switch: the run ends there, exit 1, with one line naming the source, the
    fix and the latest checkpoint, and no restart of the worker group."""
    from tests.pipeline_helpers import write_docs

    math_dir = tmp_path / "math"
    write_docs(str(math_dir / "part-0.parquet"), ["Seven times eight is fifty-six, and nine times nine is "
                                                  "eighty-one; both are checked."])
    storage = str(tmp_path / "runs")
    proc = _train_proc("--config", two_stage_config(tmp_path), "--set", f"run.storage_path={storage}",
                       "--set", f"sources.math.path={math_dir}/*.parquet", "--set", "sources.math.validation_docs=0",
                       "--set", "curriculum.validation_rows=0")
    lines, switch_at = [], None
    try:
        for line in proc.stdout:
            lines.append(line)
            if switch_at is None and "Stage 1/2 done" in line:
                switch_at = time.monotonic()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    ended_after_s = time.monotonic() - switch_at if switch_at else None
    out = ANSI.sub("", "".join(lines))
    assert proc.returncode == 1, out[-4000:]
    assert switch_at is not None and ended_after_s < 60, (ended_after_s, out[-3000:])
    assert re.search(r"training refused: source math ran out in one stage: .*; fix: add data to sources\.math, or "
                     r"lower its mix weight; the latest checkpoint is", out), out[-3000:]
    assert out.count("Attempting to start training worker group") == 1, failure_lines(out)  # no restart
    assert "training failed" not in out
    assert_names_latest_checkpoint(out, storage, "training refused")


@pytest.mark.timeout(600)
def test_workers_train_on_the_drivers_listing_without_seeing_its_local_paths(tmp_path):
    """The job crosses to the coordinator and the train workers validated: they rebuild it
    without looking at their node's filesystem. Here every source's path names a directory no
    process has (as a node without the driver's local mount would see it); the run reads the
    files the driver listed and trains to its target."""
    import dataclasses

    from yxanul_ray.launch import start_and_fit
    from yxanul_ray.preflight import preflight

    load_demo()
    config = demo_subset(str(tmp_path / "one_stage.yaml"), 3, 4, scale=0.25)
    job, listing, _ = preflight(load_job(config, [f"run.storage_path={tmp_path / 'runs'}"]))
    elsewhere = {name: dataclasses.replace(src, path=f"/not-on-this-node/{name}/*.parquet")
                 for name, src in job.sources.items()}
    job = dataclasses.replace(job, sources=elsewhere)
    result = start_and_fit(job, listing, None, "no-local-paths", str(tmp_path / "runs" / "no-local-paths"),
                           time.time())
    assert result.error is None and result.return_value is None, result.error
    state = json.load(open(os.path.join(result.checkpoint.path, "state.json")))
    assert state["tokens"] == job.curriculum.target_tokens == 4_000


@pytest.mark.timeout(600)
def test_checkpoints_kept_are_the_stage_boundaries_and_the_latest_and_reports_carry_the_loss(tmp_path):
    """run.keep_checkpoints=1 with a checkpoint every 1,000 tokens over two stages: what stays in
    storage is each stage's boundary checkpoint and the newest mid-stage one. Ray Train's
    reports carry the last log interval's loss, LR and rate, and the validation at stage ends."""
    from yxanul_ray.launch import start_and_fit
    from yxanul_ray.preflight import preflight

    load_demo()
    config = demo_subset(str(tmp_path / "two_stages.yaml"), 3, 5, scale=0.25, checkpoint_every_tokens=1000,
                         keep_checkpoints=1, log_every_steps=2)
    job, listing, _ = preflight(load_job(config, [f"run.storage_path={tmp_path / 'runs'}"]))
    run_dir = str(tmp_path / "runs" / "kept")
    result = start_and_fit(job, listing, None, "kept", run_dir, time.time())
    assert result.error is None and result.return_value is None, result.error
    states = [json.load(open(p)) for p in glob.glob(os.path.join(run_dir, "checkpoint_*", "state.json"))]
    kept = sorted(states, key=lambda st: st["tokens"])
    boundaries = [st["tokens"] for st in kept if st["step_in_stage"] == 0]
    mid = [st["tokens"] for st in kept if st["step_in_stage"] > 0]
    # 2,048 tokens a step in both stages: the newest mid-stage checkpoint is the last full step's
    assert boundaries == [4_000, 11_500] and len(mid) == 1 and 11_500 - 2_048 <= mid[0] < 11_500, kept
    # Ray Train keeps the metrics of the checkpoints it keeps (Result.metrics_dataframe)
    frame = result.metrics_dataframe.sort_values("tokens")
    assert {"loss", "lr", "tokens_per_s", "stage", "val_fineweb", "val_math", "val_code"} <= set(frame.columns)
    assert list(frame["tokens"]) == [4_000, mid[0], 11_500] and frame["loss"].notna().all()
    assert list(frame["val_math"].notna()) == [True, False, True]


@pytest.mark.timeout(600)
def test_time_based_checkpoints_are_taken_on_rank_0_s_clock_by_every_rank(tmp_path):
    """run.checkpoint_every_s with no token interval: mid-stage checkpoints come on rank 0's
    clock, shared by the log interval's all-reduce, so both workers report them together (a rank
    that decided alone would leave the other waiting) and the run ends at its exact target."""
    from yxanul_ray.launch import start_and_fit
    from yxanul_ray.preflight import preflight
    from yxanul_ray.train_loop import checkpoint_due

    assert checkpoint_due(0, 31.0, 0, 30.0) and checkpoint_due(2000, 0.0, 2000, 0) and not checkpoint_due(
        1999, 29.9, 2000, 30.0) and not checkpoint_due(10**9, 10**9, 0, 0)
    load_demo()
    config = demo_subset(str(tmp_path / "two_stages.yaml"), 3, 5, scale=0.5, checkpoint_every_s=2,
                         keep_checkpoints=None, log_every_steps=1)
    job, listing, _ = preflight(load_job(config, [f"run.storage_path={tmp_path / 'runs'}"]))
    assert job.run.workers == 2 and job.run.checkpoint_every_tokens == 0
    run_dir = str(tmp_path / "runs" / "timed")
    result = start_and_fit(job, listing, None, "timed", run_dir, time.time())
    assert result.error is None and result.return_value is None, result.error
    states = [json.load(open(p)) for p in glob.glob(os.path.join(run_dir, "checkpoint_*", "state.json"))]
    mid = sorted(st["tokens"] for st in states if st["step_in_stage"] > 0)
    assert len(mid) >= 2, sorted((st["tokens"], st["step_in_stage"]) for st in states)
    assert max(st["tokens"] for st in states) == job.curriculum.target_tokens == 23_000


@pytest.mark.timeout(900)
def test_storage_made_unwritable_mid_run_ends_it_resumable_from_the_last_whole_checkpoint(tmp_path):
    """The run's storage turns read-only after its first checkpoint (a bind mount remounted
    read-only in the run's own mount namespace: root ignores permission bits). The next
    checkpoint cannot be written: the run ends with one line naming the cause and the latest
    whole checkpoint, which `--resume` (where the storage is writable again) takes to the exact
    target."""
    import tempfile

    storage = tmp_path / "runs"
    storage.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="yr", dir="/tmp")  # Ray's socket paths must stay short
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": ray_tmp}
    mount_then_train = f'mount --bind {storage} {storage} && exec "$@"'
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "--pid", "--fork", "--mount-proc", "bash",
                             "-c", mount_then_train, "bash", sys.executable, "jobs/train.py", "--config",
                             two_stage_config(tmp_path), "--set", f"run.storage_path={storage}"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    lines, read_only = [], False
    try:
        for line in proc.stdout:
            lines.append(line)
            if not read_only and "Checkpoint successfully created" in line:
                subprocess.run(["nsenter", "-t", str(proc.pid), "-m", "mount", "-o", "remount,ro,bind", str(storage)],
                               check=True)
                read_only = True
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    out = ANSI.sub("", "".join(lines))
    assert read_only and proc.returncode == 1, out[-4000:]
    # The train worker's write (errors.CannotContinue), or Ray Train's own record of its checkpoints
    # (a controller error, which Ray Train does not retry), whichever meets the storage first.
    assert re.search(r"(checkpoint \S+ could not be written to \S+|the run's storage refused a write) \(.*Read-only "
                     r"file system.*\); fix: free or restore the storage", out), out[-4000:]
    how = "training refused" if "training refused: checkpoint" in out else "training failed"
    assert_names_latest_checkpoint(out, str(storage), how)
    latest = STOPPED.search(out).group(2)

    resumed = subprocess.run([sys.executable, "jobs/train.py", "--resume", latest], cwd=REPO, capture_output=True,
                             text=True, timeout=600)
    rout = ANSI.sub("", resumed.stdout + resumed.stderr)
    assert resumed.returncode == 0, rout[-4000:]
    final = json.load(open(os.path.join(re.search(r"final checkpoint: (\S+)", rout).group(1), "state.json")))
    assert final["tokens"] == 23_000 and final["stage"] == 2


@pytest.mark.timeout(600)
def test_files_changed_under_a_restarted_coordinator_end_the_run_without_retries(tmp_path):
    """A file added to a source, then the coordinator's process killed: the restarted coordinator
    lists the sources again and refuses the checkpoint the restarted workers restore (its cursors
    index the old list). The run ends at the first refusal, though run.max_failures allows three
    restarts (each would be refused alike), and its last word names the file and the checkpoint."""
    config = yaml.safe_load(open(two_stage_config(tmp_path)))  # builds the repo's demo corpus if missing
    corpus = tmp_path / "demo"  # a copy this test may change
    shutil.copytree(os.path.join(REPO, "data", "demo"), corpus)
    for name, source in config["sources"].items():
        source["path"] = str(corpus / name / "*.parquet")
    storage = str(tmp_path / "runs")
    config["run"].update(storage_path=storage, max_failures=3)
    config_path = write_yaml(str(tmp_path / "own_corpus.yaml"), config)
    other_coordinators = set(_ray_process_pids(b"ray::CurriculumCoordinator"))
    proc = _train_proc("--config", config_path)
    lines, killed = [], None
    try:
        for line in proc.stdout:
            lines.append(line)
            if killed is None and "Checkpoint successfully created" in line:
                shutil.copy(corpus / "code" / "part-00000.parquet", corpus / "code" / "part-00009.parquet")
                pids = set(_ray_process_pids(b"ray::CurriculumCoordinator")) - other_coordinators
                assert len(pids) == 1, pids
                killed = pids.pop()
                os.kill(killed, signal.SIGKILL)  # a process this test started, by PID
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = ANSI.sub("", "".join(lines))
    assert killed is not None, out[-3000:]
    assert proc.returncode == 1, failure_lines(out)
    assert re.search(r"training refused: .*code: 4 files then, 5 now; new: 'part-00009.parquet'", out), out[-3000:]
    assert out.count("[FailurePolicy]") == 1  # the coordinator's death; the refused restart is the last
    assert "Resumed from" not in out  # a refused restore announces no resume
    assert "training failed" not in out  # one last word: the refusal, and where to go on from
    assert_names_latest_checkpoint(out, storage, "training refused")


@pytest.mark.timeout(600)
def test_ray_job_stop_stops_the_run_and_names_the_checkpoint_to_go_on_from(job_address, tmp_path):
    """`ray job stop` (SIGTERM to the driver, SIGKILL 3 s later) once a checkpoint is written:
    the job's log ends naming the run's latest checkpoint and the command that resumes it."""
    storage = str(tmp_path / "runs")
    submission_id = f"yxanul-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(submit_command(job_address, submission_id, "--config", two_stage_config(tmp_path), "--set",
                                  f"run.storage_path={storage}", wait=False),
                   check=True, capture_output=True, cwd=REPO, env=JOB_ENV, timeout=120)
    follow = subprocess.Popen(["ray", "job", "logs", "--follow", "--address", job_address, submission_id],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=JOB_ENV)
    lines, stopped = [], None
    try:
        for line in follow.stdout:  # to the job's end
            lines.append(line)
            if stopped is None and "Checkpoint successfully created" in line:
                stopped = ray_job(job_address, "stop", submission_id)
        follow.wait(timeout=120)
    finally:
        if follow.poll() is None:
            follow.kill()
        ray_job(job_address, "stop", submission_id)  # a no-op for a job that has ended
    out = "".join(lines)
    assert stopped is not None, out[-3000:]
    assert "was stopped" in ray_job(job_address, "status", submission_id), stopped
    assert_names_latest_checkpoint(out, storage, "run stopped (SIGTERM)")


USER_TARGET_TOKENS = 18_000  # the three stages' 24,000 scaled by 0.75: budgets 3,000 / 6,000 / 9,000


@pytest.mark.timeout(900)
@pytest.mark.parametrize("workers", [1, 2])
def test_ray_path_trains_exactly_the_in_process_reference(tmp_path, monkeypatch, workers):
    """The whole Ray path (coordinator, Ray Data pipeline, split, TorchTrainer with DDP across
    the workers, the train loop's learning rates and accounting) against the same job done in
    one process without Ray (reference_loop, the orchestration benchmark's yardstick), each step
    on the rows all the workers take together: the same validation losses at every stage
    boundary, to the printed 4th decimal. (DDP sums in another order than one process does; over
    these steps that stays below the printed digits.) Started with the predecessor's own flags
    (--curriculum, --model-size, --target-tokens, --curriculum-config): the reference is the
    job those flags must mean."""
    monkeypatch.chdir(REPO)  # the demo config's corpus path is relative to the repo
    load_demo()
    config = demo_subset(str(tmp_path / "demo_stages_1_to_3.yaml"), 0, 3, workers=workers)
    proc = subprocess.run([sys.executable, "jobs/train.py", "--curriculum", "--model-size", "tiny",
                           "--target-tokens", str(USER_TARGET_TOKENS), "--curriculum-config", config,
                           "--set", f"run.storage_path={tmp_path / 'runs'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    out = ANSI.sub("", proc.stdout + proc.stderr)
    assert proc.returncode == 0, failure_lines(out)
    assert f"--target-tokens {USER_TARGET_TOKENS:,}: stage budgets scaled by 0.75" in out
    job = load_job(config, ["model.preset=tiny", "curriculum.stages.0.tokens=3000", "curriculum.stages.1.tokens=6000",
                            "curriculum.stages.2.tokens=9000", f"curriculum.target_tokens={USER_TARGET_TOKENS}"])
    assert_curriculum_completed(out, job)  # each stage ends on its scaled budget
    ray_losses = [{s: float(v) for s, v in re.findall(r"(\w+) loss ([\d.]+)", line)}
                  for line in VALIDATION.findall(out)]
    _, reference = run_reference(job, threads=workers)
    assert len(ray_losses) == len(reference) == 3
    for stage, (got, ref) in enumerate(zip(ray_losses, reference), start=1):
        assert set(got) == set(ref.validation) == {"fineweb", "math", "code"}, stage
        for source, loss in ref.validation.items():
            assert abs(got[source] - loss) <= 0.00006, (stage, source, got[source], loss)


# Four of the demo's stages at half their budgets (seq_len 64 -> 512): three real stage switches,
# a worker killed mid-stage in the third, checkpoints every 8,000 tokens. A quarter of the full
# demo's wall time on 2 cores, and a quarter of its checkpoints on disk.
FAULT_STAGES = (3, 7)
FAULT_RUN = {"checkpoint_every_tokens": 8000, "max_failures": 4, "log_every_steps": 2}


@pytest.fixture(scope="module")
def fault_config(tmp_path_factory):
    load_demo()  # builds the repo's demo corpus if missing
    path = str(tmp_path_factory.mktemp("fault") / "demo_stages_4_to_7.yaml")
    return demo_subset(path, *FAULT_STAGES, scale=0.5, **FAULT_RUN)


def failure_lines(out: str) -> str:
    """The lines that explain a failed run (Ray's own crash dumps can bury them)."""
    keep = re.compile(r"FailurePolicy|Error count|training failed|Resumed|Error:|RuntimeError|Exception|died")
    return "\n".join(line for line in ANSI.sub("", out).splitlines() if keep.search(line))[-6000:]


@pytest.fixture(scope="module")
def fault_run_dir(tmp_path_factory):
    """Checkpoints of the fault test, read by the resume test; removed after the module (the
    runs write tens of MB per checkpoint and CI disks can be small)."""
    path = tmp_path_factory.mktemp("fault_run")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(1200)
def test_killed_worker_restores_and_finishes_with_same_totals(fault_config, fault_run_dir):
    """Three faults in one run: the packing actor (StagePackers) killed in the first stage, while
    later stages' data is already built; the curriculum coordinator killed in the second (its
    packing actor and the stages' splits die with it); a train worker killed mid-stage in the
    third. Ray restarts the actors and Ray Train the workers; the run ends with the undisturbed
    totals, the sources' summary included."""
    # Of other runs on this machine, if any.
    other_packers = set(_ray_process_pids(b"ray::StagePackers"))
    other_coordinators = set(_ray_process_pids(b"ray::CurriculumCoordinator"))
    proc = _train_proc("--config", fault_config, "--set", f"run.storage_path={fault_run_dir}")
    lines, killed_packers, killed_coordinator, killed = [], None, None, None
    try:
        for line in proc.stdout:
            lines.append(line)
            progress = "Step " in line and ANSI.sub("", line)
            if progress and killed_packers is None and "Stage 1/4 (" in progress:
                pids = set(_ray_process_pids(b"ray::StagePackers")) - other_packers
                assert len(pids) == 1, pids
                killed_packers = pids.pop()
                os.kill(killed_packers, signal.SIGKILL)  # a process this test started, by PID
            if progress and killed_coordinator is None and "Stage 2/4 (" in progress:
                pids = set(_ray_process_pids(b"ray::CurriculumCoordinator")) - other_coordinators
                assert len(pids) == 1, pids
                killed_coordinator = pids.pop()
                os.kill(killed_coordinator, signal.SIGKILL)
            if progress and killed is None and "Stage 3/4 (" in progress:
                pids = _train_worker_pids()
                assert pids, "no train worker process found"
                killed = pids[-1]
                os.kill(killed, signal.SIGKILL)
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    out = "".join(lines)
    assert None not in (killed_packers, killed_coordinator, killed), out[-3000:]
    assert proc.returncode == 0, failure_lines(out)
    assert "Resumed from" in out
    assert "the curriculum coordinator was restarted" in out
    job = load_job(fault_config)
    assert_curriculum_completed(out, job)
    assert source_summary(out) == undisturbed_source_summary(job)


def mid_stage_checkpoint(fault_config, fault_run_dir) -> tuple[int, str, dict]:
    """The fault run's earliest checkpoint inside its third or fourth stage: (tokens, path, state)."""
    if not glob.glob(os.path.join(fault_run_dir, "*", "checkpoint_*")):  # run on its own: take checkpoints
        proc = subprocess.run([sys.executable, "jobs/train.py", "--config", fault_config,
                               "--set", f"run.storage_path={fault_run_dir}"],
                              cwd=REPO, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, failure_lines(proc.stdout + proc.stderr)
    mid = []
    for path in glob.glob(os.path.join(fault_run_dir, "*", "checkpoint_*", "state.json")):
        state = json.load(open(path))
        if state["step_in_stage"] > 0 and state["stage"] >= 2:  # in the third or fourth stage
            mid.append((state["tokens"], os.path.dirname(path), state))
    assert mid, "no mid-stage checkpoint was written"
    return sorted(mid)[0]


@pytest.mark.timeout(1200)
def test_resume_from_mid_stage_checkpoint_on_another_worker_count(fault_config, fault_run_dir, tmp_path):
    """The two-worker fault run's mid-stage checkpoint, resumed on one worker: the same steps
    (the same rows per step, the same source stats) and the same final losses as the run that
    went on with two, up to the order DDP sums in."""
    tokens, ckpt, state = mid_stage_checkpoint(fault_config, fault_run_dir)
    assert os.path.exists(os.path.join(ckpt, "rng.pt"))  # the generators are resumed too
    assert set(state["coordinator"]["files"]) == {"fineweb", "math", "code"}  # compared before the resume
    # Storage as a URI (a bucket's code path, on local disk): the checkpoint is read from one,
    # and the resumed run writes its checkpoints, TensorBoard log and loss plot to one.
    out_dir = tmp_path / "resumed"
    proc = subprocess.run([sys.executable, "jobs/train.py", "--config", fault_config,
                           "--set", f"run.storage_path=file://{out_dir}", "--set", "run.workers=1",
                           "--resume", f"file://{ckpt}"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, failure_lines(out)
    notes = re.findall(r"resume: (.*)", ANSI.sub("", out))  # the worker count is the one change to note
    assert len(notes) == 1 and notes[0].startswith("run.workers: checkpoint 2, now 1 (the same steps"), notes
    (run_dir,) = glob.glob(os.path.join(out_dir, "*"))
    assert f"final checkpoint: file://{run_dir}/checkpoint_" in out
    assert os.path.exists(os.path.join(run_dir, "loss.png")) and glob.glob(os.path.join(run_dir, "tensorboard", "*"))
    stage, step_in_stage = state["stage"] + 1, state["step_in_stage"]
    assert f"Resumed from file://{ckpt}: stage {stage}, step {state['step']} ({step_in_stage} into the stage), " \
           f"{tokens:,} tokens" in ANSI.sub("", out)
    assert_curriculum_completed(out, load_job(fault_config), stages=range(stage, 5))
    assert not re.search(rf"Stage {stage - 1}/4 done", ANSI.sub("", out))  # earlier stages not re-run
    # The earlier stages' source stats come from the checkpoint, the resumed stage's from its
    # rebuild (which re-makes the skipped rows), the later ones' from their runs.
    assert source_summary(out) == undisturbed_source_summary(load_job(fault_config))
    two = max((json.load(open(p)) for p in glob.glob(os.path.join(fault_run_dir, "*", "checkpoint_*", "state.json"))),
              key=lambda st: st["tokens"])
    one = max((json.load(open(p)) for p in glob.glob(os.path.join(run_dir, "checkpoint_*", "state.json"))),
              key=lambda st: st["tokens"])
    assert one["tokens"] == two["tokens"] == load_job(fault_config).curriculum.target_tokens
    assert one["tokens_by_source"] == two["tokens_by_source"]
    for source, loss in two["validation"][-1]["loss"].items():
        assert abs(one["validation"][-1]["loss"][source] - loss) <= 6e-5, (source, one["validation"][-1], loss)
    shutil.rmtree(out_dir, ignore_errors=True)


@pytest.mark.timeout(600)
def test_a_resumed_run_stopped_before_its_first_checkpoint_names_the_one_it_resumed(fault_config, fault_run_dir,
                                                                                   tmp_path):
    """SIGTERM once Ray is up and the trainer built, before training begins: the driver's last word
    sends the user back to the checkpoint the run resumed with (its own run directory holds none),
    exit 143."""
    _, ckpt, _ = mid_stage_checkpoint(fault_config, fault_run_dir)
    storage = str(tmp_path / "runs")
    proc = _train_proc("--config", fault_config, "--set", f"run.storage_path={storage}", "--resume", ckpt)
    # A driver that hangs (before the line below, or after the signal) ends the test with its
    # output, not with pytest's timeout.
    deadline = threading.Timer(300, os.killpg, (proc.pid, signal.SIGKILL))
    deadline.start()
    lines, stopped = [], False
    try:
        for line in proc.stdout:
            lines.append(line)
            if not stopped and "worker(s), storage " in line:  # Ray is up; the trainer is about to start
                os.kill(proc.pid, signal.SIGTERM)  # the driver this test started
                stopped = True
        proc.wait(timeout=120)
    finally:
        deadline.cancel()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = ANSI.sub("", "".join(lines))
    assert stopped, out[-3000:]
    assert proc.returncode == 143, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    m = re.search(r"run stopped \(SIGTERM\); no checkpoint was written under (\S+); go on again from the one this "
                  r"run resumed with: python jobs/train.py --resume (\S+)", out)
    assert m, out[-3000:]
    assert os.path.dirname(m.group(1)) == storage and m.group(2) == ckpt
    assert not glob.glob(os.path.join(storage, "*", "checkpoint_*"))


@pytest.mark.timeout(600)
def test_a_hub_run_reads_with_the_driver_s_endpoint_and_token_not_the_cluster_s(ray_cluster, tmp_path, monkeypatch):
    """`python jobs/train.py` with HF_ENDPOINT in its own environment only, and the token that
    `hf auth login` saved where only it looks (HF_TOKEN_PATH), joining a cluster whose processes
    have neither (CI's head, or this session's: as another node would). The demo's first two
    stages read as Hub datasets from a stand-in Hub that gates them (tests/fake_hub.py, serving
    the demo corpus). The coordinator and the read tasks must ask the driver's Hub with the
    driver's token: the run reaches its target, its sources give what the local files give, and
    the token is printed nowhere. Before, the read tasks asked huggingface.co, then asked
    without the token (HF_TOKEN, then a login's token file), and the run failed. HF_TOKEN in the
    environment takes the same path from hub.hf_token on (test_hub_http)."""
    import ray

    from tests.fake_hub import FakeHub

    monkeypatch.chdir(REPO)  # the demo config's corpus path is relative to the repo
    load_demo()
    config = demo_subset(str(tmp_path / "local.yaml"), 0, 2, scale=0.5)
    local_job = load_job(config)
    raw = yaml.safe_load(open(config))
    for name, source in raw["sources"].items():
        source.pop("path"), source.pop("format", None)
        source["hf"] = f"org/{name}"
    hub_config = write_yaml(str(tmp_path / "hub.yaml"), raw)
    token, commit = "hf_" + uuid.uuid4().hex, "b" * 40
    demo = os.path.join(REPO, "data", "demo")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE")}
    token_file = tmp_path / "hf-home" / "token"  # where `hf auth login` would save it
    token_file.parent.mkdir()
    token_file.write_text(token)
    with FakeHub({f"org/{s}": (commit, os.path.join(demo, s)) for s in raw["sources"]}, token=token) as hub:
        env.update(HF_ENDPOINT=hub.endpoint, HF_TOKEN_PATH=str(token_file),
                   RAY_ADDRESS=ray.get_runtime_context().gcs_address)
        proc = subprocess.run([sys.executable, "jobs/train.py", "--config", hub_config,
                               "--set", f"run.storage_path={tmp_path / 'runs'}"],
                              cwd=REPO, capture_output=True, text=True, timeout=500, env=env)
    out = ANSI.sub("", proc.stdout + proc.stderr)
    assert proc.returncode == 0, failure_lines(out)
    assert f"Hub: {hub.endpoint} (from HF_ENDPOINT; every process of the run reads it)" in out
    assert_curriculum_completed(out, local_job)
    assert source_summary(out) == undisturbed_source_summary(local_job)
    data_reads = [line for line in hub.asked if line.startswith("GET org/") and ".parquet bytes" in line]
    assert len(data_reads) >= 3 and not [r for r in hub.refused if "/agent-harnesses" not in r]
    assert token not in out
    for checkpoint_file in glob.glob(str(tmp_path / "runs" / "*" / "checkpoint_*" / "*.json")):
        assert token not in open(checkpoint_file).read(), checkpoint_file

"""Checkpoint files: what a resume reads back (no cluster needed)."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from yxanul_ray.checkpoint import TrainState, latest_checkpoint, load_state, load_tensors, restore_rng, save_checkpoint
from yxanul_ray.snapshot import CheckpointSnapshot, HostStaging, remove_stale_staging_dirs, staging_dir
from yxanul_ray.step import adamw_state_like
from yxanul_ray.stopping import resume_hint


def draws() -> tuple:
    return torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)]


def test_resume_continues_every_random_number_generator(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    draws()  # generators mid-sequence, as at a checkpoint
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    state = TrainState(step=5, tokens=640, stage=1, step_in_stage=2)
    save_checkpoint(str(tmp_path), model.state_dict(), optimizer.state_dict(), state, {"run": {}})
    expected = draws()  # what the run would have drawn next
    draws()  # the generators move on (a restarted process starts elsewhere)

    assert restore_rng(str(tmp_path))
    got = draws()
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]
    loaded_state, _ = load_state(str(tmp_path))
    assert (loaded_state.step, loaded_state.tokens, loaded_state.step_in_stage) == (5, 640, 2)
    weights, _ = load_tensors(str(tmp_path))
    assert torch.equal(weights["weight"], model.weight)


CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                          reason="needs a CUDA GPU")])


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("buffers", ["new", "kept", "reserved"])
def test_a_snapshot_written_later_holds_the_state_it_was_taken_at(tmp_path, buffers, device):
    """Rank 0 takes the checkpoint at a boundary and writes it on Ray Train's upload thread while
    training goes on: the optimizer's in-place updates, the generators' draws and the trainer
    state's changes after the snapshot must not reach the files. With kept buffers, the next
    snapshot (taken after this one is written) holds the next state. Reserved: the buffers were
    made on a thread before the first step, from AdamW's state as it would be (as rank 0 on a GPU
    does), and the snapshot copies into those. On a GPU, as training runs there: fused AdamW, and the kept
    buffers pinned (asynchronous copies, then one sync)."""
    torch.manual_seed(5)
    staging = None if buffers == "new" else HostStaging()
    model = torch.nn.Linear(4, 2).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=device == "cuda")

    def step():
        optimizer.zero_grad()
        model(torch.randn(8, 4, device=device)).square().sum().backward()
        optimizer.step()

    if buffers == "reserved":
        CheckpointSnapshot.reserve(model.state_dict(), adamw_state_like(optimizer), staging)
        staging.wait_reserved()
        reserved = {path: buf.data_ptr() for path, buf in staging._buffers.items()}
        assert ("model", "weight") in reserved and ("optimizer", "state", 0, "exp_avg_sq") in reserved
    step()  # AdamW's moments exist, as at any checkpoint after the first step
    state = TrainState(step=1, tokens=64, stage=0, step_in_stage=1, tokens_by_source={"fineweb": 64})
    weights_then = model.weight.detach().cpu().clone()
    moment_then = optimizer.state[model.weight]["exp_avg"].cpu().clone()
    snapshot = CheckpointSnapshot.take(model.state_dict(), optimizer.state_dict(), state, {"run": {}}, staging)
    if staging is not None and device == "cuda":
        assert snapshot.model_state["weight"].is_pinned()
    if buffers == "reserved":  # copied into the reserved buffers; only AdamW's step counters made now
        now = {path: buf.data_ptr() for path, buf in staging._buffers.items()}
        assert {path: now[path] for path in reserved} == reserved
        assert {path[-1] for path in now.keys() - reserved.keys()} == {"step"}
        assert snapshot.model_state["weight"].data_ptr() == reserved[("model", "weight")]
        assert snapshot.optimizer_state["state"][0]["exp_avg"].data_ptr() == reserved[("optimizer", "state", 0,
                                                                                         "exp_avg")]
    expected_draw = torch.rand(3)  # what the generators give next, from the snapshot's moment

    step()  # training goes on before the write: weights and moments change in place
    state.step, state.tokens_by_source["fineweb"] = 2, 128
    assert not torch.equal(model.weight.cpu(), weights_then)
    snapshot.write(str(tmp_path))

    weights, optim = load_tensors(str(tmp_path))
    assert torch.equal(weights["weight"], weights_then)
    assert torch.equal(optim["state"][0]["exp_avg"], moment_then)
    loaded_state, _ = load_state(str(tmp_path))
    assert (loaded_state.step, loaded_state.tokens_by_source) == (1, {"fineweb": 64})
    assert restore_rng(str(tmp_path))
    assert torch.equal(torch.rand(3), expected_draw)

    weights_later = model.weight.detach().cpu().clone()
    later = CheckpointSnapshot.take(model.state_dict(), optimizer.state_dict(), state, {"run": {}}, staging)
    step()
    later.write(str(tmp_path / "later"))
    assert torch.equal(load_tensors(str(tmp_path / "later"))[0]["weight"], weights_later)
    assert torch.equal(load_tensors(str(tmp_path))[0]["weight"], weights_then)  # written before, unchanged
    assert load_state(str(tmp_path / "later"))[0].step == 2


def test_checkpoint_without_generators_leaves_them_alone(tmp_path):
    save_checkpoint(str(tmp_path), {}, {}, TrainState(), {})
    os.remove(tmp_path / "rng.pt")  # as written before the generators were saved
    before = torch.get_rng_state()
    assert not restore_rng(str(tmp_path))
    assert torch.equal(torch.get_rng_state(), before)


def test_latest_whole_checkpoint_and_where_a_stopped_run_goes_on_from(tmp_path):
    """A run stopped while Ray Train copied a checkpoint into storage leaves one without all its
    files, or with one cut short: the newest whole one is named, and the command that resumes it."""
    run = tmp_path / "demo-20261127-120000"
    assert latest_checkpoint(str(run)) is None
    assert resume_hint(str(run), 4, 68_000) == (f"no checkpoint was written under {run}; a new run starts from the "
                                                "beginning")
    # A resumed run stopped before its first checkpoint goes on from the one it resumed with.
    resumed = "/runs/demo-20261127-110000/checkpoint_2026-11-27_11-00-05.000001"
    assert resume_hint(str(run), 4, 68_000, resumed) == (
        f"no checkpoint was written under {run}; go on again from the one this run resumed with: "
        f"python jobs/train.py --resume {resumed}")
    whole = run / "checkpoint_2026-11-27_12-00-05.000001"
    save_checkpoint(str(whole), {}, {}, TrainState(step=9, tokens=18_000, stage=1, step_in_stage=3), {"run": {}})
    partial = run / "checkpoint_2026-11-27_12-00-09.000002"
    save_checkpoint(str(partial), {}, {}, TrainState(step=12, tokens=24_000, stage=1, step_in_stage=6), {"run": {}})
    os.remove(partial / "optimizer.pt")  # the copy stopped before it
    cut = run / "checkpoint_2026-11-27_12-00-07.000002"
    save_checkpoint(str(cut), {}, {}, TrainState(step=10, tokens=20_000, stage=1, step_in_stage=4), {"run": {}})
    (cut / "model.pt").write_bytes((cut / "model.pt").read_bytes()[:100])  # the copy stopped inside it
    (run / "tensorboard").mkdir()
    assert latest_checkpoint(str(run)) == latest_checkpoint(f"file://{run}").removeprefix("file://") == str(whole)
    assert resume_hint(str(run), 4, 68_000) == resume_hint(str(run), 4, 68_000, resumed) == (
        f"the latest checkpoint is {whole} (stage 2/4, 3 steps in, 18,000/68,000 tokens); go on from it with: "
        f"python jobs/train.py --resume {whole}")
    final = run / "checkpoint_2026-11-27_12-00-30.000003"
    save_checkpoint(str(final), {}, {}, TrainState(step=40, tokens=68_000, stage=4), {"run": {}})
    assert resume_hint(str(run), 4, 68_000) == (f"the run had trained its target: the final checkpoint is {final} "
                                                "(68,000 tokens)")
    # Storage that cannot be read now: the run's last word still names where its checkpoints are.
    assert resume_hint("nosuchscheme://bucket/run", 4, 68_000).startswith(
        "its checkpoints are under nosuchscheme://bucket/run (not read now: ")


def test_staging_directories_a_stopped_process_left_are_removed_and_no_others(tmp_path, monkeypatch):
    """A run stopped while its checkpoint was being written leaves that checkpoint's local
    directory (3.3 GB for the 270m preset): rank 0 of the next run on the node removes those
    whose process has ended, never a running process's."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    ours = staging_dir()  # this process's: running
    assert os.path.dirname(ours) == str(tmp_path)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    dead_pid = int(ended.stdout)
    left = tmp_path / f"yxanul-ckpt-{dead_pid}-k3j2x9"
    (left / "model.pt").parent.mkdir()
    (left / "model.pt").write_bytes(b"\0" * 1024)  # a partly written checkpoint
    other = tmp_path / "yxanul-ckpt-notapid"  # another naming: not ours to judge
    other.mkdir()
    a_file = tmp_path / f"yxanul-ckpt-{dead_pid}-file"
    a_file.write_text("not a directory")

    assert remove_stale_staging_dirs() == [str(left)]
    assert not left.exists()
    assert os.path.isdir(ours) and other.is_dir() and a_file.is_file()
    assert remove_stale_staging_dirs() == []

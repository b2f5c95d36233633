"""Checkpoint files: what a resume reads back (no cluster needed)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from yxanul_ray.checkpoint import TrainState, load_state, load_tensors, restore_rng, save_checkpoint


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


def test_checkpoint_without_generators_leaves_them_alone(tmp_path):
    save_checkpoint(str(tmp_path), {}, {}, TrainState(), {})
    os.remove(tmp_path / "rng.pt")  # as written before the generators were saved
    before = torch.get_rng_state()
    assert not restore_rng(str(tmp_path))
    assert torch.equal(torch.get_rng_state(), before)

"""Two ranks with DDP (gloo, two real processes) make the same optimizer steps as one process on
the global batch: the train step's loss scaling (summed loss x world / the step's valid targets,
then DDP's mean) must give the global token mean, the masked tail of a stage's last step included."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from yxanul_ray.model import build_model
from yxanul_ray.presets import PRESETS
from yxanul_ray.step import StepSettings, Trainee, train_step

WORLD = 2
ROWS_PER_RANK, SEQ_LEN = 4, 16
SEED = 1234
LR = 0.5


def _sgd(model) -> torch.optim.Optimizer:
    """Plain SGD, no clipping: a parameter moves by LR x its gradient, so a gradient off by any
    factor (a rank's own token count for the global one, a missing x world) shows. AdamW, which
    training uses, is blind to a gradient's scale."""
    return torch.optim.SGD(model.parameters(), lr=LR)


def _steps() -> list[tuple[torch.Tensor, int]]:
    """(global batch [WORLD * ROWS_PER_RANK, SEQ_LEN + 1], valid targets): a full step, then a
    stage's last step whose budget ends inside rank 1's rows."""
    g = torch.Generator().manual_seed(7)
    vocab = PRESETS["tiny"].vocab_size
    full = WORLD * ROWS_PER_RANK * SEQ_LEN
    return [(torch.randint(0, vocab, (WORLD * ROWS_PER_RANK, SEQ_LEN + 1), generator=g), valid)
            for valid in (full, full - 37)]


def _train(model, raw, optimizer, rank: int, world: int) -> None:
    for tokens, valid in _steps():
        mine = tokens.split(ROWS_PER_RANK * (WORLD // world))[rank]
        train_step(Trainee(model, raw, optimizer), mine, StepSettings(rank=rank, world=world, micro_batch=2,
                                                                      grad_clip=0.0), lr=LR, global_valid=valid)


def _rank(rank: int, rendezvous: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(SEED)
        raw = build_model(PRESETS["tiny"], "torch")
        model = torch.nn.parallel.DistributedDataParallel(raw)
        _train(model, raw, _sgd(raw), rank, WORLD)
        if rank == 0:
            torch.save(raw.state_dict(), out)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_two_ddp_ranks_step_like_one_process_on_the_global_batch(tmp_path):
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_rank, args=(str(tmp_path / "rendezvous"), out), nprocs=WORLD, join=True)
    ddp = torch.load(out, weights_only=True)

    torch.manual_seed(SEED)
    raw = build_model(PRESETS["tiny"], "torch")
    initial = {name: p.clone() for name, p in raw.state_dict().items()}
    _train(raw, raw, _sgd(raw), rank=0, world=1)

    for name, one in raw.state_dict().items():
        moved = (one - initial[name]).abs().max()
        assert moved > 1e-4, name  # the steps moved it, by far more than the tolerance below
        torch.testing.assert_close(ddp[name], one, rtol=1e-5, atol=1e-6 * float(moved),
                                   msg=lambda m, name=name: f"{name}: {m}")

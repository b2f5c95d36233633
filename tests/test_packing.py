"""Pure packing and mixing: integer fixtures, exact expectations."""

from __future__ import annotations

import numpy as np
import pytest

from tests.token_blocks import token_block
from yxanul_ray.curriculum import plan_stage
from yxanul_ray.cursors import SourceCursor, file_order
from yxanul_ray.mixing import MixSchedule
from yxanul_ray.packing import Packer, PackSpec

EOS = 0


def docs(n: int, seed: int = 0) -> list[np.ndarray]:
    """Documents of varied length whose tokens are unique stream positions (1, 2, 3, ...)."""
    rng = np.random.default_rng(seed)
    out, nxt = [], 1
    for _ in range(n):
        length = int(rng.integers(1, 40))
        out.append(np.arange(nxt, nxt + length, dtype=np.int32))
        nxt += length
    return out


def stream_of(ds: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.append(d, EOS) for d in ds])


def pack_all(packer: Packer, ds, start_doc: int = 0, batch: int = 7) -> np.ndarray:
    rows = []
    for i in range(start_doc, len(ds), batch):
        for j, d in enumerate(ds[i:i + batch]):
            packer.add((0, 0, i + j, 0), d, True)
        rows.append(packer.take_rows())
    return np.concatenate(rows)


@pytest.mark.parametrize("seq_len", [1, 4, 8, 31])
def test_eos_after_every_document_and_no_token_lost(seq_len):
    ds = docs(50)
    stream = stream_of(ds)
    max_rows = (len(stream) - 1) // seq_len
    p = Packer(seq_len, seq_len, EOS, max_rows, SourceCursor())
    rows = pack_all(p, ds)
    assert rows.shape == (max_rows, seq_len + 1)
    # Consecutive rows share one token; stitched back they are the stream itself.
    assert (rows[1:, 0] == rows[:-1, -1]).all()
    rebuilt = np.concatenate([rows[0], *(r[1:] for r in rows[1:])])
    assert (rebuilt == stream[:len(rebuilt)]).all()
    assert len(stream) - len(rebuilt) < seq_len + 1  # only the unfinished tail remains
    assert p.stats.trained_tokens == max_rows * seq_len
    assert p.stats.eos == int((rows[:, 1:] == EOS).sum())


def test_overlap_stride_repeats_targets_and_counts_distinct():
    ds = docs(30)
    stream = stream_of(ds)
    p = Packer(8, 4, EOS, 20, SourceCursor())
    rows = pack_all(p, ds)
    for i, r in enumerate(rows):
        assert (r == stream[i * 4:i * 4 + 9]).all()
    stats = p.final_stats()
    assert stats.trained_tokens == 160 and stats.distinct_tokens == 19 * 4 + 8


def test_cursor_resume_continues_the_stream_exactly():
    """Stage k then stage k+1 from its cursor == one continuous stream: no repeat, no loss."""
    ds = docs(80, seed=3)
    stream = stream_of(ds)
    first = Packer(8, 8, EOS, 25, SourceCursor())
    rows_a = pack_all(first, ds)
    cur = first.end_cursor()
    second = Packer(16, 16, EOS, 10, cur)
    rows_b = pack_all(second, ds, start_doc=cur.row)
    targets = np.concatenate([rows_a[:, 1:].ravel(), rows_b[:, 1:].ravel()])
    assert (targets == stream[1:1 + len(targets)]).all()
    assert rows_b[0, 0] == rows_a[-1, -1]  # the last target is reused only as an input


def test_cursor_inside_a_document_points_at_its_token():
    ds = [np.arange(1, 101, dtype=np.int32)]  # one 100-token document
    p = Packer(10, 10, EOS, 3, SourceCursor())
    p.add((0, 0, 0, 0), ds[0], True)
    p.take_rows()
    assert p.end_cursor() == SourceCursor(0, 0, 0, 0, 30)


def test_stops_at_max_rows_and_ignores_later_documents():
    ds = docs(40)
    p = Packer(4, 4, EOS, 5, SourceCursor())
    rows = pack_all(p, ds)
    assert len(rows) == 5 and p.done
    p.note_bad("null")  # after the stage's end: belongs to the next stage
    assert p.stats.bad == {}


def test_wrap_is_counted():
    p = Packer(4, 4, EOS, 100, SourceCursor())
    p.add((0, 0, 0, 0), np.arange(1, 5, dtype=np.int32), True)
    p.add((1, 0, 0, 0), np.arange(1, 5, dtype=np.int32), True)
    assert p.stats.wraps == 1


def test_file_order_sorted_first_then_seeded():
    assert file_order(5, 0, 1, "math") == [0, 1, 2, 3, 4]
    assert file_order(50, 1, 1, "math") == file_order(50, 1, 1, "math")
    assert file_order(50, 1, 1, "math") != file_order(50, 2, 1, "math")
    assert file_order(50, 1, 1, "math") != file_order(50, 1, 2, "math")
    assert sorted(file_order(50, 3, 1, "math")) == list(range(50))


@pytest.mark.parametrize("weights", [(0.95, 0.05), (0.55, 0.25, 0.20), (0.9, 0.08, 0.02), (1 / 3, 1 / 3, 1 / 3)])
@pytest.mark.parametrize("rows", [8, 13, 64, 256])
def test_mix_every_batch_within_one_row(weights, rows):
    names = tuple("abc"[:len(weights)])
    sched = MixSchedule(names, weights, (rows,) * 50 + (rows // 2 + 1,))
    given = dict.fromkeys(names, 0)
    target = dict.fromkeys(names, 0.0)
    for step_rows, counts in zip(sched.step_rows, sched.counts()):
        assert sum(counts.values()) == step_rows
        for s, w in zip(names, weights):
            assert abs(counts[s] - w * step_rows) < 1.0 + 1e-9
            given[s] += counts[s]
            target[s] += w * step_rows
            assert abs(given[s] - target[s]) < 1.0 + 1e-9  # the stage total never drifts either
    assert list(sched.counts()) == list(sched.counts())  # deterministic


def test_mix_plan_totals_match_stage_rows():
    from yxanul_ray.mixing import build_schedule
    from yxanul_ray.specs import StageSpec

    st = StageSpec(name="x", seq_len=8, tokens=10_000, batch_size=64, mix={"a": 0.9, "b": 0.1, "c": 0.0})
    plan = plan_stage(st, 0, 0)
    sched = build_schedule(st.mix, plan)
    assert sched.sources == ("a", "b")
    assert sum(sched.totals().values()) == plan.rows == 19 * 64 + 34  # 19 full steps, then 34 rows: 10,000 tokens


def test_skip_rows_resumes_mid_stage_exactly():
    """Resuming at step s re-makes the stage's first rows and drops them: the rest is identical."""
    ds = docs(60, seed=5)
    whole = Packer(8, 8, EOS, 40, SourceCursor())
    full = pack_all(whole, ds)
    resumed_packer = Packer(8, 8, EOS, 40, SourceCursor(), skip_rows=13)
    resumed = pack_all(resumed_packer, ds)
    assert (resumed == full[13:]).all()
    assert resumed_packer.end_cursor() == whole.end_cursor()  # the next stage starts at the same place


def test_step_tokens_by_source_counts_the_step_s_masked_tail():
    from yxanul_ray.accounting import step_tokens_by_source, valid_targets

    counts = {"a": 6, "b": 2}  # the step: 6 rows of a, then 2 of b, split among the ranks in order
    assert step_tokens_by_source(counts, 8 * 8, 8) == {"a": 48, "b": 16}
    # 10 masked positions: the step's final 10 (its last b row and the end of the one before)
    assert step_tokens_by_source(counts, 8 * 8 - 10, 8) == {"a": 48, "b": 6}
    # on the last rank's last rows, which is where valid_targets puts them
    assert valid_targets(54, 1, 4, 8) == 22 and valid_targets(54, 0, 4, 8) == 32


def test_pack_step_rows_and_end_report_match_the_packer():
    from yxanul_ray.packing import Pack

    pack = Pack(PackSpec("a", source_id=2, seq_len=4, stride=4, eos_id=EOS, max_rows=3, start=SourceCursor(), reads=2))
    first = pack(token_block([(0, 0, 0), (0, 0, 1)]))  # 12 tokens with EOS: rows need 3 * 4 + 1 = 13
    assert first["tokens"].shape == (2, 5) and set(first["source"]) == {2} and not pack.done
    last = pack(token_block([(0, 0, 2), (0, 1, 0)]))
    assert last["tokens"].shape == (1, 5) and pack.done
    assert pack(token_block([(0, 1, 1)])) is None  # later documents belong to the next stage
    report = pack.end_report()
    assert report["stats"]["rows"] == 3 and report["cursor"]["row"] == 2


def test_pack_step_refuses_blocks_out_of_stream_order():
    from yxanul_ray.packing import Pack

    pack = Pack(PackSpec("math", source_id=0, seq_len=64, stride=64, eos_id=EOS, max_rows=10, start=SourceCursor(),
                         reads=2))
    pack(token_block([(0, 1, 0), (0, 1, 1)]))
    with pytest.raises(RuntimeError, match=r"source math: a block starting at \(0, 0, 5, 0\).*stream order"):
        pack(token_block([(0, 0, 5)]))


def test_batch_assembler_gives_the_ranks_the_steps_rows_whatever_the_arrival_order():
    """The stage's batches come out in order (batch u: rank u % world's slice of step u // world):
    joined in rank order they are the step, with the schedule's counts and each source's rows in
    stream order, however the sources' rows interleave on the way in; resuming at a step starts
    there. The steps are the same for any world size; one that does not divide is padded."""
    from yxanul_ray.mixing import PAD_SOURCE, BatchAssembler

    sched = MixSchedule(("a", "b"), (0.75, 0.25), (8, 8, 8, 3))
    ids = {"a": 0, "b": 1}
    rows = {s: np.arange(40 * (i + 1), 40 * (i + 1) + 30, dtype=np.int32).reshape(-1, 1) for i, s in enumerate(ids)}

    def assemble(chunk: int, start_step: int = 0, world: int = 2) -> list[dict]:
        asm = BatchAssembler(sched, world, ids, start_step)
        pos, out = dict.fromkeys(ids, 0), []
        while not asm.finished:
            if asm.ready():
                out.append(asm.take())
                continue
            s = "b" if chunk == 1 and asm.missing().get("b") else next(iter(asm.missing()))
            asm.add(s, rows[s][pos[s]:pos[s] + chunk])
            pos[s] += chunk
        return out

    def steps(batches: list[dict], world: int) -> list[dict]:
        return [{k: np.concatenate([b[k] for b in batches[i:i + world]]) for k in ("tokens", "source")}
                for i in range(0, len(batches), world)]

    batches = assemble(3)
    assert len(batches) == 8 and [len(b["tokens"]) for b in batches] == [4, 4, 4, 4, 4, 4, 2, 2]
    counts = list(sched.counts())
    used = dict.fromkeys(ids, 0)
    for k, step in enumerate(steps(batches, 2)):
        real = step["source"] != PAD_SOURCE
        assert [int((step["source"] == ids[s]).sum()) for s in ids] == [counts[k]["a"], counts[k]["b"]]
        assert (np.diff(step["source"][real]) >= 0).all()  # a's rows, then b's
        for s in ids:
            got = step["tokens"][step["source"] == ids[s], 0]
            assert (got == rows[s][used[s]:used[s] + counts[k][s], 0]).all()  # stream order, nothing skipped
            used[s] += counts[k][s]
    # The last step's 3 rows on 2 ranks: 2 each, its final row padding (zeros, wholly masked by the step's budget).
    assert list(batches[-1]["source"]) == [ids["b"] if counts[3]["b"] == 1 else ids["a"], PAD_SOURCE]
    assert not batches[-1]["tokens"][-1].any()
    for x, y in zip(batches, assemble(1)):
        assert (x["tokens"] == y["tokens"]).all()
    # One rank, or four: the same steps, row for row (the padding aside).
    for world in (1, 4):
        for a, b in zip(steps(batches, 2), steps(assemble(3, world=world), world)):
            keep_a, keep_b = a["source"] != PAD_SOURCE, b["source"] != PAD_SOURCE
            assert (a["tokens"][keep_a] == b["tokens"][keep_b]).all()
    resumed = assemble(5, start_step=2)
    assert len(resumed) == 4 and int((steps(resumed, 2)[0]["source"] == 0).sum()) == counts[2]["a"]

"""The GPT on CPU (torch twin) and, where a GPU with Transformer Engine exists, the TE blocks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from yxanul_ray.lm_loss import IGNORE
from yxanul_ray.model import GPT, build_model, compile_model, mark_seq_dynamic
from yxanul_ray.precision import te_available
from yxanul_ray.presets import PRESETS, count_params, flops_per_token, resolve_shape

SMALL = resolve_shape("tiny", {"vocab_size": 512, "max_seq_len": 256})


def test_forward_backward_shapes_and_grads():
    torch.manual_seed(0)
    model = build_model(SMALL, "torch")
    idx = torch.randint(0, 512, (3, 17))
    logits = model(idx)
    assert logits.shape == (3, 17, 512)
    F.cross_entropy(logits.view(-1, 512), idx.view(-1)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_causal_no_peeking_at_future_tokens():
    torch.manual_seed(0)
    model = build_model(SMALL, "torch").eval()
    a = torch.randint(0, 512, (1, 12))
    b = a.clone()
    b[0, 8:] = (b[0, 8:] + 1) % 512
    with torch.no_grad():
        assert torch.allclose(model(a)[0, :8], model(b)[0, :8], atol=1e-5)


def test_loss_decreases_overfitting_one_batch():
    torch.manual_seed(0)
    model = build_model(SMALL, "torch")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rows = torch.randint(0, 512, (4, 33))
    losses = []
    for _ in range(60):
        logits = model(rows[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 512), rows[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("ignored_tail", [0, 37])
def test_sliced_lm_loss_equals_full_logits_cross_entropy(ignored_tail):
    """Value and both gradients, with slices that do not divide the tokens and (as at a stage's
    last step) an ignored tail."""
    from yxanul_ray.lm_loss import IGNORE, sliced_lm_loss

    torch.manual_seed(0)
    hidden = torch.randn(301, 24, requires_grad=True)
    weight = torch.randn(997, 24, requires_grad=True)
    targets = torch.randint(0, 997, (301,))
    if ignored_tail:
        targets[-ignored_tail:] = IGNORE
    ref = F.cross_entropy(F.linear(hidden, weight), targets, ignore_index=IGNORE, reduction="sum")
    (ref * 0.25).backward()
    want = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    got = sliced_lm_loss(hidden, weight, targets, slice_bytes=4 * 997 * 40)  # 40 tokens a slice
    (got * 0.25).backward()
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(hidden.grad, want[0], atol=1e-5)
    assert torch.allclose(weight.grad, want[1], atol=1e-5)
    if ignored_tail:
        assert torch.all(hidden.grad[-ignored_tail:] == 0)
    with torch.no_grad():  # validation's path: the value alone
        assert sliced_lm_loss(hidden, weight, targets, slice_bytes=4 * 997 * 40).item() == pytest.approx(
            ref.item(), rel=1e-5)


def test_cpu_train_step_matches_the_logits_path():
    """train_step on CPU (sliced head loss) leaves the same weights as the plain logits loss."""
    from yxanul_ray.specs import OptimizerSpec
    from yxanul_ray.step import StepSettings, Trainee, make_optimizer, train_step

    torch.manual_seed(0)
    a = build_model(SMALL, "torch")
    b = build_model(SMALL, "torch")
    b.load_state_dict(a.state_dict())
    spec = OptimizerSpec()
    opt_a, opt_b = make_optimizer(a, spec, "cpu"), make_optimizer(b, spec, "cpu")
    rows = torch.randint(0, 512, (4, 33))
    loss = train_step(Trainee(a, a, opt_a), rows, StepSettings(micro_batch=2), lr=1e-3, global_valid=4 * 32 - 5)
    x, y = rows[:, :-1], rows[:, 1:].clone()
    y.view(-1)[4 * 32 - 5:] = -100
    ref = F.cross_entropy(b(x).reshape(-1, 512), y.reshape(-1), ignore_index=-100, reduction="sum")
    (ref / (4 * 32 - 5)).backward()
    torch.nn.utils.clip_grad_norm_(b.parameters(), 1.0)
    for group in opt_b.param_groups:
        group["lr"] = 1e-3
    opt_b.step()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6), name


@pytest.mark.parametrize("preset,expected_m", [("tiny", 1.63), ("demo", 3.31), ("270m", 277.0),
                                                ("yxanul-270m", 151.8)])
def test_parameter_count_of_each_preset(preset, expected_m):
    shape = PRESETS[preset]
    assert count_params(shape) / 1e6 == pytest.approx(expected_m, abs=0.01)
    if preset in ("tiny", "demo"):  # the model agrees with the arithmetic (big ones: too slow here)
        assert sum(p.numel() for p in GPT(shape).parameters()) == count_params(shape)
    assert flops_per_token(shape, 2048) > 6 * count_params(shape) - 6 * shape.vocab_size * shape.d_model


def test_270m_preset_fits_the_brief():
    shape = PRESETS["270m"]
    assert 250e6 <= count_params(shape) <= 290e6 and shape.vocab_size <= 65536
    y = PRESETS["yxanul-270m"]
    assert (y.d_model, y.n_layers, y.n_heads, y.n_kv_heads, y.ffn_hidden) == (640, 28, 10, 2, 1712)


def test_state_dict_round_trip():
    torch.manual_seed(0)
    a = build_model(SMALL, "torch")
    b = build_model(SMALL, "torch")
    b.load_portable_state_dict(a.portable_state_dict())
    idx = torch.randint(0, 512, (2, 9))
    assert torch.equal(a(idx), b(idx))
    with pytest.raises(KeyError, match="missing"):
        b.load_portable_state_dict({k: v for k, v in a.portable_state_dict().items() if "blocks.0" not in k})


def test_export_loads_in_transformers_with_matching_logits(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from yxanul_ray.export import export_hf

    torch.manual_seed(0)
    shape = resolve_shape("tiny", {"max_seq_len": 128})
    model = build_model(shape, "torch").eval()
    export_hf(model.portable_state_dict(), shape, "gpt2", str(tmp_path))
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    ids = torch.tensor([tok("The standard library's json module parses text.")["input_ids"]])
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert (ours - theirs).abs().max().item() < 1e-4


def test_compile_across_stage_seq_lens_without_eager_fallback():
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_model(resolve_shape("tiny", {"vocab_size": 256, "max_seq_len": 2048}), "torch")
    compiled = compile_model(model, backend="eager")  # dynamo's graph capture, without C++ codegen
    old = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = 8  # the default that ten fixed shapes would exceed
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    try:
        for seq_len in (8, 16, 32, 64, 128, 256, 512, 768, 1536, 2048):
            tokens = torch.randint(0, 256, (2, seq_len + 1))
            idx, targets = tokens[:, :-1], tokens[:, 1:].clone()
            targets[0, :3] = IGNORE
            mark_seq_dynamic(idx, targets)
            # The GPU train step's call: the loss inside the compiled graph.
            loss = compiled(idx, targets=targets)
            with torch.no_grad():
                logits = model(idx)
            expected = F.cross_entropy(logits.reshape(-1, 256), targets.reshape(-1), ignore_index=IGNORE,
                                       reduction="sum")
            assert torch.allclose(loss, expected, rtol=1e-5)
            assert compiled(idx).shape == (2, seq_len, 256)
    finally:
        torch._dynamo.config.recompile_limit = old
        torch._dynamo.config.fail_on_recompile_limit_hit = False
        torch._dynamo.reset()


def test_importing_the_package_does_not_import_te():
    import subprocess
    import sys

    code = "import sys, yxanul_ray.model, yxanul_ray.cli; sys.exit('transformer_engine' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


TE_OK, TE_REASON = te_available()


@pytest.mark.gpu
@pytest.mark.skipif(not TE_OK, reason=TE_REASON)
def test_te_block_matches_torch_block_in_bf16():
    torch.manual_seed(0)
    shape = resolve_shape("tiny", {"d_model": 128, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 256,
                                   "vocab_size": 1024})
    ref = GPT(shape, "torch").cuda()
    te_model = GPT(shape, "te").cuda()
    te_model.load_portable_state_dict(ref.portable_state_dict())
    idx = torch.randint(0, 1024, (4, 64), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        a, b = ref(idx).float(), te_model(idx).float()
    assert (a - b).abs().max().item() < 5e-2 * a.abs().max().item()
    back = GPT(shape, "torch").cuda()
    back.load_portable_state_dict(te_model.portable_state_dict())  # TE -> torch loads too



def fp8_available() -> tuple[bool, str]:
    ok, reason = te_available()
    if not ok:
        return ok, reason
    import transformer_engine.pytorch as te

    check = getattr(te, "is_fp8_available", None) or te.fp8.check_fp8_support
    result = check(return_reason=True) if check is getattr(te, "is_fp8_available", None) else check()
    return (bool(result[0]), str(result[1]) or "ok") if isinstance(result, tuple) else (bool(result), "ok")


FP8_OK, FP8_REASON = fp8_available() if TE_OK else (False, TE_REASON)


@pytest.mark.gpu
@pytest.mark.skipif(not FP8_OK, reason=FP8_REASON)
def test_fp8_step_runs():
    from yxanul_ray.precision import fp8_autocast, make_recipe

    torch.manual_seed(0)
    shape = resolve_shape("tiny", {"d_model": 128, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 256})
    model = GPT(shape, "te").cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    idx = torch.randint(0, shape.vocab_size, (8, 65), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16), fp8_autocast(True, make_recipe()):
        logits = model(idx[:, :-1])
    loss = F.cross_entropy(logits.float().reshape(-1, shape.vocab_size), idx[:, 1:].reshape(-1))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)


@pytest.mark.gpu
@pytest.mark.skipif(not TE_OK, reason=TE_REASON)
def test_fp8_amax_statistics_are_reduced_over_the_data_parallel_group(monkeypatch):
    """Under DDP every rank must scale FP8 alike: the autocast gets the group to reduce amax over."""
    import transformer_engine.pytorch as te

    from yxanul_ray.precision import fp8_autocast, make_recipe

    seen = {}
    name = "autocast" if hasattr(te, "autocast") else "fp8_autocast"
    real = getattr(te, name)

    def spy(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(te, name, spy)
    group = object()  # any group: the shim hands it over as given
    fp8_autocast(True, make_recipe(), group)
    assert seen.get("amax_reduction_group", seen.get("fp8_group")) is group

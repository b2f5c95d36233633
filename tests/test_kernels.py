"""Kernel selection (kernels.py): which head loss and attention backend run on a device, the plain
path where a kernel cannot run, and every head loss equal to the logits path in loss and gradients
(the fused GPU kernels where a GPU and their package are present)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from yxanul_ray.kernels import attention_backends, attention_context, choose_head_loss
from yxanul_ray.lm_loss import IGNORE
from yxanul_ray.model import build_model
from yxanul_ray.presets import resolve_shape
from yxanul_ray.step import summed_loss


def none_installed(_module):
    return None


def test_each_device_runs_a_head_loss_it_can_and_says_why_when_it_differs():
    assert choose_head_loss("auto", "cpu") == ("sliced", None)
    assert choose_head_loss("sliced", "cpu") == ("sliced", None)
    name, why = choose_head_loss("liger", "cpu")
    assert name == "sliced" and why.startswith("model.head_loss liger runs on a CUDA GPU only")
    assert choose_head_loss("logits", "cpu")[0] == "sliced"
    assert choose_head_loss("auto", "cuda") == ("logits", None)
    assert choose_head_loss("sliced", "cuda") == ("sliced", None)
    name, why = choose_head_loss("cce", "cuda", installed=none_installed)
    assert name == "logits" and "cut-cross-entropy is not installed (pip install cut-cross-entropy)" in why
    assert choose_head_loss("liger", "cuda", installed=lambda module: object()) == ("liger", None)


def test_attention_is_pinned_on_gpu_only():
    from torch.nn.attention import SDPBackend

    assert attention_backends("flash", "cpu") is None and attention_backends("auto", "cuda") is None
    assert attention_backends("cudnn", "cuda") == [SDPBackend.CUDNN_ATTENTION]
    assert attention_backends("efficient", "cuda") == [SDPBackend.EFFICIENT_ATTENTION]
    q = torch.randn(2, 4, 16, 8)
    plain = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    with attention_context([SDPBackend.MATH]):
        pinned = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    with attention_context(None):
        unpinned = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    torch.testing.assert_close(pinned, plain, rtol=1e-5, atol=1e-6)
    assert torch.equal(unpinned, plain)


def loss_and_grads(head_loss: str, device: str, amp: bool = False) -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    shape = resolve_shape("tiny", {"vocab_size": 997})
    model = build_model(shape, "torch", device)
    model.head_loss = head_loss
    tokens = torch.randint(0, shape.vocab_size, (3, 33), device=device)
    x, y = tokens[:, :-1], tokens[:, 1:].clone()
    y[-1, 20:] = IGNORE  # a stage's budget that ends inside the batch
    loss = summed_loss(model, model, x, y, amp=amp)
    loss.backward()
    return float(loss), {n: p.grad.detach().float().clone() for n, p in model.named_parameters()}


def test_the_sliced_head_loss_equals_the_logits_path_in_loss_and_gradients():
    """On CPU both paths run: the model's own head and cross-entropy, and the sliced loss."""
    logits_loss, logits_grads = loss_and_grads("logits", "cpu")
    sliced_loss, sliced_grads = loss_and_grads("sliced", "cpu")
    assert sliced_loss == pytest.approx(logits_loss, rel=1e-5)
    for name, grad in logits_grads.items():
        torch.testing.assert_close(sliced_grads[name], grad, rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["sliced", "liger", "cce"])
def test_a_gpu_head_loss_equals_the_logits_path(kernel):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    module = {"liger": "liger_kernel", "cce": "cut_cross_entropy"}.get(kernel)
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    logits_loss, logits_grads = loss_and_grads("logits", "cuda", amp=True)
    fused_loss, fused_grads = loss_and_grads(kernel, "cuda", amp=True)
    assert fused_loss == pytest.approx(logits_loss, rel=2e-2)
    for name, grad in logits_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=5e-2, atol=5e-3)

"""MFU's peak comes from the GPU the run is on, or from YXANUL_PEAK_FLOPS, or there is no MFU."""

from __future__ import annotations

from yxanul_ray.metrics import peak_flops


def test_the_peak_is_the_cards_datasheet_figure():
    assert peak_flops("NVIDIA H100 80GB HBM3", env={}) == 989e12
    assert peak_flops("NVIDIA H100 PCIe", env={}) == 756e12
    assert peak_flops("NVIDIA H200", env={}) == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", env={}) == 312e12
    assert peak_flops("NVIDIA L40S", env={}) == 362e12 and peak_flops("NVIDIA L4", env={}) == 121e12
    assert peak_flops("NVIDIA GeForce RTX 4090", env={}) == 165e12


def test_an_unknown_card_gets_no_peak_and_the_environment_overrides():
    assert peak_flops("NVIDIA Tesla T4", env={}) is None
    assert peak_flops(None, env={}) is None
    assert peak_flops("NVIDIA Tesla T4", env={"YXANUL_PEAK_FLOPS": "65e12"}) == 65e12
    assert peak_flops("NVIDIA H100 80GB HBM3", env={"YXANUL_PEAK_FLOPS": "800e12"}) == 800e12

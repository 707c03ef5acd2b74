"""Expert compute roofline: compute- and weight-bandwidth-bound regimes, padding, calibration, shared MLPs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from moesim.compute import (
    DEFAULT_LAUNCH_OVERHEAD_US,
    dense_mlp_us,
    fused_moe_us,
    gemm_us,
    grouped_gemm_us,
    pad_to_block,
)


@pytest.fixture(scope="module")
def gpu(h100_sxm):
    """conftest's H100 SXM spec."""
    return h100_sxm


def test_large_gemm_is_compute_bound(gpu) -> None:
    m, n, k = 8192, 8192, 8192
    t = float(gemm_us(gpu, m, n, k, dtype_bytes=2))
    expected = 2 * m * n * k / (gpu.bf16_tflops * 1e6 * gpu.gemm_efficiency)
    assert t == pytest.approx(expected, rel=1e-9)
    # FP8 weights use the FP8 peak
    t8 = float(gemm_us(gpu, m, n, k, dtype_bytes=1))
    assert t8 == pytest.approx(2 * m * n * k / (gpu.fp8_tflops * 1e6 * gpu.gemm_efficiency), rel=1e-9)


def test_decode_gemm_is_weight_bandwidth_bound(gpu) -> None:
    n, k = 4096, 7168
    t = float(gemm_us(gpu, 1, n, k, dtype_bytes=2))
    weight_bytes = n * k * 2
    assert t == pytest.approx((weight_bytes + (k + n) * 2) / (gpu.hbm_bw_gb_s * 1e3 * gpu.hbm_efficiency), rel=1e-9)
    # 1 and 16 tokens cost nearly the same: the weights dominate
    assert float(gemm_us(gpu, 16, n, k)) < 1.05 * t


def test_idle_expert_costs_nothing(gpu) -> None:
    assert float(gemm_us(gpu, 0, 4096, 4096)) == 0.0
    assert float(grouped_gemm_us(gpu, np.zeros(8), 4096, 4096)) == 0.0
    one = float(grouped_gemm_us(gpu, np.array([0, 0, 5, 0.0]), 4096, 4096))
    assert one == pytest.approx(float(gemm_us(gpu, 5, 4096, 4096)) + DEFAULT_LAUNCH_OVERHEAD_US)


def test_padding_to_block(gpu) -> None:
    assert pad_to_block(np.array([0, 1, 64, 65, 128]), 64).tolist() == [0, 64, 64, 128, 128]
    # padded rows are computed: 65 tokens cost as much compute as 128 in a compute-bound shape
    big = {"hidden": 7168, "intermediate": 18432, "top_k": 1}
    t65 = float(fused_moe_us(gpu, np.array([65.0]), block_size_m=64, **big))
    t128 = float(fused_moe_us(gpu, np.array([128.0]), block_size_m=64, **big))
    t65_unpadded = float(fused_moe_us(gpu, np.array([65.0]), block_size_m=1, **big))
    assert t65_unpadded < t65 <= t128


def test_batched_shapes(gpu) -> None:
    m = np.random.default_rng(0).integers(0, 300, size=(3, 4, 8)).astype(float)
    t = fused_moe_us(gpu, m, 7168, 2048, 8)
    assert t.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            assert t[i, j] == pytest.approx(float(fused_moe_us(gpu, m[i, j], 7168, 2048, 8)))


class _Calibration:
    """Duck-typed calibration (the real one lives in moesim/calibration/model.py)."""

    launch_overhead_us = 2.0
    device_name = "test"

    def __init__(self, eff: float) -> None:
        self.eff = eff

    def gemm_efficiency(self, m, n, k):
        return np.full(np.shape(m), self.eff)

    def hbm_efficiency(self, nbytes):
        return np.full(np.shape(nbytes), 0.5)


def test_calibration_replaces_profile_constants(gpu) -> None:
    m, n, k = 8192, 8192, 8192
    half = float(gemm_us(gpu, m, n, k, calibration=_Calibration(gpu.gemm_efficiency / 2)))
    assert half == pytest.approx(2 * float(gemm_us(gpu, m, n, k)), rel=1e-9)
    slow_hbm = float(gemm_us(gpu, 1, n, k, calibration=_Calibration(1.0)))
    assert slow_hbm == pytest.approx((n * k * 2 + (n + k) * 2) / (gpu.hbm_bw_gb_s * 1e3 * 0.5), rel=1e-9)
    t = float(grouped_gemm_us(gpu, np.array([1.0]), n, k, calibration=_Calibration(1.0)))
    assert t == pytest.approx(slow_hbm + 2.0)


def test_dense_mlp(gpu) -> None:
    t = float(dense_mlp_us(gpu, 4096, 7168, 18432))
    flops = 2 * 4096 * 7168 * 18432 * 3
    assert t >= flops / (gpu.bf16_tflops * 1e6)
    assert float(dense_mlp_us(gpu, 4096, 7168, 0)) == 0.0


def test_faster_gpu_is_faster(gpu) -> None:
    m = np.full(8, 512.0)
    fast = dataclasses.replace(gpu, bf16_tflops=gpu.bf16_tflops * 2, hbm_bw_gb_s=gpu.hbm_bw_gb_s * 2)
    assert float(fused_moe_us(fast, m, 4096, 14336, 2)) < float(fused_moe_us(gpu, m, 4096, 14336, 2))

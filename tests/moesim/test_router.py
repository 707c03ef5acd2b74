"""Router cost (moesim/router.py) against hand-computed values of its docstring's equations.

H100 SXM (profiles/gpus/h100-sxm.yaml): GEMM peak 989.4 TFLOP/s x 0.807 = 798,445,800 FLOP/us; HBM
3350 GB/s x 0.896 = 3,001,600 B/us; launch overhead 4 us per kernel (no calibration).
"""

from __future__ import annotations

import numpy as np
import pytest

from moesim.compute import DEFAULT_LAUNCH_OVERHEAD_US
from moesim.router import router_us

HBM_B_PER_US = 3350e3 * 0.896  # 3,001,600
PEAK_FLOP_PER_US = 989.4e6 * 0.807  # 798,445,800


class FlatCalibration:
    """A calibration with constant efficiencies and its own launch overhead (duck-typed like compute.py reads it)."""

    has_curves = True
    launch_overhead_us = 3.0

    def gemm_efficiency(self, m: np.ndarray, n: int, k: int) -> np.ndarray:
        return np.full(np.shape(m), 0.5)

    def hbm_efficiency(self, nbytes: np.ndarray) -> np.ndarray:
        return np.full(np.shape(nbytes), 0.5)


def test_profile_constants_match_the_hand_numbers(h100_sxm) -> None:
    assert h100_sxm.hbm_bw_gb_s * 1e3 * h100_sxm.hbm_efficiency == pytest.approx(HBM_B_PER_US)
    assert h100_sxm.bf16_tflops * 1e6 * h100_sxm.gemm_efficiency == pytest.approx(PEAK_FLOP_PER_US)


def test_deepseek_v3_group_limited_routing(h100_sxm, deepseek_v3) -> None:
    """T=1024, H=7168, E=256, k=8, n_group=8 (two passes over the scores):

    gate:  flops 2*1024*256*7168 = 3,758,096,384 -> 4.7068 us; bytes 256*7168*2 + (1024*7168 + 1024*256)*2
           = 18,874,368 -> 6.2881 us: memory bound, 6.2881 us
    top-k: 1024*256*4*2 + 1024*8*(4+8) = 2,195,456 B -> 0.7314 us
    launch: 4 * (1 + 2) = 12 us;  total 19.0195 us
    """
    m = deepseek_v3
    assert (m.hidden_size, m.num_experts, m.top_k, m.n_group) == (7168, 256, 8, 8)
    t = router_us(h100_sxm, 1024, m.hidden_size, m.num_experts, m.top_k, n_group=m.n_group)
    gate = max(2 * 1024 * 256 * 7168 / PEAK_FLOP_PER_US, 18_874_368 / HBM_B_PER_US)
    assert gate == pytest.approx(6.288102, rel=1e-6)
    assert 2_195_456 / HBM_B_PER_US == pytest.approx(0.731429, rel=1e-6)
    assert float(t) == pytest.approx(gate + 2_195_456 / HBM_B_PER_US + 12.0, rel=1e-12)
    assert float(t) == pytest.approx(19.019531, rel=1e-6)


def test_ungrouped_routing_scans_the_scores_once(h100_sxm) -> None:
    """n_group=1: top-k bytes 1024*256*4 + 1024*8*12 = 1,146,880, launch 4 * 2 = 8 us; total 14.6702 us."""
    t1 = float(router_us(h100_sxm, 1024, 7168, 256, 8, n_group=1))
    assert t1 == pytest.approx(6.288102345 + 1_146_880 / HBM_B_PER_US + 8.0, rel=1e-9)
    assert t1 == pytest.approx(14.670192, rel=1e-6)
    # the second pass costs one more read of the FP32 scores and one more launch
    t8 = float(router_us(h100_sxm, 1024, 7168, 256, 8, n_group=8))
    assert t8 - t1 == pytest.approx(1024 * 256 * 4 / HBM_B_PER_US + DEFAULT_LAUNCH_OVERHEAD_US, rel=1e-9)


def test_elementwise_over_tokens_and_idle_gpus_cost_nothing(h100_sxm, deepseek_v3) -> None:
    m = deepseek_v3
    tokens = np.array([[0.0, 1024.0], [1.0, 0.0]])
    t = router_us(h100_sxm, tokens, m.hidden_size, m.num_experts, m.top_k, n_group=m.n_group)
    assert t.shape == (2, 2)
    assert t[0, 0] == 0.0 and t[1, 1] == 0.0
    assert t[0, 1] == pytest.approx(19.019531, rel=1e-6)
    # one token: the gate weight read (256*7168*2 B) dominates; launches add 12 us
    one = (256 * 7168 * 2 + (7168 + 256) * 2) / HBM_B_PER_US + (256 * 4 * 2 + 8 * 12) / HBM_B_PER_US + 12.0
    assert t[1, 0] == pytest.approx(one, rel=1e-12)


def test_calibration_sets_launch_overhead_and_efficiencies(h100_sxm) -> None:
    """Efficiency 0.5 everywhere: HBM 1,675,000 B/us, GEMM 494,700,000 FLOP/us; launch 3 us x 3 kernels."""
    t = float(router_us(h100_sxm, 1024, 7168, 256, 8, n_group=8, calibration=FlatCalibration()))
    hbm = 3350e3 * 0.5
    gate = max(3_758_096_384 / (989.4e6 * 0.5), 18_874_368 / hbm)
    assert t == pytest.approx(gate + 2_195_456 / hbm + 3 * 3.0, rel=1e-12)


def test_fp8_activations_shrink_the_gate_reads(h100_sxm) -> None:
    """act_bytes=1: activations in and out at 1 B; the gate weight stays BF16 (256*7168*2 B)."""
    t = float(router_us(h100_sxm, 1024, 7168, 256, 8, n_group=1, act_bytes=1))
    gate = max(3_758_096_384 / PEAK_FLOP_PER_US, (256 * 7168 * 2 + (1024 * 7168 + 1024 * 256) * 1) / HBM_B_PER_US)
    assert t == pytest.approx(gate + 1_146_880 / HBM_B_PER_US + 8.0, rel=1e-12)

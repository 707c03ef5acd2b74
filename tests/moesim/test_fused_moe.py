"""The calibrated fused-MoE kernel model and the collector's routings."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.calibration.file_format import load_calibration
from moesim.calibration.resolve import shipped_calibration_path
from moesim.errors import SpecError
from moesim.fused_moe import (
    INITIAL,
    FusedMoEParams,
    fit_fused_moe,
    fused_moe_kernel_us,
    kernel_stats,
    resident_programs,
)
from moesim.measured_rows import fused_moe_rows
from moesim.specs import load_gpu
from moesim.traces.collector_routing import balanced_counts, local_counts, parse_distribution, touched_tokens
from moesim.vllm_configs import TileSource

GPU = load_gpu("h100-sxm")


def test_balanced_counts_spread_evenly() -> None:
    c = balanced_counts(1024, 8, 128)
    assert c.sum() == 1024 * 8 and c.min() == c.max() == 64
    small = balanced_counts(2, 8, 256)  # T < stride: tokens spread apart, k distinct experts each
    assert small.sum() == 16 and small.max() == 1


@pytest.mark.parametrize("tokens", [1, 16, 1024, 16384])
def test_power_law_counts_obey_the_collector_rules(tokens: int) -> None:
    draws = local_counts(tokens, 8, 256, 8, "power_law_1.2")
    full = local_counts(tokens, 8, 256, 1, "power_law_1.2")
    assert draws.shape == (5, 32) and full.shape == (5, 256)
    assert np.all(full.sum(axis=1) == tokens * 8) and full.max() <= tokens  # exact total, at most once per token
    # rank 0 is the most loaded rank after the swap: at least the mean rank's share
    assert np.all(draws.sum(axis=1) >= tokens * 8 / 8) and np.all(draws.max(axis=1) <= tokens)


def test_distribution_names() -> None:
    assert parse_distribution("balanced") is None and parse_distribution("power_law_1.01") == 1.01
    with pytest.raises(SpecError, match="distribution"):
        parse_distribution("zipf")


def test_allgather_walks_all_rows_and_costs_more() -> None:
    local = local_counts(4096, 8, 256, 32, "balanced")
    disp = fused_moe_kernel_us(GPU, local, 7168, 2048, 8, 256, INITIAL)
    ag = fused_moe_kernel_us(GPU, local, 7168, 2048, 8, 256, INITIAL, ep_mode="allgather", walked_rows=4096 * 8,
                             expert_map=True)  # fmt: skip
    assert float(ag[0]) > float(disp[0]) > 0
    assert float(fused_moe_kernel_us(GPU, np.zeros((1, 8)), 4096, 1024, 2, 8, INITIAL)[0]) == 0.0


def test_time_grows_with_tokens_and_weights() -> None:
    # the shipped fit, with the tiles vLLM runs on this device (INITIAL is only a fit's starting point)
    cal = load_calibration(shipped_calibration_path("h100-sxm"))
    params, tile = cal.fused_moe, TileSource("vllm", "0.24.0", cal.device_name)
    t = [float(fused_moe_kernel_us(GPU, local_counts(n, 8, 128, 1, "balanced"), 4096, 1536, 8, 128, params,
                                   tile=tile)[0])
         for n in (1, 64, 1024, 16384)]  # fmt: skip
    assert t == sorted(t)
    bigger = fused_moe_kernel_us(GPU, local_counts(64, 8, 128, 1, "balanced"), 4096, 3072, 8, 128, params, tile=tile)
    assert float(bigger[0]) > t[1]


def test_programs_per_sm_follow_shared_memory_and_warps() -> None:
    one_each = np.array([[1.0] * 4 + [0.0] * 4])  # M = 4 tokens <= E = 8: SGLang's 16x32x64 tile
    small = kernel_stats(one_each, 1, intermediate_shard=7000, tile=TileSource("sglang"))
    big = kernel_stats(np.array([[4096.0]]), 1, intermediate_shard=7000)  # vLLM 0.24 at M=4096: 128x128x64, 8 warps
    assert float(resident_programs(small, GPU)[0]) == 12  # 3 x (16 + 32) x 64 x 2 B = 18 KiB of 228 KiB
    assert float(resident_programs(big, GPU)[0]) == 2  # 3 x 256 x 64 x 2 B = 96 KiB


def test_a_k_without_16_divisibility_is_slower() -> None:
    """Shards whose K (the down GEMM's row stride) is not a multiple of 16 get no wide loads (N = 232 vs 240)."""
    slow = FusedMoEParams(**{**INITIAL.to_dict(), "misalign": 3.0})
    counts = local_counts(1024, 6, 128, 1, "balanced")
    per_n = {n: [float(fused_moe_kernel_us(GPU, counts, 2688, n, 6, 128, p, gated=False)[0]) for p in (INITIAL, slow)]
             for n in (232, 240)}  # fmt: skip
    assert per_n[240][0] == per_n[240][1]  # aligned: misalign does not apply
    assert per_n[232][1] > per_n[232][0] * 1.2


def test_sglang_rank_workload_keeps_tokens_with_a_local_expert() -> None:
    counts = local_counts(64, 8, 256, 8, "balanced")
    exact = touched_tokens(64, 8, 256, "balanced", counts)
    t = np.arange(64)[:, None] + 32 * np.arange(8)[None, :]  # stride ceil(256 / 8) = 32: token t picks t + 32 j
    assert float(exact[0]) == float(((t % 256) < 32).any(axis=1).sum()) == 64  # j = 0 (t < 32) or j = 7
    few = local_counts(1, 8, 256, 8, "balanced")  # one token: its 8 experts lie 32 apart, one of them local
    assert float(touched_tokens(1, 8, 256, "balanced", few)[0]) == 1
    draws = local_counts(64, 8, 256, 8, "power_law_1.2")
    expect = touched_tokens(64, 8, 256, "power_law_1.2", draws)
    assert np.all(expect >= draws.max(axis=1) - 1e-9) and np.all(expect <= np.minimum(64, draws.sum(axis=1)) + 1e-9)


def test_stats_are_mode_aware() -> None:
    s = kernel_stats(np.array([[4.0, 0.0, 20.0]]), 2, "allgather", 100.0, expert_map=True)
    assert s.active[0] == 2 and s.rows[0] == 24 and s.walked[0] == 100 and s.mapped[0] == 1
    assert kernel_stats(np.array([[4.0, 0.0, 20.0]]), 2).walked[0] == 24


def test_fit_recovers_its_own_model() -> None:
    truth = FusedMoEParams(**{**INITIAL.to_dict(), "kernel_us": 4.0, "ew": 0.9, "ea": 0.5, "tau": 0.12})
    recs = [
        {"kind": "fused_moe", "tokens": t, "hidden": h, "intermediate": i, "num_experts": e, "top_k": k, "tp": tp,
         "ep": ep, "distribution": "balanced", "ep_mode": "allgather", "median_us": 1.0}
        for (h, i, e, k) in ((2048, 768, 128, 8), (4096, 14336, 8, 2), (6144, 2048, 256, 8))
        for t in (1, 16, 256, 4096) for tp, ep in ((1, 1), (4, 1), (1, 8))
    ]  # fmt: skip
    rows = fused_moe_rows(recs, draws=1)
    rows = type(rows)(**{**rows.__dict__, "measured_us": rows.predict(GPU, truth)})
    fitted = fit_fused_moe(rows, GPU)
    assert np.allclose(rows.predict(GPU, fitted), rows.measured_us, rtol=0.03)


def test_params_from_dict_names_the_field() -> None:
    doc = INITIAL.to_dict()
    assert FusedMoEParams.from_dict(doc, "f.json") == INITIAL
    with pytest.raises(SpecError, match=r"f\.json: fused_moe\.ew: must be in"):
        FusedMoEParams.from_dict({**doc, "ew": 3.0}, "f.json")
    with pytest.raises(SpecError, match=r"fused_moe\.tau: missing"):
        FusedMoEParams.from_dict({k: v for k, v in doc.items() if k != "tau"}, "f.json")
    old = {k: v for k, v in doc.items() if k not in ("misalign", "ez")}  # a file from before these fields
    loaded = FusedMoEParams.from_dict(old, "f.json")
    assert loaded.misalign == 1.0 and loaded.ez == loaded.ea
    with pytest.raises(SpecError, match=r"fused_moe\.bogus: unknown field"):
        FusedMoEParams.from_dict({**doc, "bogus": 1}, "f.json")

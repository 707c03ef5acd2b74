"""``moesim.measured_rows``: fold keys of measured records and the :class:`FitRows` of fused-MoE records, checked
on records whose per-expert counts are worked out by hand (the collector's ``balanced`` routing), against the
kernel model called directly, and on the fused-MoE tables of the installed ``aiconfigurator-core``."""

from __future__ import annotations

import random
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from moesim.errors import SpecError
from moesim.fused_moe import INITIAL, KernelStats, fused_moe_kernel_us
from moesim.measured_rows import fused_moe_rows, shape_key
from moesim.traces.collector_routing import local_counts
from moesim.vllm_configs import TileSource


def rec(**over: Any) -> dict[str, Any]:
    """A vLLM fused-MoE record: T 4, top-2 of 8 experts, H 256, I 512, no TP, no EP, balanced routing."""
    r = {
        "kind": "fused_moe", "framework": "VLLM", "framework_version": "0.24.0", "device_name": None,
        "tokens": 4, "top_k": 2, "num_experts": 8, "hidden": 256, "intermediate": 512, "tp": 1, "ep": 1,
        "distribution": "balanced", "ep_mode": "allgather", "median_us": 50.0,
    }  # fmt: skip
    r.update(over)
    return r


def stat(rows: Any, name: str) -> np.ndarray:
    return getattr(rows.stats, name)


# ---------------------------------------------------------------------------------------------- shape_key
def test_shape_key_per_kind() -> None:
    assert shape_key(rec(hidden=7168, intermediate=2048, num_experts=256, top_k=8)) == (7168, 2048, 256, 8)
    deepep = {"kind": "deepep_normal", "hidden": 7168, "top_k": 8, "num_experts": 256, "tokens": 128}
    assert shape_key(deepep) == (7168, 8, 256)
    assert shape_key({**deepep, "kind": "deepep_ll"}) == (7168, 8, 256)
    assert shape_key({"kind": "nccl", "message_bytes": 4096, "op": "alltoall", "num_gpus": 8}) == (4096,)
    with pytest.raises(KeyError, match="gemm"):
        shape_key({"kind": "gemm"})


def test_shape_key_ignores_what_varies_within_a_shape() -> None:
    # tokens, TP, EP, routing, engine and timing vary within one shape: one fold holds them all
    base = shape_key(rec())
    for over in ({"tokens": 4096}, {"tp": 4}, {"ep": 8}, {"distribution": "power_law_1.2"}, {"framework": "SGLang"}):
        assert shape_key(rec(**over)) == base
    assert shape_key(rec(intermediate=1024)) != base and shape_key(rec(top_k=1)) != base


# ---------------------------------------------------------------------------------------------- fused_moe_rows
def test_balanced_rows_by_hand() -> None:
    # balanced, T 4 >= stride ceil(8 / 2) = 4: token t picks experts t and t + 4, so every expert gets 1 row;
    # EP 2 keeps experts 0..3: 4 active local experts of 1 row each; vLLM's rank walks all T k = 8 rows
    rows = fused_moe_rows([rec(ep=2, tp=2, gated=False, median_us=12.5)], draws=5)
    assert stat(rows, "rows").shape == (1, 5)  # balanced has one draw, repeated
    for name, want in (("active", 4), ("rows", 4), ("blocks", 4), ("walked", 8), ("tokens", 4), ("mapped", 1)):
        assert np.array_equal(stat(rows, name), np.full((1, 5), float(want))), name
    assert rows.intermediate_shard.tolist() == [256.0] and rows.hidden.tolist() == [256.0]
    assert rows.gated.tolist() == [0.0] and rows.num_experts.tolist() == [8.0] and rows.measured_us.tolist() == [12.5]


def test_no_ep_means_no_expert_map() -> None:
    rows = fused_moe_rows([rec()], draws=2)
    assert np.array_equal(stat(rows, "rows"), [[8.0, 8.0]]) and np.array_equal(stat(rows, "walked"), [[8.0, 8.0]])
    assert np.array_equal(stat(rows, "active"), [[8.0, 8.0]]) and np.array_equal(stat(rows, "mapped"), [[0.0, 0.0]])
    assert rows.gated.tolist() == [1.0]  # gated by default (SwiGLU)


def test_sglang_rank_keeps_only_tokens_with_a_local_expert() -> None:
    # EP 4 keeps experts 0, 1; tokens 0 and 1 (experts {0, 4} and {1, 5}) reach it, tokens 2, 3 do not:
    # the kernels walk those 2 tokens' k = 2 slots, 4 rows, without an expert map
    r = rec(framework="SGLang", framework_version="0.5.14", ep=4, ep_emulation="local_tokens")
    rows = fused_moe_rows([r], draws=1)
    assert (stat(rows, "rows")[0, 0], stat(rows, "active")[0, 0]) == (2.0, 2.0)
    assert (stat(rows, "walked")[0, 0], stat(rows, "tokens")[0, 0], stat(rows, "mapped")[0, 0]) == (4.0, 2.0, 0.0)
    # the same record emulated the vLLM way: every token walked, expert map on
    allt = fused_moe_rows([{**r, "ep_emulation": "all_tokens"}], draws=1)
    assert (stat(allt, "walked")[0, 0], stat(allt, "mapped")[0, 0]) == (8.0, 1.0)
    # with one EP rank every token is local: local_tokens walks them all
    one = fused_moe_rows([{**r, "ep": 1}], draws=1)
    assert stat(one, "walked")[0, 0] == 8.0 and stat(one, "mapped")[0, 0] == 0.0


def test_power_law_draws_follow_local_counts() -> None:
    r = rec(tokens=64, top_k=4, num_experts=16, ep=2, distribution="power_law_1.2")
    rows = fused_moe_rows([r], draws=3, seed=7)
    counts = local_counts(64, 4, 16, 2, "power_law_1.2", 3, 7)  # [3, 8]
    assert np.array_equal(stat(rows, "rows")[0], counts.sum(axis=1))
    assert np.array_equal(stat(rows, "active")[0], (counts > 0).sum(axis=1))
    assert len(set(stat(rows, "rows")[0].tolist())) > 1  # the draws differ
    assert np.array_equal(stat(rows, "walked")[0], [256.0] * 3)
    other = fused_moe_rows([r], draws=3, seed=8)
    assert not np.array_equal(stat(other, "rows"), stat(rows, "rows"))
    # one EP rank holds every expert: all T k assignments are local in every draw
    full = fused_moe_rows([{**r, "ep": 1}], draws=3)
    assert np.array_equal(stat(full, "rows")[0], [256.0] * 3)


def test_rows_match_calling_the_kernel_model_directly() -> None:
    from moesim.specs import load_gpu

    gpu = load_gpu("h100-sxm")
    recs = [
        rec(tokens=256, top_k=8, num_experts=64, hidden=2048, intermediate=1024, tp=2, ep=4,
            distribution="power_law_1.01", device_name="NVIDIA H100 80GB HBM3"),
        rec(tokens=32, top_k=2, num_experts=8, hidden=4096, intermediate=14336, tp=4, ep=1, gated=False),
    ]  # fmt: skip
    pred = fused_moe_rows(recs).predict(gpu, INITIAL)
    for r, got in zip(recs, pred, strict=True):
        counts = local_counts(r["tokens"], r["top_k"], r["num_experts"], r["ep"], r["distribution"])
        want = fused_moe_kernel_us(
            gpu, counts, r["hidden"], r["intermediate"] // r["tp"], r["top_k"], r["num_experts"], INITIAL,
            gated=r.get("gated", True), ep_mode="allgather", walked_rows=r["tokens"] * r["top_k"],
            expert_map=r["ep"] > 1, tile=TileSource("vllm", r["framework_version"], r["device_name"]),
        )  # fmt: skip
        assert got == pytest.approx(float(np.mean(want)), rel=1e-12) and got > 0


def test_a_batch_equals_its_rows_one_by_one_in_any_order() -> None:
    recs = [
        rec(),
        rec(tp=2),  # same routing, another shard
        rec(ep=2),
        rec(framework="SGLang", framework_version="0.5.14", ep=2, ep_emulation="local_tokens"),
        rec(framework="SGLang", framework_version="0.5.14", ep=2),  # same routing, other emulation
        rec(tokens=64, top_k=4, num_experts=16, ep=4, distribution="power_law_1.2", median_us=9.0),
        rec(tokens=64, top_k=4, num_experts=16, ep=4, distribution="power_law_1.2", tp=8, median_us=3.0),
    ]
    batch = fused_moe_rows(recs, draws=4)
    order = list(range(len(recs)))
    random.Random(0).shuffle(order)
    shuffled = fused_moe_rows([recs[i] for i in order], draws=4)
    for i, r in enumerate(recs):
        alone = fused_moe_rows([r], draws=4)
        for f in fields(KernelStats):
            assert np.array_equal(stat(batch, f.name)[i], stat(alone, f.name)[0]), (i, f.name)
            assert np.array_equal(stat(shuffled, f.name)[order.index(i)], stat(alone, f.name)[0]), (i, f.name)
    assert batch.measured_us.tolist() == [r["median_us"] for r in recs]
    assert batch.intermediate_shard.tolist() == [r["intermediate"] / r["tp"] for r in recs]


def test_engine_name_is_case_blind_and_defaults_to_vllm() -> None:
    a = fused_moe_rows([rec(framework="VLLM", tokens=300)], draws=1)
    b = fused_moe_rows([rec(framework="vllm", tokens=300)], draws=1)
    c = fused_moe_rows([{k: v for k, v in rec(tokens=300).items() if k != "framework"}], draws=1)
    for f in fields(KernelStats):
        assert np.array_equal(stat(a, f.name), stat(b, f.name)) and np.array_equal(stat(a, f.name), stat(c, f.name))


def test_bad_routing_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match=r"^routing: ep: 8 experts do not split over 3 EP ranks$"):
        fused_moe_rows([rec(ep=3)])
    with pytest.raises(SpecError, match=r"^routing: distribution: must be 'balanced' or 'power_law_<alpha>'"):
        fused_moe_rows([rec(distribution="zipf_1.2")])


def test_empty_records() -> None:
    rows = fused_moe_rows([], draws=3)
    assert stat(rows, "rows").shape == (0, 3) and rows.measured_us.shape == (0,)


# ---------------------------------------------------------------------------------------------- installed tables
@pytest.fixture(scope="module")
def tables() -> Path:
    pytest.importorskip("pandas", reason="the `measured` extra (pandas, pyarrow) is not installed")
    aic = pytest.importorskip("aiconfigurator_core", reason="the `measured` extra (aiconfigurator-core) is missing")
    return Path(aic.__file__).parent / "systems" / "data" / "h100_sxm"


def _sample(path: Path, n: int, seed: int = 0) -> list[dict[str, Any]]:
    from moesim.aiconfigurator import read_table

    recs = read_table(path).records
    return random.Random(seed).sample(recs, min(n, len(recs)))


@pytest.mark.parametrize("table", ["moe/vllm/0.24.0/moe_perf.parquet", "moe/sglang/0.5.14/moe_perf.parquet"])
def test_rows_of_the_measured_tables(tables: Path, table: str) -> None:
    recs = _sample(tables / table, 300)
    rows = fused_moe_rows(recs)
    k = np.array([r["top_k"] for r in recs], dtype=np.float64)[:, None]
    tokens = np.array([r["tokens"] for r in recs], dtype=np.float64)[:, None]
    ep = np.array([r["ep"] for r in recs])[:, None]
    local = np.array([r["num_experts"] // r["ep"] for r in recs])[:, None]
    rows_, walked, active = stat(rows, "rows"), stat(rows, "walked"), stat(rows, "active")
    assert np.all(active <= local) and np.all(active >= 1) and np.all(stat(rows, "blocks") >= active)
    assert np.all(rows_ <= walked) and np.all(walked <= tokens * k + 1e-9)
    assert np.array_equal(stat(rows, "tokens"), walked / k)
    assert np.all(rows_[ep[:, 0] == 1] == (tokens * k)[ep[:, 0] == 1])  # one EP rank: every assignment local
    local_tok = np.array([r.get("ep_emulation") == "local_tokens" and r["ep"] > 1 for r in recs])
    assert np.array_equal(walked[~local_tok], np.broadcast_to(tokens * k, walked.shape)[~local_tok])
    assert np.array_equal(stat(rows, "mapped")[:, 0], (~local_tok & (ep[:, 0] > 1)).astype(float))
    if "sglang" in table:
        assert local_tok.any()
        # a rank-0 workload keeps at least one row per kept token: T' <= rows
        assert np.all(stat(rows, "tokens")[local_tok] <= rows_[local_tok] + 1e-9)
    assert np.array_equal(rows.measured_us, [r["median_us"] for r in recs]) and np.all(rows.measured_us > 0)

"""tuner.plan: the comparison rows, scored as the engine dispatches, against a lower bound valid for every plan."""

from pathlib import Path

import numpy as np
import pytest

from moesim.simulate import SimOptions, simulate
from moesim.specs import load_cluster, load_model
from moesim.trace import load_trace
from tuner.placers.ilp import NETWORK_REPLICAS
from tuner.plan import plan

TRACE = Path(__file__).resolve().parents[2] / "profiles" / "traces" / "olmoe_c4.npz"


@pytest.fixture(scope="module")
def olmoe_two_nodes():
    model, cluster, trace = load_model("olmoe-1b-7b"), load_cluster("h100-2x8-ib400"), load_trace(TRACE)
    res = plan(model, cluster, trace, redundant_experts=16, time_limit_s=8, engine="sglang-static")
    return model, cluster, trace, res


def test_rows_methods_and_never_worse(olmoe_two_nodes) -> None:
    _, _, _, res = olmoe_two_nodes
    rows = {r["method"]: r for r in res.rows}
    assert list(rows) == ["contiguous", "round-robin", "eplb-global", "node-spread", "ilp"]
    same_slots = [r for m, r in rows.items() if m not in ("contiguous", "round-robin")]
    assert rows["ilp"]["layer_latency_us"] <= min(r["layer_latency_us"] for r in same_slots) * (1 + 1e-9)
    assert res.best.meta["predicted"]["warm_start"] in ("node-spread", NETWORK_REPLICAS)
    assert res.best.meta["predicted"]["dependency"] == "home"


def test_gap_is_against_a_bound_below_every_row(olmoe_two_nodes) -> None:
    _, _, _, res = olmoe_two_nodes
    bound = res.bound["objective_us"]
    assert bound > 0
    for r in res.rows:
        assert bound <= r["predicted_us"] * (1 + 1e-9)
        assert r["gap"] == pytest.approx((r["predicted_us"] - bound) / r["predicted_us"])
    head = res.best.meta["predicted"]
    assert head["lower_bound_us"] == bound and 0 <= head["gap"] < 0.3 and head["sub_gap"] is not None
    # the plan is nearer the bound than every baseline
    assert head["gap"] <= min(r["gap"] for r in res.rows[:-1])


def test_traffic_columns_are_what_the_simulator_sends(olmoe_two_nodes) -> None:
    model, cluster, trace, res = olmoe_two_nodes
    ilp = res.rows[-1]
    step = simulate(
        model, cluster, trace, res.best, SimOptions(tokens_per_gpu=4096, check_memory=False, engine="sglang-static")
    )
    assert ilp["cross_node_bytes"] == pytest.approx(sum(la.network_bytes for la in step.layers))
    assert ilp["cross_gpu_bytes"] == pytest.approx(sum(la.nvlink_bytes + la.network_bytes for la in step.layers))
    # node-spread's replicas are local to more ranks than global EPLB's: less network traffic
    rows = {r["method"]: r for r in res.rows}
    assert rows["node-spread"]["cross_node_bytes"] < rows["eplb-global"]["cross_node_bytes"]


def test_transitions_dependency_prices_the_crossings() -> None:
    model, cluster, trace = load_model("olmoe-1b-7b"), load_cluster("h100-2x8-ib400"), load_trace(TRACE)
    home = plan(model, cluster, trace, redundant_experts=16, time_limit_s=3)
    moved = plan(model, cluster, trace, redundant_experts=16, time_limit_s=3, dependency="transitions")
    for a, b in zip(home.rows, moved.rows):
        if a["method"] != "ilp":  # the same baselines: only the pricing differs
            assert b["predicted_us"] > a["predicted_us"]
            assert np.allclose(a["transition_crossings"], b["transition_crossings"])
    assert home.bound["cross_node_tokens"] == 0 and moved.bound["cross_node_tokens"] > 0


def test_memory_is_checked_in_the_weights_bytes() -> None:
    """16 expert slots of DeepSeek-V3 (58 layers) fit in an H100's 60 GB budget at fp8, not at bf16."""
    from moesim.errors import PlacementError
    from moesim.synthetic import synthetic_trace

    model, cluster = load_model("deepseek-v3"), load_cluster("h100-2x8-ib400")
    trace = synthetic_trace(model, 2048, seed=0, layers=model.moe_layers[:2], with_topk_ids=False)
    with pytest.raises(PlacementError, match="GPU memory"):
        plan(model, cluster, trace, time_limit_s=2)
    res = plan(model, cluster, trace, time_limit_s=2, weight_bytes=1.0)
    assert "ilp" in {r["method"] for r in res.rows}

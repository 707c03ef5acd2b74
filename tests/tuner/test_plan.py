"""tuner.plan: the comparison rows, scored as the engine dispatches, against a lower bound valid for every plan."""

from pathlib import Path

import numpy as np
import pytest

from moesim.options import SimOptions
from moesim.simulate import simulate
from moesim.specs import load_cluster, load_model
from moesim.traces.formats import load_trace
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
    from moesim.traces.synthetic import synthetic_trace

    model, cluster = load_model("deepseek-v3"), load_cluster("h100-2x8-ib400")
    trace = synthetic_trace(model, 2048, seed=0, layers=model.moe_layers[:2], with_topk_ids=False)
    with pytest.raises(PlacementError, match="GPU memory"):
        plan(model, cluster, trace, time_limit_s=2)
    res = plan(model, cluster, trace, time_limit_s=2, weight_bytes=1.0)
    assert "ilp" in {r["method"] for r in res.rows}


def test_scaled_routing_is_one_step_of_every_gpu() -> None:
    """Every layer's counts sum to ``T * G * k``; transitions are scaled by their layer's factor."""
    from tuner.plan import scaled_routing

    trace = load_trace(TRACE)
    counts, tr = scaled_routing(trace, 16, 1024)
    assert counts.shape == trace.counts.shape
    assert np.allclose(counts.sum(axis=1), 1024 * 16 * trace.top_k)
    scale = counts.sum(axis=1) / np.asarray(trace.counts, dtype=np.float64).sum(axis=1)
    if trace.transitions is None:
        assert tr is None
    else:
        assert np.allclose(tr, np.asarray(trace.transitions, dtype=np.float64) * scale[:-1, None, None])


def test_place_is_the_registry_on_scaled_counts() -> None:
    from moesim.errors import PlacementError
    from tuner.placers import Budget
    from tuner.placers import place as place_with
    from tuner.plan import place, scaled_routing

    model, cluster, trace = load_model("olmoe-1b-7b"), load_cluster("h100-2x8-ib400"), load_trace(TRACE)
    p = place("eplb_global", model, cluster, trace, redundant_experts=16, tokens_per_gpu=2048)
    counts, tr = scaled_routing(trace, 16, 2048)
    q = place_with("eplb-global", counts, tr, model, cluster, 16, "placement", Budget(), layers=trace.layers)
    assert np.array_equal(p.phy2log, q.phy2log) and np.allclose(p.shares, q.shares)
    with pytest.raises(PlacementError, match="unknown placement method 'greedy'"):
        place("greedy", model, cluster, trace)
    with pytest.raises(PlacementError, match="has no replicas"):
        place("contiguous", model, cluster, trace, redundant_experts=16)


def test_per_layer_choice_takes_each_layers_fastest() -> None:
    """``_keep_better_layers`` picks, per layer, the lowest simulated latency among same-slot plans (the MILP on
    ties); ``_layerwise`` stitches those rows; ``_tally`` counts the layers taken from others."""
    from moesim.placement import Placement, even_shares
    from tuner.plan import _keep_better_layers, _layerwise, _tally

    def placement(rows: list[list[int]], name: str) -> Placement:
        phy = np.array(rows, dtype=np.int64)
        return Placement(2, phy.shape[1] // 2, 4, phy, even_shares(phy, 4), {"method": name})

    ilp = placement([[0, 1, 2, 3], [0, 2, 1, 3], [3, 2, 1, 0]], "ilp")
    eplb = placement([[1, 0, 3, 2], [2, 3, 0, 1], [0, 1, 2, 3]], "eplb-global")
    other = placement([[0, 1, 2, 3, 0, 1], [0, 1, 2, 3, 2, 3], [0, 1, 2, 3, 0, 3]], "six slots")
    pool = {"ilp": ilp, "eplb-global": eplb, "six slots": other}
    rows = [
        {"method": "eplb-global", "layer_latencies_us": [5.0, 1.0, 3.0]},
        {"method": "six slots", "layer_latencies_us": [0.1, 0.1, 0.1]},  # another slot count: never taken
        {"method": "ilp", "layer_latencies_us": [4.0, 2.0, 3.0]},
    ]
    pick = _keep_better_layers(pool, rows, 2)
    assert pick == ["ilp", "eplb-global", "ilp"]
    mixed = _layerwise(pool, pick, {"method": "ilp"})
    assert np.array_equal(mixed.phy2log, np.stack([ilp.phy2log[0], eplb.phy2log[1], ilp.phy2log[2]]))
    assert mixed.meta == {"method": "ilp"}
    assert _tally(pick) == {"eplb-global": 1}
    rows[0]["layer_latencies_us"] = [5.0, 2.0, 3.0]  # ties go to the MILP: nothing to take
    assert _keep_better_layers(pool, rows, 2) == []


def test_evaluate_row_has_the_table_columns() -> None:
    from tuner.placers import place as place_with
    from tuner.plan import ROW_KEYS, cost_model, evaluate, scaled_routing

    model, cluster, trace = load_model("olmoe-1b-7b"), load_cluster("h100-2x8-ib400"), load_trace(TRACE)
    counts, tr = scaled_routing(trace, 16, 1024)
    p = place_with("contiguous", counts, tr, model, cluster, layers=trace.layers)
    cost = cost_model(model, cluster, 1024, p.slots_per_gpu)
    row = evaluate(p, model, cluster, trace, counts, tr, cost, 1024, "contiguous")
    assert set(ROW_KEYS) <= set(row) and row["method"] == "contiguous" and row["gap"] is None
    assert row["max_mean_load"] >= 1.0 and len(row["layer_latencies_us"]) == len(trace.layers)
    assert row["layer_latency_us"] == pytest.approx(np.mean(row["layer_latencies_us"]))
    assert row["cross_node_bytes"] <= row["cross_gpu_bytes"]
    # under the default dependency the objective prices compute (and NICs under SGLang), not the transitions
    assert row["predicted_us"] == pytest.approx(cost.us_per_token * p.gpu_loads(counts).max(axis=1).sum(), rel=1e-9)

"""The placement family: one registry, one protocol, every method a valid placement; the MILP method never worse
than the baseline it starts from."""

from pathlib import Path

import numpy as np
import pytest

from moesim.errors import PlacementError
from moesim.placement import PlacementMethod
from moesim.specs import load_cluster, load_model
from moesim.traces.formats import load_trace
from tuner.placers import BASELINES, REGISTRY, Budget, candidates, get_placer, place
from tuner.placers.ilp import NETWORK_REPLICAS, REFINE_SHARE, solve

TRACE = Path(__file__).resolve().parents[2] / "profiles" / "traces" / "olmoe_c4.npz"


@pytest.fixture(scope="module")
def olmoe():
    model, cluster = load_model("olmoe-1b-7b"), load_cluster("h100-2x8-ib400")
    trace = load_trace(TRACE)
    counts = trace.counts.astype(np.float64)
    return model, cluster, trace, counts


def test_registry_covers_every_method_and_parses_spellings() -> None:
    assert set(REGISTRY) == set(PlacementMethod)
    assert get_placer("round_robin") is get_placer("round-robin") is get_placer(PlacementMethod.ROUND_ROBIN)
    assert PlacementMethod.parse(" EPLB_Global ") is PlacementMethod.EPLB_GLOBAL
    with pytest.raises(PlacementError, match=r"^scenario: placement: unknown placement method 'greedy'"):
        PlacementMethod.parse("greedy", "scenario", "placement")


def test_registry_entries_say_what_callers_need() -> None:
    """Callers look a method up instead of testing its name: replicas, baseline, the MILP."""
    from tuner.placers import WITHOUT_REPLICAS, get_method

    assert WITHOUT_REPLICAS == (PlacementMethod.CONTIGUOUS, PlacementMethod.ROUND_ROBIN)
    assert BASELINES == (
        PlacementMethod.CONTIGUOUS,
        PlacementMethod.ROUND_ROBIN,
        PlacementMethod.EPLB_HIERARCHICAL,
        PlacementMethod.EPLB_GLOBAL,
    )
    assert [m for m, spec in REGISTRY.items() if spec.milp] == [PlacementMethod.ILP]
    assert get_method("node_spread").nearest_replica_only and get_method("eplb-hierarchical").optional
    assert get_method("ilp").place is get_placer("ilp")
    with pytest.raises(PlacementError, match=r"^scenario: placement: unknown placement method 'greedy'"):
        get_method("greedy", "scenario", "placement")


@pytest.mark.parametrize("method", [m for m in PlacementMethod if m != PlacementMethod.EPLB_HIERARCHICAL])
def test_every_method_places_validly(olmoe, method) -> None:
    model, cluster, trace, counts = olmoe
    reps = 0 if method in (PlacementMethod.CONTIGUOUS, PlacementMethod.ROUND_ROBIN) else 16
    p = place(method, counts, None, model, cluster, reps, "sglang-static", Budget(time_limit_s=4), layers=trace.layers)
    p.validate()
    assert p.num_gpus == 16 and p.num_layers == len(trace.layers)
    assert p.slots_per_gpu == (64 + reps) // 16
    if method == PlacementMethod.EPLB:
        assert p.meta["method"] == "eplb-global"  # OLMoE has one expert group: nothing to spread over 2 nodes
    if method == PlacementMethod.ILP:
        # under SGLang's rule the warm start is node-spread, made for it, with
        # EPLB's replica counts or those of the joint load-and-network bound, whichever the objective prefers
        assert p.meta["warm_start"] in ("node-spread", NETWORK_REPLICAS)
        assert set(candidates("sglang-static", 2)) == {*BASELINES, PlacementMethod.NODE_SPREAD}
        assert candidates("sglang-static", 1) == candidates("vllm", 2) == BASELINES
        assert p.meta["layers"] == [int(x) for x in trace.layers]


def test_methods_without_replicas_refuse_them(olmoe) -> None:
    model, cluster, trace, counts = olmoe
    for method in ("contiguous", "round-robin"):
        with pytest.raises(PlacementError, match="redundant_experts: .* has no replicas"):
            place(method, counts, None, model, cluster, 16)


def test_round_robin_needs_divisible_experts_contiguous_does_not(olmoe) -> None:
    model, _, trace, counts = olmoe
    seven = _gpus(7)  # 64 experts do not divide over 7 GPUs
    with pytest.raises(PlacementError, match="not divisible"):
        place("round-robin", counts, None, model, seven, 0)
    p = place("contiguous", counts, None, model, seven, 0)
    p.validate()
    assert p.slots_per_gpu == 10 and p.meta["method"] == "contiguous-uneven"


def _gpus(n: int):
    """A one-node cluster of n H100s (a cluster file the tests can build without shipping one)."""
    import dataclasses

    base = load_cluster("dgx-h100")
    return dataclasses.replace(base, levels=(dataclasses.replace(base.levels[0], size=n),) + base.levels[1:])


def test_eplb_hierarchical_refuses_where_it_does_not_apply(olmoe) -> None:
    model, cluster, trace, counts = olmoe
    for where in (load_cluster("dgx-h100"), cluster):  # one node; OLMoE's single group on two nodes
        with pytest.raises(PlacementError, match="eplb-hierarchical needs more than one node"):
            place("eplb-hierarchical", counts, None, model, where, 16)
        assert place("eplb", counts, None, model, where, 16).meta["method"] == "eplb-global"


def test_eplb_as_sglang_calls_it_is_hierarchical_for_deepseek_on_nodes() -> None:
    model, cluster = load_model("deepseek-v3"), load_cluster("h100-8x8-ib400")
    counts = np.random.default_rng(0).gamma(0.5, size=(3, 256)) * 1e3
    auto = place("eplb", counts, None, model, cluster, 64, layers=model.moe_layers[:3])
    hier = place("eplb-hierarchical", counts, None, model, cluster, 64, layers=model.moe_layers[:3])
    glob = place("eplb-global", counts, None, model, cluster, 64, layers=model.moe_layers[:3])
    assert auto.meta["method"] == hier.meta["method"] == "eplb-hierarchical" and glob.meta["method"] == "eplb-global"
    assert np.array_equal(auto.phy2log, hier.phy2log) and not np.array_equal(auto.phy2log, glob.phy2log)
    for p in (auto, glob):
        p.validate()
        assert p.slots_per_gpu == 5


def test_ilp_method_never_worse_than_its_warm_start(olmoe) -> None:
    from tuner.ilp import predicted_terms

    model, cluster, trace, counts = olmoe
    scale = 4096 * 16 * model.top_k / counts.sum(axis=1)
    c = counts * scale[:, None]
    tr = trace.transitions * scale[:-1, None, None]
    budget = Budget(time_limit_s=10)  # a loaded 2-core machine needs the margin
    cands = {
        "eplb-global": place("eplb-global", c, tr, model, cluster, 16, "sglang-static", budget, layers=trace.layers)
    }
    out = solve(c, tr, model, cluster, 16, "sglang-static", budget, cands, layers=trace.layers)
    assert out.warm_name in cands and out.refine_s == pytest.approx(REFINE_SHARE * 10)

    def objective(p):  # the MILP's own: even replica shares; under dependency "home" no transitions priced
        return predicted_terms(p, c, None, 8, out.cost, network=True)["objective_us"]

    assert objective(out.result.placement) <= objective(cands[out.warm_name]) * (1 + 1e-9)


def test_ilp_method_without_a_matching_baseline_is_an_error(olmoe) -> None:
    model, cluster, trace, counts = olmoe
    only_plain = {"contiguous": place("contiguous", counts, None, model, cluster, 0)}
    with pytest.raises(PlacementError, match="no baseline with 5 slots per GPU"):
        solve(counts, None, model, cluster, 16, "placement", Budget(), only_plain, layers=trace.layers)


@pytest.mark.parametrize(
    "field,value",
    [
        ("time_limit_s", 0),
        ("time_limit_s", float("inf")),
        ("tokens_per_gpu", 0),
        ("sweeps", 1.5),
        ("amortise_steps", True),
    ],
)
def test_budget_validates(field, value) -> None:
    with pytest.raises(PlacementError, match=f"placement: {field}: must be"):
        Budget(**{field: value})

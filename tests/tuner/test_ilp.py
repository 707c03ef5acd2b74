"""The placement MILP on tiny instances (each solve well under 2 s)."""

import math
from pathlib import Path

import numpy as np
import pytest

from tuner.eplb import eplb_placement
from tuner.ilp import CostModel, predicted_terms, solve_ilp
from tuner.ilp.backends.cbc import log_bound as _cbc_bound

COST = CostModel(us_per_token=0.02, us_per_gpu_token=0.002, us_per_node_token=0.01, bytes_per_token=8192.0)


def _instance(seed: int = 0, L: int = 3, E: int = 16, affinity: bool = True):
    rng = np.random.default_rng(seed)
    counts = (rng.zipf(1.6, (L, E)).clip(max=60) * 100).astype(float)
    trans = []
    for l in range(L - 1):
        # strong affinity: expert i in layer l mostly goes to expert (i * 5) % E in layer l+1
        T = np.outer(counts[l], counts[l + 1]) / counts[l + 1].sum()
        if affinity:
            T = 0.2 * T
            T[np.arange(E), (np.arange(E) * 5) % E] += 0.8 * counts[l]
        trans.append(T)
    return counts, np.stack(trans)


@pytest.mark.parametrize("solver", ["cbc", "highs"])
def test_ilp_balances_no_worse_than_eplb_and_cuts_traffic(solver) -> None:
    counts, T = _instance()
    warm = eplb_placement(counts, 4, 4)
    res = solve_ilp(
        counts,
        T,
        num_gpus=4,
        gpus_per_node=2,
        redundant_experts=4,
        cost=COST,
        warm_start=warm,
        solver=solver,
        time_limit_s=10,
    )
    res.placement.validate()
    ilp_lb = res.placement.gpu_loads(counts)
    eplb_lb = warm.gpu_loads(counts)
    assert (ilp_lb.max(1) / ilp_lb.mean(1)).max() <= (eplb_lb.max(1) / eplb_lb.mean(1)).max() + 1e-6
    before = predicted_terms(warm, counts, T, 2, COST)
    after = predicted_terms(res.placement, counts, T, 2, COST)
    assert after["objective_us"] < before["objective_us"]
    assert after["cross_node_tokens"] < 0.8 * before["cross_node_tokens"]
    assert res.status in ("optimal", "time-limit") and 0.0 <= res.gap <= 0.05
    assert math.isclose(res.objective_us, after["objective_us"])


def test_even_split_keeps_replica_counts_and_even_shares() -> None:
    counts, T = _instance(1)
    warm = eplb_placement(counts, 4, 4)
    res = solve_ilp(counts, T, 4, 2, 4, COST, warm_start=warm, split="even", time_limit_s=5)
    p = res.placement
    np.testing.assert_array_equal(p.replica_counts(), warm.replica_counts())
    np.testing.assert_allclose(p.shares, 1.0 / p.replica_counts()[np.arange(3)[:, None], p.phy2log])


def test_hierarchical_two_stage_is_valid_and_balanced() -> None:
    counts, T = _instance(2, E=16)
    warm = eplb_placement(counts, 4, 4, num_groups=1)
    res = solve_ilp(counts, T, 4, 2, 4, COST, warm_start=warm, hierarchical=True, time_limit_s=10, split="continuous")
    assert res.hierarchical and {s.stage for s in res.subproblems} == {"nodes", "gpus[0]", "gpus[1]"}
    res.placement.validate()
    lb = res.placement.gpu_loads(counts)
    assert (lb.max(1) / lb.mean(1)).max() < 1.05
    assert (
        predicted_terms(res.placement, counts, T, 2, COST)["objective_us"]
        <= predicted_terms(warm, counts, T, 2, COST)["objective_us"] + 1e-6
    )


def test_move_cost_keeps_current_placement() -> None:
    counts, T = _instance(3)
    warm = eplb_placement(counts, 4, 4)
    heavy = CostModel(0.02, 0.002, 0.01, us_per_moved_replica=1e6, bytes_per_token=8192.0)
    res = solve_ilp(counts, T, 4, 2, 4, heavy, warm_start=warm, current=warm, time_limit_s=5)
    terms = predicted_terms(res.placement, counts, T, 2, heavy, current=warm)
    assert terms["moved_replicas"] == 0  # moving any replica costs more than anything it could save


def test_time_limit_keeps_a_valid_plan() -> None:
    counts, T = _instance(4)
    warm = eplb_placement(counts, 4, 4)
    res = solve_ilp(counts, T, 4, 2, 4, COST, warm_start=warm, time_limit_s=0.1)
    assert res.status == "warm-start"  # nothing solved in 0.1 s, the warm start comes back whole
    np.testing.assert_array_equal(res.placement.phy2log, warm.phy2log)


def test_a_cbc_fault_keeps_the_warm_start(monkeypatch) -> None:
    """CBC dying (PuLP's PulpSolverError) is no incumbent for that subproblem, not a crash of the plan."""
    import pulp

    def crash(self, *args, **kwargs):
        raise pulp.PulpSolverError("Pulp: Error while trying to execute cbc")

    monkeypatch.setattr(pulp.PULP_CBC_CMD, "actualSolve", crash)
    counts, T = _instance(4)
    warm = eplb_placement(counts, 4, 4)
    res = solve_ilp(counts, T, 4, 2, 4, COST, warm_start=warm, time_limit_s=3, cluster=False)
    assert res.status == "warm-start" and {s.status for s in res.subproblems} == {"fault"}
    np.testing.assert_array_equal(res.placement.phy2log, warm.phy2log)


def test_cbc_bound_parsing() -> None:
    log = (
        "Continuous objective value is 54.25 - 0.00 seconds\n"
        "Cbc0010I After 100 nodes, 3 on tree, 60 best solution, best possible 55.5 (0.1 seconds)\n"
        "Result - Stopped on time limit\n\nObjective value:                60.00000000\n"
        "Lower bound:                    56.000\n"
    )
    assert _cbc_bound(log) == 56.0
    assert _cbc_bound("Continuous objective value is 54.25 - 0.00 seconds\n") == 54.25


def test_bad_solver() -> None:
    from moesim.errors import SpecError

    counts, T = _instance()
    with pytest.raises(SpecError, match="solver"):
        solve_ilp(counts, T, 4, 2, 4, COST, warm_start=eplb_placement(counts, 4, 4), solver="gurobi")


def test_solver_choices_are_the_backend_registry() -> None:
    """Every backend solves the same subproblem to the same optimum; the choices are the registry's keys."""
    from tuner.ilp import BACKENDS, SOLVERS, Subproblem, solve_sub

    assert SOLVERS == tuple(BACKENDS) == ("cbc", "highs")
    w = np.array([8.0, 6.0, 5.0, 3.0, 2.0, 2.0])  # 6 experts, one replica each, into 3 bins of 2 slots
    sub = Subproblem(
        w=w,
        slots=np.full(3, 2),
        max_per_bin=1,
        counts=np.ones(6, dtype=np.int64),
        benefit=np.zeros((6, 3)),
        ycost=np.zeros((6, 3)),
        c_tok=1.0,
        const=0.0,
        blocks=[np.arange(3)],
        allowed=np.ones((6, 3), bool),
    )
    for solver in SOLVERS:
        y, x, status, objective, bound = solve_sub(sub, solver, 10.0, 0.0, 1)
        assert status == "optimal" and objective == pytest.approx(10.0) and bound <= objective + 1e-9
        assert np.array_equal(y.sum(axis=0), [2, 2, 2]) and np.array_equal(y.sum(axis=1), np.ones(6))
        assert float((w @ x).max()) == pytest.approx(10.0)  # the best pairing: {8, 2}, {6, 3}, {5, 2}


def test_packing_bound_is_valid_and_tight() -> None:
    from itertools import permutations

    from tuner.ilp import packing_bound

    w = np.array([9.0, 7.0, 5.0, 4.0, 2.0, 1.0])  # 3 bins x 2 slots
    best = min(max(a + b for a, b in zip(p[::2], p[1::2])) for p in permutations(w))
    assert packing_bound(w, 3, 2) <= best + 1e-12
    assert packing_bound(w, 3, 2) > w.sum() / 3  # stronger than the mean (7.0 < bound)
    assert packing_bound(np.array([10.0, 1.0, 1.0, 1.0]), 2, 2) == 11.0  # heaviest + lightest other


def test_place_entry_point_on_real_trace() -> None:
    from moesim.specs import load_cluster, load_model
    from moesim.traces.formats import load_trace
    from tuner.plan import place

    model, cluster = load_model("olmoe-1b-7b"), load_cluster("dgx-h100")
    trace = load_trace(Path(__file__).resolve().parents[2] / "profiles" / "traces" / "olmoe_c4.npz")
    eplb = place("eplb", model, cluster, trace, redundant_experts=8)
    ilp = place("ilp", model, cluster, trace, redundant_experts=8, time_limit_s=3)
    for p in (eplb, ilp):
        p.validate()
        assert p.slots_per_gpu == 9
    lb_e, lb_i = eplb.gpu_loads(trace.counts), ilp.gpu_loads(trace.counts)
    assert (lb_i.max(1) / lb_i.mean(1)).max() <= (lb_e.max(1) / lb_e.mean(1)).max() + 1e-9
    assert ilp.meta["layers"] == [0, 7, 15]
    assert place("round_robin", model, cluster, trace).phy2log[0, :8].tolist() == [0, 8, 16, 24, 32, 40, 48, 56]

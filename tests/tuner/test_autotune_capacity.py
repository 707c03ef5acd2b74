"""Per-layer capacity search: Pareto front, --max-drop pick, and the simulator objective on a real trace."""

from __future__ import annotations

import pytest

from moesim.errors import InfeasibleError, SpecError
from tuner.autotune_capacity import (
    CapacityPoint,
    LayerSetting,
    SimulatorObjective,
    autotune_capacity,
    pareto_front,
    pick_under,
)


def _pt(lat, drop, n=0):
    return CapacityPoint((LayerSetting(0, None),), lat, drop, n)


def test_pareto_front_keeps_only_non_dominated_points():
    pts = [_pt(10, 0.0, 0), _pt(8, 0.05, 1), _pt(9, 0.06, 2), _pt(7, 0.2, 3), _pt(8, 0.05, 4), _pt(12, 0.0, 5)]
    front = pareto_front(pts)
    assert [(p.step_latency_us, p.dropped_fraction) for p in front] == [(7, 0.2), (8, 0.05), (10, 0.0)]


def test_pick_under_max_drop():
    front = pareto_front([_pt(10, 0.0), _pt(8, 0.05), _pt(7, 0.2)])
    assert pick_under(front, 0.1).step_latency_us == 8
    assert pick_under(front, 0.0).step_latency_us == 10
    with pytest.raises(InfeasibleError, match="--max-drop"):
        pick_under([_pt(7, 0.2)], 0.01)


def test_nsga2_on_an_analytic_objective_finds_the_tradeoff():
    # Each capped layer saves (4 - f) us and drops (4 - f)/30 of its assignments; dropless saves nothing.
    def objective(settings):
        lat = 100.0 - sum(0.0 if s.factor is None else 4.0 - s.factor for s in settings)
        drop = sum(0.0 if s.factor is None else (4.0 - s.factor) / 30 for s in settings) / len(settings)
        return lat, drop

    res = autotune_capacity(objective, [0, 7, 15], trials=120, population=20, seed=0, max_drop=0.05)
    assert res.dropless.dropped_fraction == 0.0 and res.dropless.step_latency_us == 100.0
    assert res.front[-1].dropped_fraction == 0.0
    assert res.pick is not None and res.pick.dropped_fraction <= 0.05
    # Drop budget 0.05 buys at most 0.05 * 30 * 3 = 4.5 us; NSGA-II gets close.
    assert 100.0 - res.pick.step_latency_us > 3.0
    assert {"pareto_front", "pick", "dropless", "meta"} <= set(res.to_dict())


def test_bad_arguments():
    with pytest.raises(SpecError):
        autotune_capacity(lambda s: (1.0, 0.0), [0], trials=0)
    with pytest.raises(SpecError, match="--max-drop"):
        autotune_capacity(lambda s: (1.0, 0.0), [0], trials=2, max_drop=2.0)


def test_simulator_objective_on_the_olmoe_trace():
    from moesim.simulate import simulate
    from moesim.specs import load_cluster, load_model
    from moesim.trace import load_trace

    model, cluster = load_model("olmoe-1b-7b"), load_cluster("dgx-h100")
    trace = load_trace("profiles/traces/olmoe_c4.npz")
    obj = SimulatorObjective(model, cluster, trace)
    # All layers dropless reproduces the simulator's own step exactly.
    assert obj.dropless_step_us == pytest.approx(simulate(model, cluster, trace).step_latency_us, rel=1e-9)
    tight = [LayerSetting(lid, 1.0, "probs") for lid in trace.layers]
    lat, drop = obj(tight)
    assert lat < obj.dropless_step_us and drop > 0.0
    # Uniform factor 1.0 everywhere equals the simulator run with that option.
    from dataclasses import replace

    from moesim.simulate import SimOptions

    ref = simulate(model, cluster, trace, options=replace(SimOptions(), capacity_factor=1.0)).to_dict()
    assert lat == pytest.approx(ref["step_latency_us"], rel=1e-9)
    assert drop == pytest.approx(ref["dropped_fraction"], rel=1e-9)
    res = autotune_capacity(obj, trace.layers, trials=60, population=12, seed=1, max_drop=0.01)
    assert res.pick.dropped_fraction <= 0.01 and res.pick.step_latency_us <= res.dropless.step_latency_us

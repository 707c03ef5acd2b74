"""Per-layer capacity search: Pareto front, --max-drop pick, and the simulator objective on a real trace."""

from __future__ import annotations

import pytest

from moesim.errors import InfeasibleError, SpecError
from tuner.autotune.capacity.objective import CapacityPoint, LayerSetting, SimulatorObjective
from tuner.autotune.capacity.search import autotune_capacity, pareto_front, pick_under
from tuner.autotune.capacity.space import search_space


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
    from moesim.traces.formats import load_trace

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

    from moesim.options import SimOptions

    ref = simulate(model, cluster, trace, options=replace(SimOptions(), capacity_factor=1.0)).to_dict()
    assert lat == pytest.approx(ref["step_latency_us"], rel=1e-9)
    assert drop == pytest.approx(ref["dropped_fraction"], rel=1e-9)
    res = autotune_capacity(obj, trace.layers, trials=60, population=12, seed=1, max_drop=0.01)
    assert res.pick.dropped_fraction <= 0.01 and res.pick.step_latency_us <= res.dropless.step_latency_us


def test_simulator_objective_equals_the_per_layer_simulator_exactly():
    """The objective's one call per trial gives, bit for bit, the step assembled from simulate_layer layer by layer."""
    from dataclasses import replace

    import numpy as np

    from moesim.options import SimOptions
    from moesim.simulate import default_placement, simulate_layer, step_from_layers
    from moesim.specs import load_cluster, load_model
    from moesim.traces.formats import load_trace

    model, cluster = load_model("olmoe-1b-7b"), load_cluster("dgx-h100")
    trace = load_trace("profiles/traces/olmoe_c4.npz")
    opts = SimOptions(tokens_per_gpu=2048)
    obj = SimulatorObjective(model, cluster, trace, base_options=opts)
    pl = default_placement(model.num_experts, cluster.num_gpus, len(trace.layers))
    rng = np.random.default_rng(0)
    for _ in range(4):  # later rounds mix cached layers with new ones
        settings = [
            LayerSetting(
                lid,
                None if rng.random() < 0.25 else float(rng.choice([1.0, 1.5, rng.uniform(1, 4)])),
                str(rng.choice(["probs", "position", "reroute"])),
            )
            for lid in trace.layers
        ]
        ref_layers = []
        for i, s in enumerate(settings):
            factor = None if s.factor is None else round(s.factor, 4)
            row_opts = replace(
                opts, capacity_factor=factor, drop_policy=s.policy if factor is not None else opts.drop_policy
            )
            ref_layers.append(
                simulate_layer(model, cluster, trace.counts[i], (pl.phy2log[i], pl.shares[i]), row_opts, s.layer)
            )
        ref_step = step_from_layers(model, cluster, ref_layers, opts).step_latency_us
        ref_drop = float(np.mean([r.dropped_fraction for r in ref_layers]))
        assert obj(settings) == (ref_step, ref_drop)
        assert [obj.layer_result(i, s.factor, s.policy) for i, s in enumerate(settings)] == obj.layer_results(settings)


def _skewed(settings):
    lat = 100.0 - sum(0.0 if s.factor is None else (4.0 - s.factor) * (1 + 0.1 * i) for i, s in enumerate(settings))
    drop = sum(0.0 if s.factor is None else (4.0 - s.factor) / 30 for s in settings) / len(settings)
    return lat, drop


def test_fixed_space_sampler_samples_exactly_as_nsga2(monkeypatch):
    """The default sampler (relative space given) and plain NSGAIISampler pick the same trials."""
    import optuna

    from tuner.autotune.capacity import search as mod
    from tuner.autotune.capacity.space import suggest

    objective = _skewed
    layers = [0, 7, 15, 20]
    fast = autotune_capacity(objective, layers, trials=70, population=10, seed=3)
    monkeypatch.setattr(
        mod,
        "fixed_space_nsga2",
        lambda population, seed, n: optuna.samplers.NSGAIISampler(population_size=population, seed=seed),
    )
    plain = autotune_capacity(objective, layers, trials=70, population=10, seed=3)
    assert fast.points == plain.points
    assert fast.front == plain.front
    # the space it gives is the intersection Optuna computes from the trials
    study = optuna.create_study(directions=["minimize", "minimize"])
    study.optimize(lambda t: (float(len(suggest(t, 4))), 0.0), n_trials=2)
    assert search_space(4) == optuna.search_space.intersection_search_space(study.trials)


# ----------------------------------------------------------------------------------------------------------
# Stored studies: write-through, resume, workers, stale RUNNING trials
# ----------------------------------------------------------------------------------------------------------
LAYERS = [0, 7, 15, 20]


def _stored(url, name="cap"):
    import optuna

    from tuner.autotune.storage import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(url))


def _states(url, name="cap"):
    from collections import Counter

    return Counter(t.state.name for t in _stored(url, name).get_trials(deepcopy=False))


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_fresh_stored_study_gives_the_in_memory_result_and_holds_its_trials(tmp_path, kind):
    url = f"journal://{tmp_path / 'c.log'}" if kind == "journal" else f"sqlite:///{tmp_path / 'c.db'}"
    mem = autotune_capacity(_skewed, LAYERS, trials=50, population=10, seed=3)
    st = autotune_capacity(_skewed, LAYERS, trials=50, population=10, seed=3, storage=url, study_name="cap")
    assert st.points == mem.points and st.front == mem.front and st.to_dict() == mem.to_dict()
    assert _states(url) == {"COMPLETE": 50}
    stored = _stored(url).get_trials(deepcopy=False)
    assert [t.number for t in stored] == [p.trial for p in st.points]
    # a rerun with the same storage runs nothing and reports the same trials
    calls = []
    again = autotune_capacity(
        _skewed, LAYERS, trials=50, population=10, seed=3, storage=url, study_name="cap", on_trial=calls.append
    )
    assert calls == [] and again.to_dict() == st.to_dict()


def test_a_rerun_continues_to_the_requested_total(tmp_path):
    url = f"journal://{tmp_path / 'c.log'}"
    first = autotune_capacity(_skewed, LAYERS, trials=30, population=10, seed=3, storage=url, study_name="cap")
    calls = []
    more = autotune_capacity(
        _skewed, LAYERS, trials=70, population=10, seed=3, storage=url, study_name="cap", on_trial=calls.append
    )
    assert len(calls) == 40 and len(more.points) == 70 and _states(url) == {"COMPLETE": 70}
    assert more.points[:30] == first.points
    assert more.dropless.dropped_fraction == 0.0


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_dead_workers_running_trial_is_failed_and_not_counted(tmp_path):
    """The survivor finished 39 of 40 when a killed worker's RUNNING trial stayed counted; now it is FAIL+stale."""
    import socket

    import optuna

    url = f"journal://{tmp_path / 'c.log'}"
    autotune_capacity(_skewed, LAYERS, trials=20, population=10, seed=3, storage=url, study_name="cap")
    stored = _stored(url)
    orphan = stored.ask()  # what a SIGKILL mid-trial leaves: RUNNING, owned by a pid that is gone
    orphan.set_user_attr("owner", f"{socket.gethostname()}:{_dead_pid()}")
    res = autotune_capacity(_skewed, LAYERS, trials=40, population=10, seed=3, storage=url, study_name="cap")
    assert len(res.points) == 40 and _states(url) == {"COMPLETE": 40, "FAIL": 1}
    (failed,) = _stored(url).get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert failed.number == orphan.number and failed.user_attrs["stale"] is True


_WORKER = """
import json, sys
from tests.tuner.autotune.test_capacity import LAYERS, _skewed
from tuner.autotune.capacity.search import autotune_capacity
res = autotune_capacity(_skewed, LAYERS, trials=int(sys.argv[2]), population=10, seed=None, storage=sys.argv[1],
                        study_name="cap", on_trial=lambda n: print("trial", flush=True))
print(json.dumps({"trials": len(res.points)}))
"""


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_workers_on_one_storage_finish_exactly_the_total_and_report_it(tmp_path, kind):
    """Every worker's result holds all the study's trials (one reported 29 where the study had 30)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    url = f"journal://{tmp_path / 'c.log'}" if kind == "journal" else f"sqlite:///{tmp_path / 'c.db'}"
    root = Path(__file__).resolve().parents[3]
    env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, url, "60"], stdout=subprocess.PIPE, text=True, env=env, cwd=root
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=180)[0].splitlines() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert [json.loads(o[-1])["trials"] for o in outs] == [60, 60, 60]
    assert sum(o.count("trial") for o in outs) == 60  # each stored trial run by one worker
    assert _states(url) == {"COMPLETE": 60}


def test_a_stored_study_needs_a_name_for_an_objective_without_fingerprint(tmp_path):
    with pytest.raises(SpecError, match="study_name"):
        autotune_capacity(_skewed, LAYERS, trials=2, storage=f"journal://{tmp_path / 'c.log'}")


def test_simulator_objective_names_its_study_by_fingerprint():
    from moesim.options import SimOptions
    from moesim.specs import load_cluster, load_model
    from moesim.traces.formats import load_trace
    from tuner.autotune.capacity.search import capacity_study_name

    model, cluster = load_model("olmoe-1b-7b"), load_cluster("dgx-h100")
    trace = load_trace("profiles/traces/olmoe_c4.npz")
    a = SimulatorObjective(model, cluster, trace)
    b = SimulatorObjective(model, cluster, trace)
    c = SimulatorObjective(model, cluster, trace, base_options=SimOptions(tokens_per_gpu=2048))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    name = capacity_study_name(a, len(trace.layers), 40, 0)
    assert name.startswith(f"moesim-capacity:layers={len(trace.layers)},population=40,seed=0,objective=")

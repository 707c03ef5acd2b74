"""Multi-objective tuning of per-layer expert capacity: step latency against dropped assignments.

A capacity factor c caps every expert of a layer at ``ceil(T * k / E * c)`` assignments (Megatron's definition,
``moesim.capacity``). Lower c trims the slowest (most loaded) expert, so the layer gets faster, and drops the
overflow, which costs quality. Which layers can afford a low c depends on their routing skew, so the factor is
chosen per MoE layer, together with the drop policy.

Search space, per MoE layer l of the trace:
    dropless_l  in {False, True}          (True: no capacity, nothing dropped; factor/policy unused)
    factor_l    in [1.0, 4.0] continuous  (Megatron's moe_capacity_factor; below 1.0 even a perfectly balanced
                                           layer drops; 4.0, four times the mean load, is an assumed upper end)
    policy_l    in {probs, position, reroute}  (moesim.capacity.DROP_POLICIES)
Objectives (both minimised), evaluated by the moesim simulator on the trace:
    step_latency_us  = the simulator's step with each layer under its own (c_l, p_l)
    dropped_fraction = (1 / L) * sum_l d_l(c_l, p_l)        (share of all T * k assignments dropped)
Each layer is simulated alone (``moesim.simulate.simulate_layer``) and the step is assembled from the layers by
``moesim.simulate.step_from_layers`` (see :class:`SimulatorObjective`). Every layer has the same T * k
assignments, so the unweighted mean is the step's dropped share.

Sampler: Optuna's NSGA-II (``NSGAIISampler``); the all-dropless point is enqueued first, so the front always
holds a zero-drop point and ``max_drop`` always has an answer. Runs on a CPU in seconds: each (layer, factor,
policy) is simulated once and cached.

Storage (``storage=URL``, any ``tuner.storage`` URL; the CLI's default is a journal file): the sampler always
works on an in-memory study, and every trial is written through to the stored study in two operations (created
RUNNING with all its parameters and owner ``host:pid``, then COMPLETE with its values). Optuna's own storage
path writes each of the 3 L parameters separately: 200 trials of DeepSeek-V3's 58 layers took 19 s on a journal
file against 1.3 s in memory. A run first copies the stored COMPLETE trials (earlier runs', other workers') into
its study and keeps doing so before every trial, so a rerun resumes and workers share one population. ``trials``
is the stored study's total, exact across workers and restarts: counting and claiming happen under
``tuner.storage.budget_lock``, and a RUNNING trial whose owner died (pid gone on this host, or older than
``stale_after_s``) is marked FAIL with user attr ``stale`` and not counted. The result is read from the stored
study once no trial is RUNNING, so every worker reports the same trials, all of the stored COMPLETE ones.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moesim.capacity import DROP_POLICIES as POLICIES
from moesim.errors import InfeasibleError, SpecError

FACTOR_RANGE: tuple[float, float] = (1.0, 4.0)
# A stored trial keeps its parameters as this one user attr (a flat JSON dict), not as Optuna parameters: a journal
# line per Optuna parameter set, with its distribution, cost 1.7 ms a trial on 58 layers, a quarter of the search.
PARAMS_ATTR = "params"


@dataclass(frozen=True)
class LayerSetting:
    """Capacity of one MoE layer: ``factor`` None means dropless."""

    layer: int
    factor: float | None
    policy: str = "probs"

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "capacity_factor": self.factor,
            "drop_policy": self.policy if self.factor is not None else None,
        }


@dataclass(frozen=True)
class CapacityPoint:
    """One evaluated per-layer setting and its two objectives."""

    settings: tuple[LayerSetting, ...]
    step_latency_us: float
    dropped_fraction: float
    trial: int = -1

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "step_latency_us": self.step_latency_us,
            "dropped_fraction": self.dropped_fraction,
            "layers": [s.to_dict() for s in self.settings],
        }


# Layer evaluator: (layer position in the trace, factor or None, policy) -> (latency_us, dropped_fraction)
LayerEval = Callable[[int, float | None, str], tuple[float, float]]


class SimulatorObjective:
    """Both objectives of a per-layer setting, from the moesim simulator.

    Each layer is simulated with its own capacity options (``moesim.simulate.simulate_layers``: the layers of a
    trial not yet seen go through one vectorised call, each row bit for bit what ``simulate_layer`` gives for
    that layer's per-expert counts [E] and placement row), and the step is assembled by
    ``moesim.simulate.step_from_layers`` (attention, dense layers, LM head, and unsimulated MoE layers at the
    simulated mean), so the step latency is exactly the simulator's for that mix of settings. Layer results are
    cached per (layer, factor rounded to 1e-4, policy): NSGA-II revisits values and the simulator is
    deterministic.
    """

    def __init__(
        self,
        model: Any,
        cluster: Any,
        trace: Any,
        placement: Any = None,
        base_options: Any = None,
        calibration: Any = None,
    ):
        from moesim import simulate as sim

        self.calibration = calibration

        self.model, self.cluster, self.trace = model, cluster, trace
        self.base_options = base_options if base_options is not None else sim.SimOptions()
        self._sim = sim
        self.layers = tuple(int(x) for x in trace.layers)
        L = len(self.layers)
        if placement is None:
            placement = sim.default_placement(model.num_experts, cluster.num_gpus, L)
        self.placement = placement
        self._counts = np.asarray(trace.counts, dtype=np.float64)  # [L, E]
        self._phy2log = np.asarray(placement.phy2log)[:L]  # [L, P]
        self._shares = np.asarray(placement.shares)[:L]  # [L, P]
        self._cache: dict[tuple[int, float | None, str], Any] = {}
        dropless = [LayerSetting(layer=lid, factor=None) for lid in self.layers]
        self.dropless_step_us = self(dropless)[0]

    def fingerprint(self) -> str:
        """A digest of everything the objective's values depend on (specs, counts, placement, options,
        calibration): a stored study is only resumed by the same objective."""
        digest = hashlib.sha256()
        for part in (self.model, self.cluster, self.base_options, self.layers):
            digest.update(repr(part).encode())
        for arr in (self._counts, self._phy2log, self._shares):
            digest.update(np.ascontiguousarray(arr).tobytes())
        digest.update(repr(getattr(self.calibration, "describe", self.calibration)).encode())
        return digest.hexdigest()[:16]

    @staticmethod
    def _key(i: int, factor: float | None, policy: str) -> tuple[int, float | None, str]:
        return i, None if factor is None else round(float(factor), 4), policy if factor is not None else "-"

    def layer_results(self, settings: Sequence[LayerSetting]) -> list[Any]:
        """``LayerResult`` of the i-th recorded layer under ``settings[i]``; the uncached ones in one call."""
        keys = [self._key(i, s.factor, s.policy) for i, s in enumerate(settings)]
        miss = [i for i, key in enumerate(keys) if key not in self._cache]
        if miss:
            results = self._sim.simulate_layers(
                self.model,
                self.cluster,
                self._counts[miss],
                (self._phy2log[miss], self._shares[miss]),
                self.base_options,
                capacity_factors=[keys[i][1] for i in miss],
                drop_policies=[keys[i][2] if keys[i][1] is not None else self.base_options.drop_policy for i in miss],
                layers=[self.layers[i] for i in miss],
                calibration=self.calibration,
            )
            self._cache.update(zip((keys[i] for i in miss), results, strict=True))
        return [self._cache[key] for key in keys]

    def layer_result(self, i: int, factor: float | None, policy: str) -> Any:
        """``LayerResult`` of the i-th recorded layer under (factor, policy); factor None = dropless."""
        key = self._key(i, factor, policy)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._sim.simulate_layers(
                self.model,
                self.cluster,
                self._counts[i : i + 1],
                (self._phy2log[i : i + 1], self._shares[i : i + 1]),
                self.base_options,
                capacity_factors=[key[1]],
                drop_policies=[policy if factor is not None else self.base_options.drop_policy],
                layers=[self.layers[i]],
                calibration=self.calibration,
            )[0]
            self._cache[key] = hit
        return hit

    def __call__(self, settings: Sequence[LayerSetting]) -> tuple[float, float]:
        results = self.layer_results(settings)
        step = self._sim.step_from_layers(self.model, self.cluster, results, self.base_options, self.calibration)
        dropped = float(np.mean([r.dropped_fraction for r in results])) if results else 0.0
        return float(step.step_latency_us), dropped


def settings_from_params(params: dict[str, Any], num_layers: int, layer_ids: Sequence[int]) -> tuple[LayerSetting, ...]:
    """Decode a trial's parameters (``dropless_i``, ``factor_i``, ``policy_i`` for i < L) into settings."""
    out = []
    for i in range(num_layers):
        dropless = bool(params[f"dropless_{i}"])
        out.append(
            LayerSetting(
                layer=int(layer_ids[i]),
                factor=None if dropless else float(params[f"factor_{i}"]),
                policy=str(params[f"policy_{i}"]),
            )
        )
    return tuple(out)


def _suggest(trial: Any, num_layers: int) -> dict[str, Any]:
    # Every parameter is suggested in every trial (no conditional space), so NSGA-II's crossover sees all
    # of them; factor/policy of a dropless layer are carried but unused.
    params = {}
    for i in range(num_layers):
        params[f"dropless_{i}"] = trial.suggest_categorical(f"dropless_{i}", [False, True])
        params[f"factor_{i}"] = trial.suggest_float(f"factor_{i}", *FACTOR_RANGE)
        params[f"policy_{i}"] = trial.suggest_categorical(f"policy_{i}", list(POLICIES))
    return params


def search_space(num_layers: int) -> dict[str, Any]:
    """The distributions :func:`_suggest` draws from, by parameter name (sorted, as Optuna orders them)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    space: dict[str, Any] = {}
    for i in range(num_layers):
        space[f"dropless_{i}"] = CategoricalDistribution([False, True])
        space[f"factor_{i}"] = FloatDistribution(*FACTOR_RANGE)
        space[f"policy_{i}"] = CategoricalDistribution(list(POLICIES))
    return dict(sorted(space.items()))


def _fixed_space_nsga2(population: int, seed: int | None, num_layers: int) -> Any:
    """Optuna's ``NSGAIISampler`` with the relative search space given instead of recomputed per trial.

    NSGA-II's ``infer_relative_search_space`` intersects the completed trials' spaces and deep-copies the
    result (3 L distributions) for every trial: 0.3 s of 200 trials on 58 layers. In a study that only
    :func:`_suggest` fills (this run's trials, and those copied in from the stored study of the same name, which
    carry the same L), every trial suggests all of :func:`search_space` (no conditional parameters), so that
    intersection is the whole space once a trial has completed and empty before: the sampler returns exactly
    that, and samples exactly as ``NSGAIISampler`` does.
    """
    import optuna

    space = search_space(num_layers)

    class FixedSpaceNSGAIISampler(optuna.samplers.NSGAIISampler):
        _any_complete = False  # completed trials never leave COMPLETE: latch once seen

        def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
            if not self._any_complete:
                complete = (optuna.trial.TrialState.COMPLETE,)
                self._any_complete = bool(study.get_trials(deepcopy=False, states=complete))
            return dict(space) if self._any_complete else {}

    return FixedSpaceNSGAIISampler(population_size=population, seed=seed)


@dataclass
class CapacityResult:
    """All evaluated points, the Pareto front (sorted by latency) and the pick under ``max_drop``."""

    points: list[CapacityPoint]
    front: list[CapacityPoint]
    dropless: CapacityPoint
    pick: CapacityPoint | None = None
    max_drop: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "max_drop": self.max_drop,
            "pick": self.pick.to_dict() if self.pick else None,
            "dropless": self.dropless.to_dict(),
            "pareto_front": [p.to_dict() for p in self.front],
            "trials": len(self.points),
        }


def pareto_front(points: Sequence[CapacityPoint]) -> list[CapacityPoint]:
    """Non-dominated points on (latency, dropped), both minimised; sorted by latency, duplicates removed.

    A point is dominated when another is no worse in both objectives and better in one.
    """
    pts = sorted(points, key=lambda p: (p.step_latency_us, p.dropped_fraction))
    front: list[CapacityPoint] = []
    best_drop = math.inf
    for p in pts:
        if p.dropped_fraction < best_drop:
            front.append(p)
            best_drop = p.dropped_fraction
    return front


def pick_under(front: Sequence[CapacityPoint], max_drop: float) -> CapacityPoint:
    """The fastest point with ``dropped_fraction <= max_drop``; InfeasibleError when none qualifies."""
    ok = [p for p in front if p.dropped_fraction <= max_drop + 1e-12]
    if not ok:
        lowest = min((p.dropped_fraction for p in front), default=math.nan)
        raise InfeasibleError(
            f"autotune capacity: --max-drop {max_drop:g}: no point drops that little "
            f"(lowest on the front: {lowest:.4g})"
        )
    return min(ok, key=lambda p: (p.step_latency_us, p.dropped_fraction))


def capacity_study_name(objective: Any, num_layers: int, population: int, seed: int | None) -> str:
    """The stored study's name: ``moesim-capacity:layers=L,population=P,seed=S,objective=<digest>``.

    The digest is ``objective.fingerprint()`` (a :class:`SimulatorObjective`); SpecError for an objective
    without one (pass ``study_name``)."""
    fingerprint = getattr(objective, "fingerprint", None)
    if fingerprint is None:
        raise SpecError("autotune capacity: a stored study needs study_name for an objective without fingerprint()")
    return f"moesim-capacity:layers={num_layers},population={population},seed={seed},objective={fingerprint()}"


def autotune_capacity(
    objective: Callable[[Sequence[LayerSetting]], tuple[float, float]],
    layer_ids: Sequence[int],
    trials: int = 200,
    population: int = 40,
    seed: int | None = 0,
    max_drop: float | None = None,
    storage: Any = None,
    study_name: str | None = None,
    on_trial: Callable[[int], None] | None = None,
    stale_after_s: float = 300.0,
) -> CapacityResult:
    """Run NSGA-II for ``trials`` trials on (step latency, dropped fraction); return the front.

    ``objective(settings) -> (step_latency_us, dropped_fraction)``, e.g. a :class:`SimulatorObjective`.
    ``storage``: None (in memory, nothing kept), a ``tuner.storage`` URL, or an Optuna storage object (no budget
    lock then); see the module docstring. ``study_name`` defaults to :func:`capacity_study_name`.
    ``stale_after_s``: a RUNNING stored trial older than this is taken as dead (an assumption: one trial takes
    milliseconds to a second, so 5 minutes is far beyond any live one).
    """
    import optuna

    if trials < 1:
        raise SpecError(f"--trials: must be >= 1, got {trials}")
    if population < 2:
        raise SpecError(f"--population: must be >= 2, got {population}")
    if max_drop is not None and not 0 <= max_drop <= 1:
        raise SpecError(f"--max-drop: must be a fraction in [0, 1], got {max_drop}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    num_layers = len(layer_ids)
    # The sampler's study is always in memory and holds only trials over search_space(L) (this run's, and with a
    # storage the stored study's, which is named for the same objective and layers): the fixed space is valid.
    study = optuna.create_study(
        directions=["minimize", "minimize"], sampler=_fixed_space_nsga2(population, seed, num_layers)
    )
    stored = None
    if storage is not None:
        name = study_name or capacity_study_name(objective, num_layers, population, seed)
        stored = _StoredStudy(storage, name, num_layers, stale_after_s)
        stored.pull(study)  # resume: earlier runs' trials first, so the enqueues below skip what exists
    # Seed: all layers dropless (the zero-drop anchor) and all layers at factor 1.0 with probs (the fastest
    # Megatron-style setting), so both ends of the front exist from the first generation.
    anchor = {}
    tight = {}
    for i in range(num_layers):
        anchor.update({f"dropless_{i}": True, f"factor_{i}": 2.0, f"policy_{i}": "probs"})
        tight.update({f"dropless_{i}": False, f"factor_{i}": 1.0, f"policy_{i}": "probs"})
    study.enqueue_trial(anchor, skip_if_exists=True)
    study.enqueue_trial(tight, skip_if_exists=True)

    def evaluate(params: dict[str, Any]) -> tuple[float, float]:
        return objective(settings_from_params(params, num_layers, layer_ids))

    # deepcopy=False: ``study.trials`` deep-copies every trial's 3 L parameters (0.4 s of 200 trials x 58 layers);
    # the trials are only read here
    complete = (optuna.trial.TrialState.COMPLETE,)
    if stored is None:

        def run_trial(trial: Any) -> tuple[float, float]:
            latency, dropped = evaluate(_suggest(trial, num_layers))
            if on_trial is not None:
                on_trial(trial.number)
            return latency, dropped

        done = len(study.get_trials(deepcopy=False, states=complete))
        if trials > done:
            study.optimize(run_trial, n_trials=trials - done)
        finished = study.get_trials(deepcopy=False, states=complete)
    else:
        finished = stored.run(study, trials, num_layers, evaluate, on_trial)
    points = [
        CapacityPoint(
            settings_from_params(t.params, num_layers, layer_ids), float(t.values[0]), float(t.values[1]), t.number
        )
        for t in finished
    ]
    dropless = next((p for p in points if all(s.factor is None for s in p.settings)), None)
    if dropless is None:  # only with a stored study whose anchor trial some other run lost: evaluate it here
        settings = tuple(LayerSetting(layer=int(lid), factor=None) for lid in layer_ids)
        dropless = CapacityPoint(settings, *map(float, objective(settings)))
    front = pareto_front(points)
    result = CapacityResult(
        points=points,
        front=front,
        dropless=dropless,
        max_drop=max_drop,
        meta={"sampler": "NSGAIISampler", "population": population, "seed": seed, "layers": list(layer_ids)},
    )
    if max_drop is not None:
        result.pick = pick_under(front, max_drop)
    return result


class _StoredStudy:
    """The stored copy of a capacity study: trials written through in two operations each, shared by workers.

    ``storage``: a ``tuner.storage`` URL (opened here; counting and claiming under its budget lock) or an Optuna
    storage object (no lock: concurrent workers may then overshoot by workers - 1 trials).
    """

    def __init__(self, storage: Any, name: str, num_layers: int, stale_after_s: float) -> None:
        import optuna

        from tuner import storage as tstorage

        if isinstance(storage, str):
            self._storage = tstorage.open_storage(storage, fsync=False)
            self._lock: Callable[[], Any] = lambda: tstorage.budget_lock(storage, name)
        else:
            self._storage = storage
            self._lock = contextlib.nullcontext
        self._stale_after_s = stale_after_s
        self._space = search_space(num_layers)
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        self._seen: set[int] = set()  # stored trial ids already in the sampler's study (copied in, or ours)
        with self._lock():
            try:
                self.study = optuna.create_study(
                    storage=self._storage,
                    study_name=name,
                    directions=["minimize", "minimize"],
                    load_if_exists=True,
                )
            except Exception as exc:  # a storage that opened but cannot hold the study (read-only file, ...)
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                where = tstorage.redact(storage) if isinstance(storage, str) else type(storage).__name__
                raise SpecError(f"--storage: {where}: cannot create study {name}: {first}") from exc

    def pull(self, study: Any) -> None:
        """Copy stored COMPLETE trials the sampler's study does not hold yet (earlier runs', other workers')."""
        import optuna

        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if t._trial_id not in self._seen and PARAMS_ATTR in t.user_attrs:
                self._seen.add(t._trial_id)
                params = t.user_attrs[PARAMS_ATTR]
                space = {k: self._space[k] for k in params}
                study.add_trial(
                    optuna.trial.create_trial(
                        params=params, distributions=space, values=t.values, system_attrs=t.system_attrs
                    )
                )

    def finished(self, trials: Sequence[Any]) -> list[Any]:
        """The COMPLETE ones of stored ``trials``, each with its parameters (from user attr ``params``)."""
        import optuna

        out = []
        for t in trials:
            if t.state == optuna.trial.TrialState.COMPLETE and PARAMS_ATTR in t.user_attrs:
                t = copy.copy(t)
                t.params = t.user_attrs[PARAMS_ATTR]  # decoded by settings_from_params; distributions unused
                out.append(t)
        return out

    def run(
        self,
        study: Any,
        trials: int,
        num_layers: int,
        evaluate: Callable[[dict[str, Any]], tuple[float, float]],
        on_trial: Callable[[int], None] | None,
    ) -> list[Any]:
        """Run trials until the stored study holds ``trials`` COMPLETE ones and none RUNNING; return them."""
        import optuna
        from optuna.study._tell import _tell_with_warning

        from tuner.autotune_kernel import fail_stale_running

        state = optuna.trial.TrialState
        storage, study_id = self.study._storage, self.study._study_id
        while True:
            with self._lock():
                fail_stale_running(self.study, self._stale_after_s)
                self.pull(study)
                live = self.study.get_trials(deepcopy=False, states=(state.COMPLETE, state.RUNNING))
                claim = len(live) < trials
                if claim:
                    trial = study.ask()
                    params = _suggest(trial, num_layers)
                    template = optuna.trial.FrozenTrial(
                        number=0,
                        state=state.RUNNING,
                        value=None,
                        datetime_start=trial.datetime_start,
                        datetime_complete=None,
                        params={},
                        distributions={},
                        user_attrs={"owner": self._owner, PARAMS_ATTR: params},
                        system_attrs=study._storage.get_trial_system_attrs(trial._trial_id),
                        intermediate_values={},
                        trial_id=0,
                    )
                    stored_id = storage.create_new_trial(study_id, template_trial=template)
                    self._seen.add(stored_id)
            if not claim:
                if not any(t.state == state.RUNNING for t in live):
                    return self.finished(live)
                time.sleep(0.05)  # other workers' last trials: wait, so every worker reports the same study
                continue
            try:
                values = evaluate(params)
            except BaseException:  # Ctrl-C or an objective error: free the claimed slot at once
                storage.set_trial_state_values(stored_id, state.FAIL)
                raise
            # what study.optimize calls: study.tell would also deep-copy the finished trial (0.9 s of 200 trials)
            _tell_with_warning(study, trial, value_or_values=values, suppress_warning=True)
            storage.set_trial_state_values(stored_id, state.COMPLETE, list(values))
            if on_trial is not None:
                on_trial(trial.number)


def front_table(result: CapacityResult, title: str = "") -> Any:
    """Rich table of the Pareto front: latency, dropped share, speedup over dropless, per-layer settings."""
    from rich.table import Table

    table = Table(title=title or f"Pareto front ({len(result.front)} of {len(result.points)} trials)")
    for col in ("#", "step us", "vs dropless", "dropped", "per-layer capacity (layer:factor/policy)"):
        table.add_column(col, justify="left" if col.startswith("per-layer") else "right")
    base = result.dropless.step_latency_us
    for i, p in enumerate(result.front):
        mark = " *" if result.pick is not None and p.trial == result.pick.trial else ""
        layers = " ".join(
            f"{s.layer}:-" if s.factor is None else f"{s.layer}:{s.factor:.2f}/{s.policy}" for s in p.settings
        )
        table.add_row(
            f"{i}{mark}",
            f"{p.step_latency_us:.1f}",
            f"{base / p.step_latency_us:.3f}x",
            f"{100 * p.dropped_fraction:.3f}%",
            layers,
        )
    return table


def result_json(result: CapacityResult) -> str:
    """The JSON document written by ``--out`` and printed by ``--json``."""
    return json.dumps(result.to_dict(), indent=2)

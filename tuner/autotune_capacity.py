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
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moesim.capacity import DROP_POLICIES as POLICIES
from moesim.errors import InfeasibleError, SpecError

FACTOR_RANGE: tuple[float, float] = (1.0, 4.0)


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
    result (3 L distributions) for every trial: 0.3 s of 200 trials on 58 layers. In a study that only this
    run's trials fill, every trial suggests all of :func:`search_space` (no conditional parameters), so that
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
) -> CapacityResult:
    """Run NSGA-II for ``trials`` trials on (step latency, dropped fraction); return the front.

    ``objective(settings) -> (step_latency_us, dropped_fraction)``, e.g. a :class:`SimulatorObjective`.
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
    if storage is None:  # a fresh in-memory study: only this run's trials, all over the same space
        sampler = _fixed_space_nsga2(population, seed, num_layers)
    else:  # a stored study may hold other runs' trials: let NSGA-II intersect their spaces itself
        sampler = optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    study = optuna.create_study(
        directions=["minimize", "minimize"],
        sampler=sampler,
        storage=storage,
        study_name=study_name,
        load_if_exists=storage is not None,
    )
    # Seed: all layers dropless (the zero-drop anchor) and all layers at factor 1.0 with probs (the fastest
    # Megatron-style setting), so both ends of the front exist from the first generation.
    anchor = {}
    tight = {}
    for i in range(num_layers):
        anchor.update({f"dropless_{i}": True, f"factor_{i}": 2.0, f"policy_{i}": "probs"})
        tight.update({f"dropless_{i}": False, f"factor_{i}": 1.0, f"policy_{i}": "probs"})
    study.enqueue_trial(anchor, skip_if_exists=True)
    study.enqueue_trial(tight, skip_if_exists=True)

    def run_trial(trial: Any) -> tuple[float, float]:
        params = _suggest(trial, num_layers)
        latency, dropped = objective(settings_from_params(params, num_layers, layer_ids))
        if on_trial is not None:
            on_trial(trial.number)
        return latency, dropped

    # deepcopy=False: ``study.trials`` deep-copies every trial's 3 L parameters (0.4 s of 200 trials x 58 layers);
    # the trials are only read here
    complete = (optuna.trial.TrialState.COMPLETE,)
    done = len(study.get_trials(deepcopy=False, states=complete))
    if trials > done:
        study.optimize(run_trial, n_trials=trials - done)
    points = [
        CapacityPoint(
            settings_from_params(t.params, num_layers, layer_ids), float(t.values[0]), float(t.values[1]), t.number
        )
        for t in study.get_trials(deepcopy=False, states=complete)
    ]
    dropless = next(p for p in points if all(s.factor is None for s in p.settings))
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

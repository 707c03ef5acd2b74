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

Storage (``storage=URL``, any ``tuner.autotune.storage`` URL; the CLI's default is a journal file): the sampler always
works on an in-memory study, and every trial is written through to the stored study in two operations (created
RUNNING with all its parameters and owner ``host:pid``, then COMPLETE with its values). Optuna's own storage
path writes each of the 3 L parameters separately: 200 trials of DeepSeek-V3's 58 layers took 19 s on a journal
file against 1.3 s in memory. A run first copies the stored COMPLETE trials (earlier runs', other workers') into
its study and keeps doing so before every trial, so a rerun resumes and workers share one population. ``trials``
is the stored study's total, exact across workers and restarts: counting and claiming happen under
``tuner.autotune.storage.budget_lock``, and a RUNNING trial whose owner died (pid gone on this host, or older than
``stale_after_s``) is marked FAIL with user attr ``stale`` and not counted. The result is read from the stored
study once no trial is RUNNING, so every worker reports the same trials, all of the stored COMPLETE ones.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from moesim.errors import InfeasibleError, SpecError
from tuner.autotune.capacity.objective import CapacityPoint, LayerSetting
from tuner.autotune.capacity.space import fixed_space_nsga2, settings_from_params, suggest
from tuner.autotune.capacity.stored import StoredStudy


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
    ``storage``: None (in memory, nothing kept), a ``tuner.autotune.storage`` URL, or an Optuna storage object
    (no budget lock then); see the module docstring. ``study_name`` defaults to :func:`capacity_study_name`.
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
        directions=["minimize", "minimize"], sampler=fixed_space_nsga2(population, seed, num_layers)
    )
    stored = None
    if storage is not None:
        name = study_name or capacity_study_name(objective, num_layers, population, seed)
        stored = StoredStudy(storage, name, num_layers, stale_after_s)
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
            latency, dropped = evaluate(suggest(trial, num_layers))
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


def result_json(result: CapacityResult) -> str:
    """The JSON document written by ``--out`` and printed by ``--json``."""
    return json.dumps(result.to_dict(), indent=2)

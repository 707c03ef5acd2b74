"""The capacity search space: per MoE layer i, ``dropless_i``, ``factor_i`` in FACTOR_RANGE and ``policy_i``.

dropless_i  in {False, True}          (True: no capacity, nothing dropped; factor/policy unused)
factor_i    in [1.0, 4.0] continuous  (Megatron's moe_capacity_factor)
policy_i    in {probs, position, reroute}  (moesim.capacity.DROP_POLICIES)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from moesim.capacity import DROP_POLICIES as POLICIES
from tuner.autotune.capacity.objective import LayerSetting

FACTOR_RANGE: tuple[float, float] = (1.0, 4.0)
# A stored trial keeps its parameters as this one user attr (a flat JSON dict), not as Optuna parameters: a journal
# line per Optuna parameter set, with its distribution, cost 1.7 ms a trial on 58 layers, a quarter of the search.
PARAMS_ATTR = "params"


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


def suggest(trial: Any, num_layers: int) -> dict[str, Any]:
    """Ask ``trial`` for every parameter of :func:`search_space` (3 per layer); -> {name: value}.

    Every parameter is suggested in every trial (no conditional space), so NSGA-II's crossover sees all of them;
    factor/policy of a dropless layer are carried but unused.
    """
    params = {}
    for i in range(num_layers):
        params[f"dropless_{i}"] = trial.suggest_categorical(f"dropless_{i}", [False, True])
        params[f"factor_{i}"] = trial.suggest_float(f"factor_{i}", *FACTOR_RANGE)
        params[f"policy_{i}"] = trial.suggest_categorical(f"policy_{i}", list(POLICIES))
    return params


def search_space(num_layers: int) -> dict[str, Any]:
    """The distributions :func:`suggest` draws from, by parameter name (sorted, as Optuna orders them)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    space: dict[str, Any] = {}
    for i in range(num_layers):
        space[f"dropless_{i}"] = CategoricalDistribution([False, True])
        space[f"factor_{i}"] = FloatDistribution(*FACTOR_RANGE)
        space[f"policy_{i}"] = CategoricalDistribution(list(POLICIES))
    return dict(sorted(space.items()))


def fixed_space_nsga2(population: int, seed: int | None, num_layers: int) -> Any:
    """Optuna's ``NSGAIISampler`` with the relative search space given instead of recomputed per trial.

    NSGA-II's ``infer_relative_search_space`` intersects the completed trials' spaces and deep-copies the
    result (3 L distributions) for every trial: 0.3 s of 200 trials on 58 layers. In a study that only
    :func:`suggest` fills (this run's trials, and those copied in from the stored study of the same name, which
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

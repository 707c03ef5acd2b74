"""The placement family's shared shape: the budget every method gets, the protocol every method follows, and what
the registry (:data:`tuner.placers.REGISTRY`) knows of each member (:class:`MethodSpec`).

Dimension legend: L recorded MoE layers, E logical experts, G GPUs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from moesim.errors import PlacementError
from tuner.engine_facts import engine_facts

if TYPE_CHECKING:
    from moesim.placement import Placement
    from moesim.specs import ClusterSpec, ModelSpec

# Replica moves are a one-off cost; spread it over this many steps to compare with per-step time. SGLang's
# dynamic EPLB rebalances every ``--eplb-rebalance-num-iterations`` forward passes, default 1000
# (``ServerArgs.eplb_rebalance_num_iterations``; the figure: profiles/reference/engine_rebalance.yaml, through
# tuner.engine_facts), so a placement is assumed to stay deployed that long; a longer-lived plan makes moves
# cheaper (``Budget.amortise_steps``).
DEFAULT_AMORTISE_STEPS = engine_facts()["sglang"].interval_steps

# Where a token goes between two MoE layers, which decides whether the MILP prices cross-layer transitions:
# ``home``: back to its home rank (data-parallel attention with DeepEP in SGLang and vLLM, Megatron's all-to-all
# dispatcher: the combine returns every token; consecutive experts on one GPU save nothing, so no transition
# term); ``transitions``: it stays where its layer-l expert ran (MoETuner's assumption), so a transition whose
# experts sit on different GPUs or nodes is priced as traffic.
DEPENDENCIES = ("home", "transitions")


@dataclass(frozen=True)
class Budget:
    """What a placement method may spend and the settings of its objective (methods ignore what they do not
    use: the baselines take none of it).

    time_limit_s: wall time for the whole method (MILP plus refinement). tokens_per_gpu: the step the counts
    are scaled to (prices of the objective). current: the placement now deployed (its replicas are free to
    keep, others cost a move amortised over ``amortise_steps``). dependency: :data:`DEPENDENCIES`.
    progress: ``progress(done, total, text)``.
    """

    time_limit_s: float = 60.0
    solver: str = "cbc"
    split: str = "even"
    hierarchical: bool | None = None
    tokens_per_gpu: int = 4096
    sweeps: int = 2
    amortise_steps: int = DEFAULT_AMORTISE_STEPS
    current: Placement | None = None
    dependency: str = "home"
    progress: Callable[[int, int, str], None] | None = None

    def __post_init__(self) -> None:
        if self.dependency not in DEPENDENCIES:
            raise PlacementError(
                f"placement: dependency: must be one of {', '.join(DEPENDENCIES)}, got {self.dependency!r}"
            )
        if not (np.isfinite(self.time_limit_s) and self.time_limit_s > 0):
            raise PlacementError(f"placement: time_limit_s: must be a finite number > 0, got {self.time_limit_s}")
        for name in ("tokens_per_gpu", "sweeps", "amortise_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise PlacementError(f"placement: {name}: must be an integer >= 1, got {v!r}")


class Placer(Protocol):
    """One placement method: ``counts [L, E]`` (assignments per step) and ``transitions [L-1, E, E]`` (or None)
    of the recorded ``layers`` (model layer indices, default the model's MoE layers) to a :class:`Placement`
    with ``E + redundant_experts`` slots, valid for ``cluster``'s GPUs, scored under ``engine``'s dispatch rule
    (:mod:`moesim.engine_dispatch`) where the method optimises. Raises ``PlacementError`` when the method cannot
    place this shape (e.g. replicas asked of a method that has none)."""

    def __call__(
        self,
        counts: np.ndarray,
        transitions: np.ndarray | None,
        model: ModelSpec,
        cluster: ClusterSpec,
        redundant_experts: int,
        engine: str,
        budget: Budget,
        *,
        layers: Sequence[int] | None = None,
    ) -> Placement: ...


@dataclass(frozen=True)
class MethodSpec:
    """One member of the placement family: its :class:`Placer` and what callers need to know of it, so that
    they look it up instead of testing names.

    replicas: it can place redundant experts (False: each expert once; ``moesim plan`` compares it at its own
    slot count when replicas are asked). baseline: ``moesim plan`` compares it (and the MILP may start from it).
    nearest_replica_only: compared only under SGLang's nearest-replica rules on several nodes, which it is made
    for. optional: it does not apply to every shape, and a plan skips it without a note where it does not.
    milp: the MILP, which ``moesim plan`` and ``moesim whatif`` build through :func:`tuner.plan.plan` (the
    comparison and the per-layer refinement) rather than through :func:`tuner.placers.place` alone.
    """

    place: Placer
    replicas: bool = True
    baseline: bool = False
    nearest_replica_only: bool = False
    optional: bool = False
    milp: bool = False


def heuristic(fn: Callable[[np.ndarray, ModelSpec, ClusterSpec, int], Placement]) -> Placer:
    """A :class:`Placer` from a method that needs only ``counts [L, E]``, the model, the cluster and the
    replica count (the baselines and node-spread take no transitions, engine rule or budget)."""

    def place(
        counts: np.ndarray,
        transitions: np.ndarray | None,
        model: ModelSpec,
        cluster: ClusterSpec,
        redundant_experts: int,
        engine: str,
        budget: Budget,
        *,
        layers: Sequence[int] | None = None,
    ) -> Placement:
        return fn(np.asarray(counts, dtype=np.float64), model, cluster, int(redundant_experts))

    place.__doc__, place.__name__ = fn.__doc__, fn.__name__
    return place


def no_replicas(method: str, redundant_experts: int) -> None:
    """``PlacementError`` when replicas are asked of a method that places each expert once."""
    if redundant_experts:
        raise PlacementError(
            f"placement: redundant_experts: {method} has no replicas ({redundant_experts} asked); use eplb or ilp"
        )


def recorded_layers(model: ModelSpec, counts: np.ndarray, layers: Sequence[int] | None) -> tuple[int, ...]:
    """The model layer index of each row of ``counts``: ``layers``, or the model's MoE layers."""
    out = tuple(int(x) for x in (model.moe_layers if layers is None else layers))
    if len(out) != counts.shape[0]:
        raise PlacementError(f"placement: layers: {len(out)} layer indices for {counts.shape[0]} rows of counts")
    return out

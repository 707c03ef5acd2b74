"""Placement methods: one family, one registry.

Every method is a function with the :class:`tuner.placers.base.Placer` protocol, one file each, registered in
:data:`REGISTRY` with a :class:`tuner.placers.base.MethodSpec` saying what callers need to know of it (replicas,
baseline, the MILP):
``contiguous`` (Megatron's, vLLM's ``linear``), ``round_robin`` (vLLM's), ``eplb`` (DeepSeek's EPLB: as SGLang
calls it, and each policy forced), ``node_spread`` (every replica of an expert on a different node),
``ilp`` (the MILP, warm-started from the best baseline). The names are
:class:`moesim.placement.PlacementMethod` (so a scenario file can name them without importing ``tuner``);
``moesim plan``, ``moesim whatif`` and the benchmarks all place through :func:`place`. To add a method: write
``tuner/placers/NAME.py`` with its ``place`` and ``METHOD = MethodSpec(...)``, add its name to
``PlacementMethod`` and its entry here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from moesim.errors import PlacementError
from moesim.placement import Placement, PlacementMethod
from tuner.placers import contiguous, eplb, ilp, node_spread, round_robin
from tuner.placers.base import Budget, MethodSpec, Placer, recorded_layers

if TYPE_CHECKING:
    from moesim.specs import ClusterSpec, ModelSpec

__all__ = [
    "BASELINES",
    "REGISTRY",
    "WITHOUT_REPLICAS",
    "Budget",
    "MethodSpec",
    "PlacementMethod",
    "Placer",
    "candidates",
    "compared",
    "get_method",
    "get_placer",
    "place",
]


def _place_milp(
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
    """The MILP method (:mod:`tuner.placers.ilp`): its plan, warm-started from the best of the registry's baselines
    that have ``E + redundant_experts`` slots (:func:`compared`, then :func:`tuner.placers.ilp.solve`); ``meta``
    carries its gap, status, solve time and warm start. Here, with the registry, so that ``ilp.py`` needs no import
    of it (no cycle)."""
    candidates, _ = compared(counts, transitions, model, cluster, redundant_experts, engine, budget, layers=layers)
    out = ilp.solve(counts, transitions, model, cluster, redundant_experts, engine, budget, candidates, layers=layers)
    res = out.result
    return out.placement.with_meta(
        gap=None if not np.isfinite(res.gap) else res.gap,
        solve_s=out.solve_s,
        status=res.status,
        warm_start=out.warm_name,
        layers=[int(x) for x in recorded_layers(model, np.asarray(counts), layers)],
    )


# The family's one registry, in table order (the enum's); every choice list and check below is derived from it.
REGISTRY: dict[PlacementMethod, MethodSpec] = {
    PlacementMethod.CONTIGUOUS: contiguous.METHOD,
    PlacementMethod.ROUND_ROBIN: round_robin.METHOD,
    PlacementMethod.EPLB: eplb.METHOD,
    PlacementMethod.EPLB_HIERARCHICAL: eplb.HIERARCHICAL,
    PlacementMethod.EPLB_GLOBAL: eplb.GLOBAL,
    PlacementMethod.NODE_SPREAD: node_spread.METHOD,
    PlacementMethod.ILP: MethodSpec(_place_milp, milp=True),
}

# The baselines ``moesim plan`` compares with under every rule, in table order (EPLB: both policies, the
# hierarchical one where it applies); the MILP's warm start is the best of them.
BASELINES = tuple(m for m, spec in REGISTRY.items() if spec.baseline and not spec.nearest_replica_only)

# methods that place every expert once: compared at their own slot count when replicas are asked
WITHOUT_REPLICAS = tuple(m for m, spec in REGISTRY.items() if not spec.replicas)


def candidates(engine: str, num_nodes: int) -> tuple[PlacementMethod, ...]:
    """The methods a plan compares under ``engine`` on ``num_nodes`` nodes (the MILP's warm start is one of
    them): the baselines, and under SGLang's nearest-replica rules on several nodes also those made for them
    (``node-spread``)."""
    nearest = engine.startswith("sglang") and num_nodes > 1
    return tuple(m for m, spec in REGISTRY.items() if spec.baseline and (nearest or not spec.nearest_replica_only))


def compared(
    counts: np.ndarray,
    transitions: np.ndarray | None,
    model: ModelSpec,
    cluster: ClusterSpec,
    redundant_experts: int,
    engine: str,
    budget: Budget,
    *,
    layers: Sequence[int] | None = None,
) -> tuple[dict[str, Placement], list[str]]:
    """The :func:`candidates` a plan compares, by ``meta["method"]`` (methods without replicas at their own slot
    count), and a note for each that cannot place this shape (``eplb-hierarchical`` not applying is the usual
    case, so it gets none)."""
    out: dict[str, Placement] = {}
    notes: list[str] = []
    for method in candidates(engine, int(cluster.num_nodes)):
        spec = REGISTRY[method]
        reps = redundant_experts if spec.replicas else 0
        try:
            p = place(method, counts, transitions, model, cluster, reps, engine, budget, layers=layers)
        except PlacementError as exc:
            if not spec.optional:
                notes.append(f"{method.value} skipped: {exc}")
            continue
        out.setdefault(method.value, p)
    return out, notes


def get_method(method: str | PlacementMethod, origin: str = "placement", field_name: str = "method") -> MethodSpec:
    """The registry's entry of ``method`` (``PlacementError`` naming ``origin`` and ``field_name`` if unknown)."""
    return REGISTRY[PlacementMethod.parse(method, origin, field_name)]


def get_placer(method: str | PlacementMethod) -> Placer:
    """The function of ``method`` (``PlacementError`` naming the method if unknown)."""
    return get_method(method).place


def place(
    method: str | PlacementMethod,
    counts: np.ndarray,
    transitions: np.ndarray | None,
    model: ModelSpec,
    cluster: ClusterSpec,
    redundant_experts: int = 0,
    engine: str = "placement",
    budget: Budget | None = None,
    *,
    layers: Sequence[int] | None = None,
) -> Placement:
    """Place with ``method`` (see :class:`tuner.placers.base.Placer` for the arguments)."""
    return get_placer(method)(
        np.asarray(counts, dtype=np.float64),
        transitions,
        model,
        cluster,
        int(redundant_experts),
        engine,
        budget or Budget(),
        layers=layers,
    )

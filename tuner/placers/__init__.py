"""Placement methods: one family, one registry.

Every method is a function with the :class:`tuner.placers.base.Placer` protocol, one file each:
``contiguous`` (Megatron's, vLLM's ``linear``), ``round_robin`` (vLLM's), ``eplb`` (DeepSeek's EPLB: as SGLang
calls it, and each policy forced), ``node_spread`` (every replica of an expert on a different node),
``ilp`` (the MILP, warm-started from the best baseline). The names are
:class:`moesim.placement.PlacementMethod` (so a scenario file can name them without importing ``tuner``);
``moesim plan``, ``moesim whatif`` and the benchmarks all place through :func:`place`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from moesim.errors import PlacementError
from moesim.placement import Placement, PlacementMethod
from tuner.placers import contiguous, eplb, ilp, node_spread, round_robin
from tuner.placers.base import Budget, Placer

if TYPE_CHECKING:
    from moesim.specs import ClusterSpec, ModelSpec

__all__ = [
    "BASELINES",
    "REGISTRY",
    "WITHOUT_REPLICAS",
    "Budget",
    "PlacementMethod",
    "Placer",
    "candidates",
    "compared",
    "get_placer",
    "place",
]

REGISTRY: dict[PlacementMethod, Placer] = {
    PlacementMethod.CONTIGUOUS: contiguous.place,
    PlacementMethod.ROUND_ROBIN: round_robin.place,
    PlacementMethod.EPLB: eplb.place,
    PlacementMethod.EPLB_HIERARCHICAL: eplb.place_hierarchical,
    PlacementMethod.EPLB_GLOBAL: eplb.place_global,
    PlacementMethod.NODE_SPREAD: node_spread.place,
    PlacementMethod.ILP: ilp.place,
}

# The baselines ``moesim plan`` compares with, in table order (EPLB: both policies, the hierarchical one where
# it applies); the MILP's warm start is the best of them.
BASELINES = (
    PlacementMethod.CONTIGUOUS,
    PlacementMethod.ROUND_ROBIN,
    PlacementMethod.EPLB_HIERARCHICAL,
    PlacementMethod.EPLB_GLOBAL,
)


def candidates(engine: str, num_nodes: int) -> tuple[PlacementMethod, ...]:
    """The methods a plan compares under ``engine`` on ``num_nodes`` nodes (the MILP's warm start is one of
    them): the baselines, and under SGLang's nearest-replica rules on several nodes also ``node-spread``, made
    for them."""
    spread = engine.startswith("sglang") and num_nodes > 1
    return BASELINES + ((PlacementMethod.NODE_SPREAD,) if spread else ())


# methods that place every expert once: compared at their own slot count when replicas are asked
WITHOUT_REPLICAS = (PlacementMethod.CONTIGUOUS, PlacementMethod.ROUND_ROBIN)


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
        reps = 0 if method in WITHOUT_REPLICAS else redundant_experts
        try:
            p = place(method, counts, transitions, model, cluster, reps, engine, budget, layers=layers)
        except PlacementError as exc:
            if method != PlacementMethod.EPLB_HIERARCHICAL:
                notes.append(f"{method.value} skipped: {exc}")
            continue
        out.setdefault(method.value, p)
    return out, notes


def get_placer(method: str | PlacementMethod) -> Placer:
    """The function of ``method`` (``PlacementError`` naming the method if unknown)."""
    return REGISTRY[PlacementMethod.parse(method)]


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

"""Round-robin placement (vLLM's ``--expert-placement-strategy round_robin``): :func:`tuner.baselines.round_robin`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from moesim.placement import Placement
from tuner.baselines import round_robin
from tuner.placers.base import Budget, no_replicas

if TYPE_CHECKING:
    from moesim.specs import ClusterSpec, ModelSpec


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
    """GPU g holds experts ``g, g+G, g+2G, ...``; ``PlacementError`` unless G divides E."""
    no_replicas("round-robin", redundant_experts)
    return round_robin(int(model.num_experts), int(cluster.num_gpus), int(np.asarray(counts).shape[0]))

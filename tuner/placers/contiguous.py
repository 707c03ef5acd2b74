"""Contiguous placement (Megatron's default, vLLM's ``linear``): :func:`moesim.placement.contiguous`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from moesim.placement import Placement, contiguous
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
    """GPU g holds experts ``[g*E/G, (g+1)*E/G)`` in every layer (any E, G: see ``moesim.placement``)."""
    no_replicas("contiguous", redundant_experts)
    return contiguous(int(model.num_experts), int(cluster.num_gpus), int(np.asarray(counts).shape[0]))

"""Contiguous placement (Megatron's default, vLLM's ``linear``): :func:`moesim.placement.contiguous`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from moesim.placement import Placement, contiguous
from tuner.placers.base import MethodSpec, heuristic, no_replicas

if TYPE_CHECKING:
    from moesim.specs import ClusterSpec, ModelSpec


@heuristic
def place(counts: np.ndarray, model: ModelSpec, cluster: ClusterSpec, redundant_experts: int) -> Placement:
    """GPU g holds experts ``[g*E/G, (g+1)*E/G)`` in every layer (any E, G: see ``moesim.placement``)."""
    no_replicas("contiguous", redundant_experts)
    return contiguous(int(model.num_experts), int(cluster.num_gpus), counts.shape[0])


METHOD = MethodSpec(place, replicas=False, baseline=True)

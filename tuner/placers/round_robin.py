"""Round-robin placement (vLLM's ``--expert-placement-strategy round_robin``): :func:`tuner.baselines.round_robin`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from moesim.placement import Placement
from tuner.baselines import round_robin
from tuner.placers.base import MethodSpec, heuristic, no_replicas

if TYPE_CHECKING:
    from moesim.specs import ClusterSpec, ModelSpec


@heuristic
def place(counts: np.ndarray, model: ModelSpec, cluster: ClusterSpec, redundant_experts: int) -> Placement:
    """GPU g holds experts ``g, g+G, g+2G, ...``; ``PlacementError`` unless G divides E."""
    no_replicas("round-robin", redundant_experts)
    return round_robin(int(model.num_experts), int(cluster.num_gpus), counts.shape[0])


METHOD = MethodSpec(place, replicas=False, baseline=True)

"""EPLB placements (DeepSeek's algorithm, ``tuner.eplb``) with the model's expert groups and the cluster's nodes:
``eplb`` as SGLang calls it (hierarchical when the groups divide over the nodes, else global), and each policy
forced. GPU memory is the caller's check (``plan``, ``simulate``), which knows the weights' dtype."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from moesim.errors import PlacementError
from moesim.placement import Placement
from tuner.eplb import eplb_placement
from tuner.placers.base import MethodSpec, heuristic

if TYPE_CHECKING:
    from moesim.specs import ClusterSpec, ModelSpec


def _eplb(
    counts: np.ndarray, model: ModelSpec, cluster: ClusterSpec, redundant_experts: int, hierarchical: bool | None
) -> Placement:
    p = eplb_placement(
        np.asarray(counts, dtype=np.float64),
        int(cluster.num_gpus),
        int(redundant_experts),
        num_groups=max(1, int(model.n_group)),
        num_nodes=int(cluster.num_nodes),
        hierarchical=hierarchical,
    )
    return p  # memory is the caller's check, in the weights' real dtype (plan, simulate)


@heuristic
def place(counts: np.ndarray, model: ModelSpec, cluster: ClusterSpec, redundant_experts: int) -> Placement:
    """EPLB as SGLang runs it: ``meta["method"]`` says which policy applied."""
    return _eplb(counts, model, cluster, redundant_experts, None)


@heuristic
def place_hierarchical(counts: np.ndarray, model: ModelSpec, cluster: ClusterSpec, redundant_experts: int) -> Placement:
    """EPLB's hierarchical policy (groups to nodes, then replicas within nodes); ``PlacementError`` where it
    does not apply (one node, or groups, experts or slots not divisible by the nodes)."""
    p = _eplb(counts, model, cluster, redundant_experts, True)
    if p.meta["method"] != "eplb-hierarchical":
        raise PlacementError(
            f"placement: method: eplb-hierarchical needs more than one node and {model.n_group} expert groups, "
            f"{model.num_experts} experts and {model.num_experts + redundant_experts} slots divisible by "
            f"{cluster.num_nodes} nodes"
        )
    return p


@heuristic
def place_global(counts: np.ndarray, model: ModelSpec, cluster: ClusterSpec, redundant_experts: int) -> Placement:
    """EPLB's global policy (replicas and packing over all GPUs at once)."""
    return _eplb(counts, model, cluster, redundant_experts, False)


METHOD = MethodSpec(place)
HIERARCHICAL = MethodSpec(place_hierarchical, baseline=True, optional=True)
GLOBAL = MethodSpec(place_global, baseline=True)

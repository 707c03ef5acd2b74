"""Node-spread placement: every replica of an expert on a different node, for nearest-replica dispatch.

Dimension legend: L layers, E logical experts, G GPUs, N nodes, gpn GPUs per node, S slots per GPU, P = G*S.

Why. SGLang sends a rank's tokens for expert e to a replica on its own GPU, else on its own node, else to one
drawn fairly from all replicas (``moesim.engine_dispatch``). An expert with ``r_e`` replicas on ``r_e``
distinct nodes is then local (no network) for the ``gpn * r_e`` ranks of those nodes, and every replica gets the
same expected share: replica i receives its node's ``gpn`` ranks plus a ``1/r_e`` part of the ``G - gpn r_e``
ranks of nodes without one, ``(gpn + (G - gpn r_e) / r_e) / G = 1 / r_e``. So the even split the MILP assumes is
exact, and the replicas also cut the network traffic. Replicas kept inside one node (hierarchical EPLB) split
unevenly under that rule and are local to one node only.

How (per layer, replica counts ``r_e`` from EPLB's replication rule: each redundant slot to the highest load per
replica):

1. nodes: replicas heaviest first (``c_e / r_e``), each to the least-loaded node with a free slot that does not
   hold the expert yet (an expert with more replicas than nodes: to the least-loaded node with room);
2. GPUs, per node: the node's replicas heaviest first, each to the least-loaded GPU with a free slot that does not
   hold the expert (longest-processing-time packing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from moesim.placement import Placement, even_shares, slots_per_gpu
from tuner.eplb import replicate_experts
from tuner.placers.base import MethodSpec, heuristic

if TYPE_CHECKING:
    from moesim.specs import ClusterSpec, ModelSpec


def _least(load: np.ndarray, ok: np.ndarray) -> int:
    """Index of the least-loaded bin among ``ok`` (lowest index on ties); -1 if none."""
    if not ok.any():
        return -1
    return int(np.argmin(np.where(ok, load, np.inf)))


def spread_row(counts: np.ndarray, replicas: np.ndarray, num_gpus: int, gpus_per_node: int, slots: int) -> np.ndarray:
    """One layer's ``phy2log [P]`` (module docstring). counts, replicas: ``[E]``; ``sum(replicas) = G * S``."""
    counts = np.asarray(counts, dtype=np.float64)
    replicas = np.asarray(replicas, dtype=np.int64)
    E = counts.shape[0]
    N = num_gpus // gpus_per_node
    per_replica = counts / replicas
    items = np.repeat(np.arange(E), replicas)
    items = items[np.argsort(-per_replica[items], kind="stable")]  # heaviest replica first
    node_load, node_free = np.zeros(N), np.full(N, slots * gpus_per_node)
    on_node = np.zeros((E, N), dtype=bool)
    node_items: list[list[int]] = [[] for _ in range(N)]
    for e in items:  # P replicas; each step is O(N)
        n = _least(node_load, (node_free > 0) & ~on_node[e])
        if n < 0:  # more replicas than nodes
            n = _least(node_load, node_free > 0)
        on_node[e, n] = True
        node_load[n] += per_replica[e]
        node_free[n] -= 1
        node_items[n].append(int(e))
    phy = np.empty(num_gpus * slots, dtype=np.int64)
    for n in range(N):
        gpu_load, gpu_free = np.zeros(gpus_per_node), np.full(gpus_per_node, slots)
        held = np.zeros((E, gpus_per_node), dtype=bool)
        fill = [[] for _ in range(gpus_per_node)]
        for e in node_items[n]:  # already heaviest first
            g = _least(gpu_load, (gpu_free > 0) & ~held[e])
            if g < 0:
                g = _least(gpu_load, gpu_free > 0)
            held[e, g] = True
            gpu_load[g] += per_replica[e]
            gpu_free[g] -= 1
            fill[g].append(e)
        for i, experts in enumerate(fill):
            start = (n * gpus_per_node + i) * slots
            phy[start : start + slots] = experts
    return phy


@heuristic
def place(counts: np.ndarray, model: ModelSpec, cluster: ClusterSpec, redundant_experts: int) -> Placement:
    """Node-spread placement of every layer (module docstring)."""
    E, G, gpn = int(model.num_experts), int(cluster.num_gpus), int(cluster.gpus_per_node)
    S = slots_per_gpu(E, redundant_experts, G, origin="placement")
    _, _, replicas = replicate_experts(counts, G * S)  # [L, E] EPLB's replica counts
    phy = np.stack([spread_row(counts[l], replicas[l], G, min(gpn, G), S) for l in range(counts.shape[0])])
    p = Placement(G, S, E, phy, even_shares(phy, E), {"method": "node-spread"})
    return p  # memory is the caller's check, in the weights' real dtype (plan, simulate)


METHOD = MethodSpec(place, baseline=True, nearest_replica_only=True)

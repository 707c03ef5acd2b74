"""The node-clustering start of the flat sweeps (MoETuner's first stage): replicas to nodes by transitions, all
layers at once (:mod:`tuner.node_cluster`), then each node's replicas packed onto its GPUs under the layer's cap.

Dimension legend: L layers, E logical experts, G GPUs, N nodes, gpn GPUs per node, S slots per GPU, P = G*S.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from moesim.placement import Placement
from tuner.ilp.model import timed_solve
from tuner.ilp.objective import CostModel, predicted_terms
from tuner.ilp.outcome import SubResult
from tuner.ilp.packing import improve_bins, layer_rows, node_gpu_sub, row_max_load, rows_to_arrays
from tuner.node_cluster import cluster_nodes, cross_node_tokens


def placement_objective(
    phy: np.ndarray,
    sh: np.ndarray,
    counts: np.ndarray,
    T: np.ndarray | None,
    gpn: int,
    cost: CostModel,
    current: Placement | None,
    G: int,
    S: int,
    E: int,
) -> float:
    """The whole plan's predicted time (us) of rows ``phy``/``sh [L, P]``: :func:`predicted_terms`'s objective."""
    p = Placement(num_gpus=G, slots_per_gpu=S, num_experts=E, phy2log=phy, shares=sh, meta={})
    return float(predicted_terms(p, counts, T, gpn, cost, current)["objective_us"])


# Node stage (:func:`cluster_start`), tuning choices like those of tuner.ilp.search (assumptions, not measured):
# share of the warm start's GPU-level headroom (busiest GPU minus mean) a node's mean GPU load may use. Half leaves
# the other half to the packing of the node's replicas onto its GPUs; a layer that then does not pack under its cap
# steps down to a quarter, then to none (node loads as even as the warm start's busiest GPU allows).
CLUSTER_HEADROOM = (0.5, 0.25, 0.0)
CLUSTER_RESTARTS = 4  # annealing runs (seeds 0..3); the one with the fewest crossings is kept
CLUSTER_STEPS = 1000  # swaps proposed per slot and layer (each slot gets about 2000 chances to move)
CLUSTER_PACK_S = 1.0  # most seconds for one node's packing MILP
CLUSTER_SHARE = 0.2  # share of the time limit for clustering and packing (and again, at most, for the repairs);
#                      the sweeps, which refine every layer with the full objective, keep the rest


def cluster_start(
    counts: np.ndarray,
    T: np.ndarray,
    phy: np.ndarray,
    sh: np.ndarray,
    G: int,
    gpn: int,
    S: int,
    cost: CostModel,
    warm_max: list[float],
    solver: str,
    gap_rel: float,
    threads: int,
    limit_s: float,
    subs: list[SubResult],
    objective: Callable[[np.ndarray, np.ndarray], float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """MoETuner's first stage as a start for the flat sweeps: replicas to nodes by transitions, every layer at
    once (:func:`tuner.node_cluster.cluster_nodes`), then per layer and node one small MILP packing the node's
    replicas onto its GPUs under the layer's load cap ``warm_max[l]``: LPT, then :func:`improve_bins`, and only
    if that misses the cap a small MILP (min busiest GPU, even shares).

    Node loads are capped at ``gpn * (mean + h_l * (warm_max - mean))`` (``mean``: mean GPU load), leaving the
    rest of the warm start's headroom to the packing; ``h_l`` starts at ``CLUSTER_HEADROOM[0]`` and steps down the
    tuple for the layers that did not pack, and the clustering is run again, until every layer packs. A layer
    whose packing misses the cap keeps its current row (the caller re-solves it given its clustered neighbours).
    Returns the attempt with the most packed layers, then the lowest ``objective(phy2log, shares)``, as
    ``(phy2log [L, P], shares [L, P], packed [L] bool)``, or None if no layer packed. Replica counts are ``phy``'s.
    """
    t0 = time.perf_counter()
    L, E = counts.shape
    N = G // gpn
    P = G * S
    slot_node = np.tile(np.arange(P) // (S * gpn), (L, 1))
    mean = counts.sum(axis=1) / G
    best_cand, best_key = None, (0, math.inf)
    step = np.zeros(L, dtype=np.int64)  # [L] index into CLUSTER_HEADROOM of each layer
    for _ in CLUSTER_HEADROOM:
        left = limit_s - (time.perf_counter() - t0)
        if left <= 0:
            break
        h = np.asarray(CLUSTER_HEADROOM)[step]
        node_cap = gpn * (mean + h * (np.asarray(warm_max) - mean))
        nodes, nodes_cross = None, math.inf
        for seed in range(CLUSTER_RESTARTS):
            cand = cluster_nodes(
                counts,
                T,
                phy,
                slot_node,
                N,
                node_cap,
                steps=CLUSTER_STEPS * L * P,
                seed=seed,
                time_limit_s=0.5 * left / CLUSTER_RESTARTS,
            )
            cross = cross_node_tokens(phy, cand, T, E, N)
            if cross < nodes_cross:
                nodes, nodes_cross = cand, cross
        p_out, s_out = phy.copy(), sh.copy()
        packed = np.zeros(L, dtype=bool)
        for l in range(L):
            k = np.bincount(phy[l], minlength=E)
            rows_all: list[list[tuple[int, float]]] = []
            for n in range(N):
                experts_n, kn = np.unique(phy[l][nodes[l] == n], return_counts=True)
                iw = counts[l, experts_n] * kn / k[experts_n]  # the node's tokens of each of its experts
                sub = node_gpu_sub(iw, kn, gpn, S, S, True, cost.us_per_token, load_cap=warm_max[l] * (1 + 1e-9))
                if sub.warm is not None:
                    sub.warm = improve_bins(iw, kn, sub.warm[0])
                    if float((iw @ sub.warm[1]).max()) <= warm_max[l]:
                        # the local search already meets the cap: no MILP needed (the sweeps refine the layer)
                        rows_all += layer_rows(sub.warm[0], sub.warm[1], kn / k[experts_n], experts_n, S)
                        continue
                pack_left = limit_s - (time.perf_counter() - t0)
                pack_s = min(CLUSTER_PACK_S, max(0.1, pack_left / max(1, (L - l) * N - n)))
                y, x, _ = timed_solve(
                    sub, l, f"cluster[{n}]", len(experts_n) * gpn, solver, pack_s, gap_rel, threads, subs
                )
                rows = [] if y is None else layer_rows(y, x, kn / k[experts_n], experts_n, S)
                if not rows:
                    rows_all = []
                    break
                rows_all += rows
            if not rows_all:
                continue
            p_new, s_new = rows_to_arrays(rows_all, E)
            if row_max_load(counts[l], p_new, s_new, S) <= warm_max[l] * (1 + 1e-6):
                p_out[l], s_out[l] = p_new, s_new
                packed[l] = True
        if packed.any():
            # the most packed layers first (a layer left unpacked keeps a row clustered for other neighbours),
            # then the lowest predicted time
            key = (-int(packed.sum()), objective(p_out, s_out))
            if key < best_key:
                best_cand, best_key = (p_out, s_out, packed), key
        if packed.all():
            break
        # a layer that did not pack gets less node headroom in the next attempt (the others keep theirs)
        step = np.where(packed, step, np.minimum(step + 1, len(CLUSTER_HEADROOM) - 1))
    return best_cand

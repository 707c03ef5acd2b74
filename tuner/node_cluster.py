"""Node stage of the placement: cluster replicas onto nodes by cross-layer transitions, jointly over all layers.

Dimension legend: L MoE layers, E logical experts, P slots (replicas) per layer, N nodes, T transitions
``[L-1, E, E]`` (token choices going from expert i in layer l to expert j in layer l+1).

MoETuner (arXiv 2502.06643) places experts in two stages: first it clusters experts whose tokens flow into each
other onto the same node, then it balances within nodes. The per-layer MILP of :mod:`tuner.ilp` alone is a
coordinate descent: every layer is re-solved given its neighbours, so a layer only moves an expert across nodes
if that pays off *with the neighbours where they are*, and two layers that would both have to move stay put
(on the shipped OLMoE traces on 16 GPUs it stopped at 16.8-20.6% fewer cross-node bytes than EPLB: the
benchmark run before this stage existed, docs/PLACEMENT.md "Results"). This stage searches all layers at once
for the node part only, which is small (a replica's node, not its GPU).

The quantity minimised is the cross-node term of the MILP objective (``tuner.ilp`` module docstring)::

    cross_node_tokens = sum_l sum_ij T_l[i, j] * (1 - sum_n X_l[i, n] * X_(l+1)[j, n])
    X_l[e, n] = (replicas of e on node n in layer l) / (replicas of e in layer l)      # even split

over swaps of two replicas of one layer on different nodes (so every node keeps its slot count and every expert
its replica count), subject to a node load cap::

    load_l(n) = sum_e w_le * X_l[e, n]  <=  max(node_cap_l, the larger of the two nodes' loads before the swap)

so a node is never pushed over the cap, and a node already over it (the start) never gets heavier. The search is
simulated annealing (a swap that adds ``d`` crossings is taken with probability ``exp(-d / temp)``, ``temp``
falling linearly to 0, then a greedy pass), seeded, so the same inputs give the same result. A swap's change
is local: moving a replica of e from node a to b changes the co-location by
``(C_l[e, b] - C_l[e, a]) / k_e`` with
``C_l[e, n] = sum_i T_(l-1)[i, e] X_(l-1)[i, n] + sum_j T_l[e, j] X_(l+1)[j, n]``,
and after it only ``C`` of the two neighbouring layers changes (two columns, O(E)).
"""

from __future__ import annotations

import math
import time

import numpy as np


def node_shares(phy2log_row: np.ndarray, node_row: np.ndarray, replicas: np.ndarray, num_nodes: int) -> np.ndarray:
    """``X [E, N]``: share of each expert's tokens on each node (``replicas [E]``: replica count of each expert)."""
    out = np.zeros((len(replicas), num_nodes))
    np.add.at(out, (phy2log_row, node_row), 1.0 / replicas[phy2log_row])
    return out


def cross_node_tokens(
    phy2log: np.ndarray, slot_node: np.ndarray, transitions: np.ndarray, num_experts: int, num_nodes: int
) -> float:
    """Transitions whose two experts' shares sit on different nodes, summed over the layer pairs.

    Args:
        phy2log: ``[L, P]`` expert of every slot; slot_node: ``[L, P]`` node of every slot;
        transitions: ``[L-1, E, E]``.
    """
    L = phy2log.shape[0]
    k = [np.bincount(phy2log[l], minlength=num_experts).astype(np.float64) for l in range(L)]
    X = [node_shares(phy2log[l], slot_node[l], k[l], num_nodes) for l in range(L)]
    return float(
        sum(transitions[l].sum() - np.einsum("ij,in,jn->", transitions[l], X[l], X[l + 1]) for l in range(L - 1))
    )


def cluster_nodes(
    counts: np.ndarray,
    transitions: np.ndarray,
    phy2log: np.ndarray,
    slot_node: np.ndarray,
    num_nodes: int,
    node_cap: np.ndarray,
    *,
    steps: int,
    temperature: float = 0.05,
    seed: int = 0,
    time_limit_s: float = math.inf,
) -> np.ndarray:
    """Re-assign replicas to nodes to cut cross-node transitions, every layer at once (see module docstring).

    Args:
        counts: ``[L, E]`` token-expert assignments per layer; transitions: ``[L-1, E, E]``.
        phy2log: ``[L, P]`` expert of every slot (its replica counts are kept).
        slot_node: ``[L, P]`` starting node of every slot (every node's slot count is kept).
        node_cap: ``[L]`` the load (tokens) a node may reach.
        steps: swaps proposed; temperature: the starting temperature as a fraction of the mean transitions per
            slot (``T_l.sum() / P``); the default 0.05 is a tuning choice (an assumption, not measured): at the
            start a swap that loses 5% of a slot's mean transitions is taken with probability 1/e;
            time_limit_s: stop annealing after this long (the greedy pass that follows stops at twice this).
    Returns:
        ``[L, P]`` node of every slot.
    """
    t0 = time.perf_counter()
    counts = np.asarray(counts, dtype=np.float64)
    T = np.asarray(transitions, dtype=np.float64)
    L, E = counts.shape
    P = phy2log.shape[1]
    N = int(num_nodes)
    node = np.array(slot_node, dtype=np.int64, copy=True)
    ex = np.asarray(phy2log, dtype=np.int64)
    if L < 2 or N < 2:
        return node
    k = np.stack([np.bincount(ex[l], minlength=E) for l in range(L)]).astype(np.float64)  # [L, E]
    wrep = counts[np.arange(L)[:, None], ex] / k[np.arange(L)[:, None], ex]  # [L, P] tokens of each replica
    X = [node_shares(ex[l], node[l], k[l], N) for l in range(L)]
    # C[l][e, n]: transitions between expert e of layer l and the experts of the neighbouring layers on node n
    C = [np.zeros((E, N)) for _ in range(L)]
    for l in range(L):
        if l > 0:
            C[l] += T[l - 1].T @ X[l - 1]
        if l < L - 1:
            C[l] += T[l] @ X[l + 1]
    loads = [np.bincount(node[l], weights=wrep[l], minlength=N) for l in range(L)]
    temp0 = float(temperature) * float(T.sum()) / max(1, (L - 1) * P)
    rng = np.random.default_rng(seed)
    layers = rng.integers(L, size=steps)
    pairs = rng.integers(P, size=(steps, 2))
    coins = rng.random(steps)

    def apply(l: int, a: int, b: int) -> None:
        """Swap the nodes of slots a and b of layer l and update X, C and the loads."""
        na, nb = node[l, a], node[l, b]
        e, f = ex[l, a], ex[l, b]
        node[l, a], node[l, b] = nb, na
        loads[l][na] += wrep[l, b] - wrep[l, a]
        loads[l][nb] += wrep[l, a] - wrep[l, b]
        de, df = 1.0 / k[l, e], 1.0 / k[l, f]
        for n, sign in ((na, -1.0), (nb, 1.0)):
            X[l][e, n] += sign * de
            X[l][f, n] -= sign * df
        if l > 0:  # C[l-1][i, n] = sum_j T[l-1][i, j] X[l][j, n]
            col = T[l - 1][:, e] * de - T[l - 1][:, f] * df
            C[l - 1][:, na] -= col
            C[l - 1][:, nb] += col
        if l < L - 1:  # C[l+1][j, n] = sum_i T[l][i, j] X[l][i, n]
            row = T[l][e, :] * de - T[l][f, :] * df
            C[l + 1][:, na] -= row
            C[l + 1][:, nb] += row

    def gain(l: int, a: int, b: int) -> float:
        """Co-located transitions gained by swapping slots a and b of layer l (-inf if not allowed)."""
        na, nb = node[l, a], node[l, b]
        e, f = ex[l, a], ex[l, b]
        if na == nb or e == f:
            return -math.inf
        la = loads[l][na] - wrep[l, a] + wrep[l, b]
        lb = loads[l][nb] - wrep[l, b] + wrep[l, a]
        if max(la, lb) > max(float(node_cap[l]), loads[l][na], loads[l][nb]) * (1 + 1e-12):
            return -math.inf
        return float((C[l][e, nb] - C[l][e, na]) / k[l, e] + (C[l][f, na] - C[l][f, nb]) / k[l, f])

    for s in range(steps):
        if s % 1024 == 0 and time.perf_counter() - t0 > time_limit_s:
            break
        l, a, b = int(layers[s]), int(pairs[s, 0]), int(pairs[s, 1])
        g = gain(l, a, b)
        if g == -math.inf:
            continue
        temp = temp0 * (1.0 - s / steps)
        if g > 1e-9 or (temp > 0 and coins[s] < math.exp(g / temp)):
            apply(l, a, b)
    # greedy pass: every slot's best swap (vectorised over the partner slot) until none gains or time is up
    improved = True
    while improved and time.perf_counter() - t0 <= 2 * time_limit_s:
        improved = False
        for l in range(L):
            for a in range(P):
                na, e = node[l, a], ex[l, a]
                nb, f = node[l], ex[l]
                la = loads[l][na] - wrep[l, a] + wrep[l]
                lb = loads[l][nb] - wrep[l] + wrep[l, a]
                ok = (
                    (nb != na)
                    & (f != e)
                    & (
                        np.maximum(la, lb)
                        <= np.maximum(float(node_cap[l]), np.maximum(loads[l][na], loads[l][nb])) * (1 + 1e-12)
                    )
                )
                g = (C[l][e, nb] - C[l][e, na]) / k[l, e] + (C[l][f, na] - C[l][f, nb]) / k[l, f]
                g = np.where(ok, g, -np.inf)
                b = int(np.argmax(g))
                if g[b] > 1e-9:
                    apply(l, a, b)
                    improved = True
    return node

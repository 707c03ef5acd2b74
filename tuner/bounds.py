"""Lower bounds on the placement objective, valid for every placement and every replica split.

Dimension legend: L recorded MoE layers, E logical experts, G GPUs, S slots per GPU, P = G*S slots, N nodes,
gpn GPUs per node.

The objective (``tuner.ilp.predicted_terms``) is ``sum_l c_tok * M_l + c_gpu * X_gpu + c_node * X_node
(+ moves)``, with ``M_l`` the busiest GPU's assignments in layer l and ``X`` the transitions whose two experts
sit on different GPUs / nodes. Each term is bounded on its own, so the sum of the bounds bounds the sum; moves
are bounded by 0. None of the bounds assumes a dispatch rule, so they hold under every engine's shares.

Load (per layer, counts ``c_e``): the busiest GPU carries at least the mean, and some replica of expert e
carries at least ``c_e / r_e`` of it (whatever the split), where the replica counts ``r_e >= 1`` fit in P slots::

    M_l >= max( sum_e c_e / G,  min { M : sum_e max(1, ceil(c_e / M)) <= P } )

Crossings (per layer pair, transitions ``T[i, j]``): a token choice going from i to j stays on one GPU only in
the share of i's replicas whose GPU also holds j; one GPU holds at most S experts of the next layer, so at
most the S heaviest entries of row i stay (and, likewise, of column j)::

    X_gpu  >= sum T - min( sum_i top_S(T[i, :]), sum_j top_S(T[:, j]) )
    X_node >= sum T - min( sum_i top_{gpn S}(T[i, :]), sum_j top_{gpn S}(T[:, j]) )

Network inbound under a nearest-replica rule (``tuner.ilp.nic_inbound``, priced where SGLang's rules score the
plan): ranks of the ``n_e <= min(r_e, N)`` nodes holding expert e send nothing over the network, so the NICs
together receive ``sum_e c_e (N - n_e) / N`` and the busiest of the ``G / gpnic`` at least its mean; the fewest
come from giving the ``P - E`` spare slots to the heaviest experts (each on at most N nodes)::

    max_d inbound(d) >= (gpnic / G) * (sum_e c_e - (1/N) max { sum_e c_e n_e : 1 <= n_e <= N, sum_e n_e <= P })

Load and network together (:func:`network_load_bound`): the two bounds above take their best replica counts
each, but replicas that balance the load (many for the heaviest expert) are not those that keep traffic local
(one on every node for as many experts as possible). For replica counts ``r``, the objective is at least
``c_tok * max(mean, max_e c_e / r_e) + c_nic * (gpnic / G) * (sum_e c_e - sum_e c_e min(r_e, N) / N)``. Any
``r`` is dominated by the counts ``r(M)`` built from ``M = max_e c_e / r_e``: the fewest replicas that keep
every replica at or below M, ``max(1, ceil(c_e / M))``, then the spare slots to the heaviest experts not yet on
N nodes (a unit knapsack, so greedy is optimal). M need only range over the values ``c_e / k`` at or above
the least feasible one, at most ``P + E`` per layer; the least over them bounds every placement.

The bounds ignore that the load and the crossings pull against each other (co-locating every heavy
transition piles load on a few GPUs), so the gap they give is an over-estimate: the plan is at most that far
from optimal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tuner.ilp import CostModel


# cells one layer's branch and bound may open before it stops with the least cell's bound (still valid); DeepSeek-V3
# layers (E = 256, 8 nodes) close in a few hundred. A tuning choice (an assumption), not measured elsewhere
BOUND_CELLS = 4000


def load_bound(counts: np.ndarray, num_gpus: int, slots_per_gpu: int) -> np.ndarray:
    """``[L]`` lower bound on each layer's busiest-GPU assignments (module docstring). counts: ``[L, E]``."""
    c = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    P = int(num_gpus) * int(slots_per_gpu)
    mean = c.sum(axis=1) / int(num_gpus)
    lo = np.zeros(c.shape[0])  # replicas needed at lo exceed P (or lo = 0)
    hi = np.maximum(c.max(axis=1), 1e-300)  # one replica each: E <= P slots always suffice
    for _ in range(64):  # bisection on M, all layers at once; lo stays below the least feasible M
        mid = 0.5 * (lo + hi)
        need = np.maximum(1.0, np.ceil(c / mid[:, None])).sum(axis=1)
        fits = need <= P
        hi = np.where(fits, mid, hi)
        lo = np.where(fits, lo, mid)
    return np.maximum(mean, lo)


def _top_sum(a: np.ndarray, n: int, axis: int) -> float:
    """Sum over the other axis of the ``n`` largest entries along ``axis`` of a 2-D array."""
    n = min(int(n), a.shape[axis])
    if n <= 0:
        return 0.0
    part = -np.partition(-a, n - 1, axis=axis)
    return float(np.take(part, np.arange(n), axis=axis).sum())


def crossing_bound(transitions: np.ndarray, slots_per_bin: int) -> np.ndarray:
    """``[L-1]`` lower bound on the transitions crossing bins of ``slots_per_bin`` slots (module docstring)."""
    T = np.asarray(transitions, dtype=np.float64)
    out = np.empty(T.shape[0])
    for l in range(T.shape[0]):  # loop over layer pairs only
        stay = min(_top_sum(T[l], slots_per_bin, axis=1), _top_sum(T[l], slots_per_bin, axis=0))
        out[l] = max(0.0, float(T[l].sum()) - stay)
    return out


def inbound_bound(
    counts: np.ndarray, num_gpus: int, gpus_per_node: int, slots_per_gpu: int, gpus_per_nic: int = 1
) -> np.ndarray:
    """``[L]`` lower bound on the busiest NIC's network inbound under a nearest-replica rule (module
    docstring). counts: ``[L, E]``."""
    c = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    N = max(1, int(num_gpus) // int(gpus_per_node))
    if N == 1:
        return np.zeros(c.shape[0])
    spare = int(num_gpus) * int(slots_per_gpu) - c.shape[1]
    desc = -np.sort(-c, axis=1)  # [L, E] heaviest first
    # the spare slots extend the heaviest experts first, N - 1 extra nodes each: the top `spare` entries of
    # each expert's count repeated N - 1 times, i.e. whole experts then part of the next
    full, part = divmod(max(0, spare), N - 1)
    covered = c.sum(axis=1) + (N - 1) * desc[:, :full].sum(axis=1)
    if full < c.shape[1]:
        covered += part * desc[:, full]
    return (c.sum(axis=1) - covered / N) * int(gpus_per_nic) / int(num_gpus)


def network_load_bound(
    counts: np.ndarray,
    num_gpus: int,
    gpus_per_node: int,
    slots_per_gpu: int,
    us_per_token: float,
    us_per_nic_assignment: float,
    gpus_per_nic: int = 1,
    max_cells: int = BOUND_CELLS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per layer, a lower bound on ``c_tok * load + c_nic * network`` over every placement (module docstring),
    by best-first branch and bound over the two caps ``(M, Q)``.

    Returns ``(bound_us [L], load [L], network [L], replicas [L, E])``: the bound, the load and network terms of
    the replica counts found with the least value (``r(M, Q)``), and those counts. The bound is exact unless
    a layer needs more than ``max_cells`` cells; it stays valid then."""
    c = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    L, E = c.shape
    G, P = int(num_gpus), int(num_gpus) * int(slots_per_gpu)
    N = max(1, G // int(gpus_per_node))
    least = load_bound(c, G, slots_per_gpu)
    out = np.empty(L), np.empty(L), np.empty(L), np.empty((L, E), dtype=np.int64)
    for l in range(L):
        if N == 1 or us_per_nic_assignment <= 0:
            r = _fewest_replicas(c[l], float(least[l]), P)
            out[0][l], out[1][l], out[2][l], out[3][l] = us_per_token * least[l], least[l], 0.0, r
            continue
        f, load, net, r = _layer_network_load(
            c[l], G, N, P, G // int(gpus_per_nic), float(least[l]), us_per_token, us_per_nic_assignment, max_cells
        )
        out[0][l], out[1][l], out[2][l], out[3][l] = f, load, net, r
    return out


def _fewest_replicas(c: np.ndarray, cap: float, slots: int) -> np.ndarray:
    """Replica counts with every replica at most ``cap``, the spare slots to the highest load per replica."""
    r = np.maximum(1, np.ceil(c / max(cap, 1e-300) * (1 - 1e-12))).astype(np.int64)
    for _ in range(max(0, slots - int(r.sum()))):
        r[int(np.argmax(c / r))] += 1
    return r


def _layer_network_load(
    c: np.ndarray, G: int, N: int, P: int, nics: int, least: float, c_tok: float, c_nic: float, max_cells: int
) -> tuple[float, float, float, np.ndarray]:
    """One layer of :func:`network_load_bound`. A point ``(M, Q)`` sets the fewest replicas with every replica's
    load ``c_e / r_e <= M`` and network inbound ``q_e(r_e) = c_e (N - min(r_e, N)) / (N r_e) <= Q``; the spare
    slots then go to the heaviest experts on fewer than N nodes (the least total inbound ``tot(M, Q)``). Every
    placement's replica counts have their ``(max c_e / r_e, max q_e)`` among the candidate values, and a cell
    ``[M_lo, M_hi] x [Q_lo, Q_hi]`` of them costs at least ``c_tok max(mean, M_lo) + c_nic max(tot(M_hi, Q_hi) /
    nics, Q_lo)`` (fewer replicas are required at the higher caps, so the least total inbound can only fall)."""
    import heapq

    order = np.argsort(-c, kind="stable")
    c = c[order]  # heaviest first: the coverage greedy's order
    total, mean = float(c.sum()), float(c.sum()) / G
    k = np.arange(1, N + 1)
    q_tab = c[:, None] * (N - k[None, :]) / (N * k[None, :])  # [E, N] inbound per replica with k replicas
    k_max = np.floor(c / max(least, 1e-300) * (1 + 1e-9)).astype(np.int64)
    Ms = np.concatenate([c[e] / np.arange(1, kk + 1) for e, kk in enumerate(k_max) if kk > 0] + [[least]])
    Ms = np.unique(Ms[Ms >= least * (1 - 1e-12)])
    Qs = np.unique(np.concatenate([q_tab.ravel(), [0.0]]))

    def required(M: float, Q: float) -> np.ndarray:
        rm = np.maximum(1, np.ceil(c / M * (1 - 1e-12)))
        rq = 1 + (q_tab > Q * (1 + 1e-12)).sum(axis=1)
        return np.maximum(rm, rq).astype(np.int64)

    def tot(i: int, j: int) -> tuple[float, np.ndarray | None]:
        r = required(float(Ms[i]), float(Qs[j]))
        spare = P - int(r.sum())
        if spare < 0:
            return np.inf, None
        room = np.maximum(0, N - r)
        r = r + np.clip(spare - (np.cumsum(room) - room), 0, room)
        return (total - float(c @ np.minimum(r, N)) / N) / nics, r

    def cell_lb(i0: int, i1: int, j0: int, j1: int) -> float:
        t, _ = tot(i1, j1)
        return c_tok * max(mean, float(Ms[i0])) + c_nic * max(t, float(Qs[j0]))

    heap = [(cell_lb(0, len(Ms) - 1, 0, len(Qs) - 1), 0, len(Ms) - 1, 0, len(Qs) - 1)]
    opened = 0
    while heap:
        lb, i0, i1, j0, j1 = heap[0]
        if (i0 == i1 and j0 == j1) or opened >= max_cells or not np.isfinite(lb):
            break
        heapq.heappop(heap)
        opened += 1
        im, jm = (i0 + i1) // 2, (j0 + j1) // 2
        for a0, a1 in ((i0, im), (im + 1, i1)) if i1 > i0 else ((i0, i1),):
            for b0, b1 in ((j0, jm), (jm + 1, j1)) if j1 > j0 else ((j0, j1),):
                heapq.heappush(heap, (cell_lb(a0, a1, b0, b1), a0, a1, b0, b1))
    bound = heap[0][0] if heap else np.inf
    # the replica counts of the least cell's top corner: feasible, and its value is the bound when it closed
    _, _, i1, _, j1 = heap[0]
    _, r = tot(i1, j1)
    if r is None:  # no feasible corner left (never with E <= P): one replica each, spare by load
        r = _fewest_replicas(c, float(c.max()), P)
    spare = P - int(r.sum())
    for _ in range(spare):  # every expert already on N nodes: the rest by load
        r[int(np.argmax(c / r))] += 1
    load = max(mean, float((c / r).max()))
    q = c * (N - np.minimum(r, N)) / (N * r)
    net = max((total - float(c @ np.minimum(r, N)) / N) / nics, float(q.max()))
    replicas = np.empty_like(r)
    replicas[order] = r
    return float(bound), load, net, replicas


def objective_bound(
    counts: np.ndarray,
    transitions: np.ndarray | None,
    num_gpus: int,
    gpus_per_node: int,
    slots_per_gpu: int,
    cost: CostModel,
    network: bool = False,
) -> dict[str, float]:
    """Lower bound on the objective (us) and on each of its terms; ``load_bound`` is per layer (assignments).
    ``network``: the objective prices the busiest NIC's inbound (nearest-replica rules); load and network are
    then bounded together (:func:`network_load_bound`)."""
    gpn = min(int(gpus_per_node), int(num_gpus))
    if network and int(num_gpus) > gpn and cost.us_per_nic_assignment > 0:
        _, M, inb, _ = network_load_bound(
            counts, num_gpus, gpn, slots_per_gpu, cost.us_per_token, cost.us_per_nic_assignment, cost.gpus_per_nic
        )
        inbound = float(inb.sum())
    else:
        M, inbound = load_bound(counts, num_gpus, slots_per_gpu), 0.0
    x_gpu = x_node = 0.0
    if transitions is not None and np.asarray(transitions).shape[0] > 0:
        x_gpu = float(crossing_bound(transitions, slots_per_gpu).sum())
        if int(num_gpus) > gpn:
            x_node = float(crossing_bound(transitions, gpn * slots_per_gpu).sum())
    compute = float(cost.us_per_token * M.sum())
    return {
        "compute_us": compute,
        "cross_gpu_tokens": x_gpu,
        "cross_node_tokens": x_node,
        "nic_traffic": inbound,
        "objective_us": compute
        + cost.us_per_gpu_token * x_gpu
        + cost.us_per_node_token * x_node
        + cost.us_per_nic_assignment * inbound,
        "load_bound": [float(x) for x in M],
    }


def gap(objective_us: float, bound_us: float) -> float:
    """``(objective - bound) / objective``: how far above optimal a plan can be, at most."""
    return float((objective_us - bound_us) / objective_us) if objective_us > 0 else 0.0

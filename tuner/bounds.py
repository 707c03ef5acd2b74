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

Network inbound under a nearest-replica rule (``tuner.ilp.node_inbound``, priced where SGLang's rules score the
plan): ranks of the ``n_e <= min(r_e, N)`` nodes holding expert e send nothing over the network, so the nodes
together receive ``sum_e c_e (N - n_e) / N`` and the busiest at least ``1/N`` of it; the fewest come from giving
the ``P - E`` spare slots to the heaviest experts (each on at most N nodes)::

    max_n inbound(n) >= (1/N) * (sum_e c_e - (1/N) max { sum_e c_e n_e : 1 <= n_e <= N, sum_e n_e <= P })

The bounds ignore that the load and the crossings pull against each other (co-locating every heavy
transition piles load on a few GPUs), so the gap they give is an over-estimate: the plan is at most that far
from optimal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tuner.ilp import CostModel


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


def inbound_bound(counts: np.ndarray, num_gpus: int, gpus_per_node: int, slots_per_gpu: int) -> np.ndarray:
    """``[L]`` lower bound on the busiest node's network inbound under a nearest-replica rule (module
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
    return (c.sum(axis=1) - covered / N) / N


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
    ``network``: the objective prices the busiest node's inbound (nearest-replica rules)."""
    M = load_bound(counts, num_gpus, slots_per_gpu)
    gpn = min(int(gpus_per_node), int(num_gpus))
    inbound = float(inbound_bound(counts, num_gpus, gpn, slots_per_gpu).sum()) if network else 0.0
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
        "node_inbound": inbound,
        "objective_us": compute
        + cost.us_per_gpu_token * x_gpu
        + cost.us_per_node_token * x_node
        + cost.us_per_node_inbound * inbound,
        "load_bound": [float(x) for x in M],
    }


def gap(objective_us: float, bound_us: float) -> float:
    """``(objective - bound) / objective``: how far above optimal a plan can be, at most."""
    return float((objective_us - bound_us) / objective_us) if objective_us > 0 else 0.0

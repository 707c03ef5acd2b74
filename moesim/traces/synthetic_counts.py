"""Counts-only synthetic routing (``with_topk_ids=False`` of :func:`moesim.traces.synthetic.synthetic_trace`):
counts and transitions drawn from multinomials, no per-token arrays (the equations are in
:mod:`moesim.traces.synthetic`).

Dimension legend: T tokens, L recorded MoE layers, E logical experts, k top-k.
"""

from __future__ import annotations

import numpy as np

from moesim.traces.inclusion import grouped_inclusion_probs, inclusion_probs


def _pair_up(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair two count vectors of equal total into (row, col, amount) triples (north-west corner rule)."""
    cr, cc = np.cumsum(rows), np.cumsum(cols)
    cuts = np.union1d(cr, cc)
    cuts = cuts[cuts > 0]
    starts = np.concatenate([[0], cuts[:-1]])
    return (np.searchsorted(cr, starts, side="right"), np.searchsorted(cc, starts, side="right"), cuts - starts)


def cap_layer_counts(rng: np.random.Generator, counts: np.ndarray, T: int) -> np.ndarray:
    """Move assignments off experts holding more than T (a token picks an expert at most once) onto experts
    with room, chosen at random in proportion to their room."""
    over = np.maximum(counts - T, 0)
    if not over.any():
        return counts
    counts = counts - over
    return counts + rng.multivariate_hypergeometric(T - counts, int(over.sum()))


def _cap_columns(rng: np.random.Generator, trans: np.ndarray, T: int) -> None:
    """In place: same as :func:`cap_layer_counts` for the next layer's counts (columns of trans [E, E]),
    keeping every row sum (the current layer's counts)."""
    col = trans.sum(axis=0)
    over = np.maximum(col - T, 0)
    if not over.any():
        return
    removed = np.zeros(trans.shape[0], dtype=np.int64)
    for j in np.nonzero(over)[0]:  # the few overfull experts
        take = rng.multivariate_hypergeometric(trans[:, j], int(over[j]))
        trans[:, j] -= take
        removed += take
    room = T - trans.sum(axis=0)
    added = rng.multivariate_hypergeometric(room, int(removed.sum()))
    r, c, amount = _pair_up(removed, added)
    np.add.at(trans, (r, c), amount)


def direct_counts(
    rng: np.random.Generator,
    p: np.ndarray,
    sigma: np.ndarray,
    affinity: float,
    k: int,
    T: int,
    groups: tuple[int, int] | None = None,
    transitions: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """counts [L, E] and transitions [L-1, E, E] (None unless ``transitions``) without per-token arrays (see
    :mod:`moesim.traces.synthetic`). groups: ``(n_group, topk_group)`` for group-limited routing
    (``synthetic.routing_groups``)."""
    L, E = p.shape
    if k == E:  # every token takes every expert: nothing random
        counts = np.full((L, E), T, dtype=np.int64)
        if not transitions:
            return counts, None
        trans = np.zeros((L - 1, E, E), dtype=np.int64)
        # rank pairing is arbitrary here; pair expert i with sigma(i) (a permutation, so rows and cols = T)
        for l in range(L - 1):
            trans[l, np.arange(E), sigma[l]] = T
        return counts, trans
    q = (inclusion_probs(p, k) if groups is None else grouped_inclusion_probs(p, k, *groups)) / k  # rows sum to 1
    counts = np.empty((L, E), dtype=np.int64)
    if not transitions:
        # the column sums of the transition draw below, drawn as such: a sum of multinomials over one
        # distribution is one multinomial of the summed trials, and capping columns is capping the counts
        counts[0] = cap_layer_counts(rng, rng.multinomial(T * k, q[0]), T)
        for l in range(L - 1):
            stay = rng.binomial(counts[l], affinity)  # [E]
            nxt = rng.multinomial(int((counts[l] - stay).sum()), q[l + 1])
            np.add.at(nxt, sigma[l], stay)
            counts[l + 1] = cap_layer_counts(rng, nxt, T)
        return counts, None
    trans = np.zeros((L - 1, E, E), dtype=np.int64)
    counts[0] = cap_layer_counts(rng, rng.multinomial(T * k, q[0]), T)
    for l in range(L - 1):  # loop over layers only
        stay = rng.binomial(counts[l], affinity)  # [E]
        rest = counts[l] - stay
        trans[l] = rng.multinomial(rest, q[l + 1])  # [E, E], row i sums to rest[i]
        trans[l, np.arange(E), sigma[l]] += stay
        _cap_columns(rng, trans[l], T)
        counts[l + 1] = trans[l].sum(axis=0)
    return counts, trans

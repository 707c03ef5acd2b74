"""Per-token synthetic routing (``with_topk_ids=True`` of :func:`moesim.traces.synthetic.synthetic_trace`): the
exact generative model of :mod:`moesim.traces.synthetic`, sampled in chunks of tokens.

Dimension legend: C a chunk of tokens, L recorded MoE layers, E logical experts, k top-k, M = 3k draws.
"""

from __future__ import annotations

import numpy as np

from moesim.traces.inclusion import P_FLOOR

# tokens per chunk: bounds the [C, 3k, 3k] boolean duplicate test of _draw_distinct to 4.7 MB at k=8
CHUNK_TOKENS = 8192


def _race_topk(keys: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k smallest keys per row, smallest first. keys: [C, E]. Returns [C, k]."""
    part = np.argpartition(keys, k - 1, axis=1)[:, :k]
    return np.take_along_axis(part, np.argsort(np.take_along_axis(keys, part, axis=1), axis=1), axis=1)


def _race_keys(rng: np.random.Generator, inv_p: np.ndarray, C: int) -> np.ndarray:
    """Exponential race: key_e = Exp(1) / p_e. The k smallest keys are k draws without replacement from p in
    draw order (equivalent to Gumbel top-k on log p, without the logs). Returns float32 [C, E]."""
    keys = rng.standard_exponential((C, inv_p.shape[0]), dtype=np.float32)
    keys *= inv_p
    return keys


def _draw_distinct(
    rng: np.random.Generator,
    p: np.ndarray,
    inv_p: np.ndarray,
    C: int,
    k: int,
    excl: np.ndarray | None = None,
    excl_mask: np.ndarray | None = None,
) -> np.ndarray:
    """k distinct draws per token from p, in draw order, skipping each token's excluded experts.

    Sequential sampling without replacement is sampling with replacement and keeping first occurrences
    (skipping excluded ones), so draw M = 3k ids with replacement by inverse CDF ([C, M], O(M log E) per
    token instead of O(E) for the race) and keep the first distinct ones; the rare tokens whose M draws hold
    too few distinct experts (heavy skew) are redrawn exactly by the exponential race. p: [E]; excl, excl_mask:
    [C, k] ids and which of them are excluded. Returns [C, k] (positions past the available draws are 0 when
    fewer than k experts remain; callers do not use them).
    """
    E = p.shape[0]
    M = 3 * k
    cdf = np.cumsum(p)
    D = np.minimum(np.searchsorted(cdf, rng.random((C, M)) * cdf[-1], side="right"), E - 1)  # [C, M]
    earlier = np.tril(np.ones((M, M), dtype=bool), -1)  # earlier[j, i]: draw i precedes draw j
    new = ~((D[:, :, None] == D[:, None, :]) & earlier).any(axis=2)
    need = np.full(C, min(k, E))
    if excl is not None:
        new &= ~((D[:, :, None] == excl[:, None, :]) & excl_mask[:, None, :]).any(axis=2)
        need = np.minimum(k, E - excl_mask.sum(axis=1))
    rank = np.cumsum(new, axis=1) - 1
    cand = np.zeros((C, k), dtype=np.int64)
    r, c = np.nonzero(new & (rank < k))
    cand[r, rank[r, c]] = D[r, c]
    short = np.nonzero(new.sum(axis=1) < need)[0]
    if short.size:  # exact fallback for the few tokens with too few distinct draws
        keys = _race_keys(rng, inv_p, short.size)
        if excl is not None:
            rr = np.broadcast_to(np.arange(short.size)[:, None], (short.size, k))
            m = excl_mask[short]
            keys[rr[m], excl[short][m]] = np.inf
        cand[short] = _race_topk(keys, k)
    return cand


def _merge_followers(follow: np.ndarray, succ: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """A layer's ids [C, k]: a following rank takes its successor ``succ``, the j-th non-following rank the j-th
    of the drawn candidates ``cand`` (all [C, k])."""
    pos = np.cumsum(~follow, axis=1) - 1
    fill = np.take_along_axis(cand, np.clip(pos, 0, follow.shape[1] - 1), axis=1)
    return np.where(follow, succ, fill)


def _sample_chunk(
    rng: np.random.Generator, p: np.ndarray, sigma: np.ndarray, affinity: float, k: int, C: int
) -> np.ndarray:
    """topk_ids [C, L, k] for C tokens."""
    L, _E = p.shape
    inv_p = (1.0 / p).astype(np.float32)
    out = np.empty((C, L, k), dtype=np.int32)
    out[:, 0] = _draw_distinct(rng, p[0], inv_p[0], C, k)
    for l in range(1, L):  # loop over layers, vectorised over tokens
        prev = out[:, l - 1]
        follow = rng.random((C, k)) < affinity  # [C, k]
        succ = sigma[l - 1][prev]  # [C, k], distinct within a row (sigma is a permutation)
        # experts taken by followed ranks are not drawn again
        cand = _draw_distinct(rng, p[l], inv_p[l], C, k, succ, follow)
        out[:, l] = _merge_followers(follow, succ, cand)
    return out


def _sample_chunk_grouped(
    rng: np.random.Generator,
    p: np.ndarray,
    sigma: np.ndarray,
    affinity: float,
    k: int,
    C: int,
    n_group: int,
    topk_group: int,
) -> np.ndarray:
    """topk_ids [C, L, k] for C tokens under group-limited routing (see :mod:`moesim.traces.synthetic`).

    Per layer: race keys [C, E] (smaller = better); group score = product of the group's two smallest keys (the
    sum of its top-2 scores -log key); the topk_group best groups are kept, groups of followed experts first
    (earlier ranks first); followers outside the kept groups stop following; the other ranks take, in order, the
    smallest keys of the kept groups' experts not taken by a follower.
    """
    L, E = p.shape
    S = E // n_group
    inv_p = (1.0 / np.maximum(p, P_FLOOR)).astype(np.float32)
    out = np.empty((C, L, k), dtype=np.int32)
    rows = np.arange(C)
    prio = np.arange(k, dtype=np.float64) - k  # rank r forces its group with score r - k < 0 (keys products > 0)
    for l in range(L):  # loop over layers, vectorised over tokens
        if l:
            follow = rng.random((C, k)) < affinity  # [C, k]
            succ = sigma[l - 1][out[:, l - 1]]  # [C, k]
            succ_group = succ // S
        keys = _race_keys(rng, inv_p[l], C)  # [C, E]
        by_group = keys.reshape(C, n_group, S)  # a view: masking it masks keys
        two = np.partition(by_group, 1, axis=2)[:, :, :2].astype(np.float64)
        score = two[:, :, 0] * two[:, :, 1]  # [C, n_group], smaller = better
        if l:
            for r in range(k - 1, -1, -1):  # descending, so a group followed at several ranks keeps the earliest
                cur = score[rows, succ_group[:, r]]
                score[rows, succ_group[:, r]] = np.where(follow[:, r], prio[r], cur)
        kept = np.argpartition(score, topk_group - 1, axis=1)[:, :topk_group]
        keep = np.zeros((C, n_group), dtype=bool)
        np.put_along_axis(keep, kept, True, axis=1)
        by_group[~keep] = np.inf
        if not l:
            out[:, 0] = _race_topk(keys, k)
            continue
        follow &= np.take_along_axis(keep, succ_group, axis=1)
        fr, fc = np.nonzero(follow)
        keys[fr, succ[fr, fc]] = np.inf  # experts taken by followed ranks are not drawn again
        cand = _race_topk(keys, k)  # kept groups hold >= k experts, so the first k - #followers are finite
        out[:, l] = _merge_followers(follow, succ, cand)
    return out


def sample_topk_ids(
    rng: np.random.Generator,
    p: np.ndarray,
    sigma: np.ndarray,
    affinity: float,
    k: int,
    num_tokens: int,
    groups: tuple[int, int] | None = None,
) -> np.ndarray:
    """topk_ids ``[T, L, k]`` int32 of ``num_tokens`` tokens, drawn in chunks of :data:`CHUNK_TOKENS` (bounded
    memory). p: ``[L, E]`` popularity; sigma: ``[L-1, E]`` successor maps; groups: ``(n_group, topk_group)`` for
    group-limited routing, else None."""
    C = CHUNK_TOKENS
    ids = np.empty((num_tokens, p.shape[0], k), dtype=np.int32)
    for start in range(0, num_tokens, C):  # chunks of tokens, bounded memory
        stop = min(num_tokens, start + C)
        if groups is None:
            ids[start:stop] = _sample_chunk(rng, p, sigma, affinity, k, stop - start)
        else:
            ids[start:stop] = _sample_chunk_grouped(rng, p, sigma, affinity, k, stop - start, *groups)
    return ids

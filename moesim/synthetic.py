"""Seeded synthetic routing traces for shapes no shipped trace covers.

Dimension legend: T tokens, L recorded MoE layers, E logical experts, k top-k, C a chunk of tokens.

Generative model, per recorded layer l:

* Popularity ``p_l[E]``: ``zipf`` gives the expert of popularity rank q (0-based) weight ``(q+1)^-alpha``,
  ranks shuffled per layer (so each layer has its own hot experts, as in the OLMoE data); ``dirichlet``
  draws ``p_l ~ Dirichlet(alpha * 1_E)`` (small alpha = skewed); ``uniform`` is ``1/E``.
* Layer 0: each token draws k distinct experts from ``p_0`` without replacement (exponential race, i.e.
  Plackett-Luce: rank r is the r-th draw).
* Layer l+1, cross-layer affinity ``a`` in [0, 1]: each rank-r choice independently, with probability a,
  follows its layer-l expert i to the *affine successor* ``sigma_l(i)`` (the expert with i's popularity rank
  in layer l+1, so affinity keeps each layer's skew); otherwise the rank is filled from ``p_{l+1}`` without
  replacement among the experts the token does not already have. Transitions are therefore concentrated on
  ``sigma_l`` as a grows; ``a = 0`` makes layers independent.
* Group-limited routing (``n_group > 1`` and ``topk_group < n_group``; DeepSeek-V3: 8 groups of 32 consecutive
  experts, 4 kept): DeepSeek's noaux_tc rule applied to the race, whose keys ``key_e = Exp(1) / p_e`` are the
  scores ``-log key_e`` (Gumbel + log p). A group scores the sum of its top-2 scores, i.e. ranks by the product
  of its two smallest keys (smaller = better); the topk_group best groups are kept and the token takes the k
  smallest keys of their experts (rank r = r-th smallest). With affinity the groups of the followed experts are
  kept first (earlier ranks first); a follower whose group is not among the topk_group kept stops following; the
  other ranks take, in order, the smallest keys of the kept groups' experts that no follower took. Groups of
  one expert limit nothing and count as no grouping.

Two ways to produce it:

* ``with_topk_ids=True``: per-token ids ``[T, L, k]`` sampled in chunks of 8192 tokens (vectorised per chunk:
  3k inverse-CDF draws per token, first distinct ones kept, exponential race for the rare short rows; grouped
  routing draws all E keys per token, ``[C, E]`` float32); exact model. Memory ``T*L*k*4`` bytes and about
  0.2 ms per token at DeepSeek-V3 shape (58 layers; 8192 tokens in 1.7 s without groups, 1.8 s with
  DeepSeek-V3's groups, measured with OMP_NUM_THREADS=1 on one core of a 2-core machine), so meant for T up to
  a few 1e4; use counts-only for more.
* ``with_topk_ids=False``: counts ``[L, E]`` and transitions ``[L-1, E, E]`` drawn directly from
  multinomials, no per-token arrays: layer-0 counts ~ Multinomial(T*k, pi/k) with ``pi_e`` the inclusion
  probability of expert e in a k-subset (:func:`inclusion_probs`), then row i of each transition matrix:
  Binomial(counts_l[i], a) to ``sigma_l(i)`` and the rest Multinomial over the next layer's inclusion
  distribution. An expert given more than T assignments (impossible per token) has the excess moved to
  experts with room. Same expectations as the per-token model up to the approximation of pi and the
  without-replacement exclusion of already-chosen experts; DeepSeek-V3 shape at 524288 tokens in about
  0.3 s with DeepSeek-V3's groups (most of it the 3.7 million binomials of the transition rows; measured on
  the same machine). ``with_transitions=False`` draws only the counts, as the column sums of that draw: layer
  l+1 gets the ``sigma_l``-mapped binomial stays plus one Multinomial(sum of the rest, pi/k) (a sum of
  multinomials over one distribution), capped like the columns; about 0.07 s at the same shape. Same
  distribution, another random stream than with transitions. Under group-limited routing
  pi is :func:`grouped_inclusion_probs` (below) in every layer; the affinity binomial and the capping are
  unchanged, so at high affinity the counts-only transitions are more concentrated than the per-token ones,
  whose followers are dropped when their groups do not fit (DeepSeek-V3, a = 0.6: top-successor share 0.75 vs
  0.71; a = 1: 1.0 vs 0.88; a <= 0.3 within 0.02). With affinity a layer's per-token marginal is no longer its
  grouped pi (followers carry the previous layer's marginal through sigma, which keeps popularity ranks but
  not group-mates); the counts-only binomial does the same, and its counts stay within 6% (L1 / k) of the
  per-token ones at a = 0.3.

Grouped inclusion probabilities (approximation; a two-level version of :func:`inclusion_probs`' constant
arrival threshold). With ``Z_j`` the product of group j's two smallest keys, group j is taken as kept when
``Z_j < zeta`` and expert e of group j as picked when its group is kept and ``key_e < tau``, zeta and tau
constants per layer::

    b_a(t)    = p_a exp(-p_a t - r_a zeta / t)   m_j = sum_{a in j} p_a   r_a = m_j - p_a   w = sqrt(zeta)
    H_j       = P(Z_j < zeta) = 1 - exp(-m_j w) - sum_{a in j} int_0^w b_a(t) dt
    pi_e      = P(key_e < tau, Z_j < zeta) = 1 - exp(-p_e tau) - int_0^min(tau, w) b_e(t) dt
                - [tau > w] * ( (exp(-p_e w) - exp(-p_e tau)) exp(-r_e w)
                                + int_{zeta/tau}^w sum_{a in j, a != e} b_a(t) (1 - exp(-p_e (tau - zeta/t))) dt )
    sum_j H_j = topk_group                sum_e pi_e = k

(``r_a`` summed over the other experts, not subtracted: it can be 1e-25 of ``p_a``; popularities floored at
1e-30 as in the per-token keys). At DeepSeek-V3 shape the result is within 1.5-2.2% of per-token Monte Carlo
frequencies (``sum_e |pi_e - f_e| / k``, 60000 tokens, whose noise alone gives 1.8%; Zipf 0.6-1.2, Dirichlet
0.05-1) where the ungrouped pi is 4.5-15% off. The water-filling alternative (groups selected with
``s_j = min(1, c m_j)``, ``sum_j s_j = topk_group``, ``k m_j / sum_i s_i m_i`` picks in a selected group) was
measured worse than ignoring groups (52% vs 15% at Zipf 1.2): groups are kept for their top-2 keys, not their
mass, and a kept group gets about k / topk_group picks whatever its mass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from moesim.errors import TraceError
from moesim.trace import RoutingTrace, counts_from_topk, transitions_from_topk

if TYPE_CHECKING:
    from moesim.specs import ModelSpec

SKEWS = ("zipf", "dirichlet", "uniform")
DEFAULT_ALPHA = {"zipf": 1.2, "dirichlet": 1.0, "uniform": 0.0}
# A simulated step's synthetic trace (``moesim simulate --synthetic``, ``moesim whatif``) is counts-only and draws
# at most this many tokens per layer: the relative sampling noise of one expert's count is then about
# 1/sqrt(2^18 * k / E) (1.1% at DeepSeek-V3's k=8, E=256), well below the skew being modelled.
MAX_SYNTHETIC_TOKENS = 1 << 18
# tokens per chunk: bounds the [C, 3k, 3k] boolean duplicate test of _draw_distinct to 4.7 MB at k=8
_CHUNK_TOKENS = 8192
# group-limited routing: popularities are floored here (keys stay finite in float32, Exp(1) * 1e30 < 3.4e38)
_P_FLOOR = 1e-30
# grouped inclusion probabilities: Gauss-Legendre nodes on [0, 1] (used in log t), integrand cut-off exp(-_CUT);
# 12 nodes agree with 96 to within 5e-5 of L1 / k (DeepSeek-V3 shape, Zipf 0.6-3, Dirichlet 0.02-1) and 4e-3 at
# Dirichlet 0.01 (16 nodes: 4e-4, 24: 1e-5), inside the approximation's own 1.5-2.2%, at half of 24 nodes' cost
_GL_U, _GL_W = np.polynomial.legendre.leggauss(12)
_GL_U, _GL_W = 0.5 * (_GL_U + 1.0), 0.5 * _GL_W
_CUT = 50.0


def parse_synthetic(spec: str) -> dict[str, Any]:
    """Parse a skew spec: ``"zipf:1.2"``, ``"dirichlet:0.3"``, ``"uniform"``, optionally with
    ``,affinity=0.5`` and ``,seed=3``. Returns keyword arguments of :func:`synthetic_trace`
    (``skew``, ``alpha`` and any of ``affinity``, ``seed``)."""
    origin = f"synthetic spec {spec!r}"
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not parts:
        raise TraceError(f"{origin}: skew: empty; expected one of {', '.join(SKEWS)} (e.g. zipf:1.2)")
    head, sep, arg = parts[0].partition(":")
    skew = head.strip().lower()
    if skew not in SKEWS:
        raise TraceError(f"{origin}: skew: unknown {skew!r}; expected one of {', '.join(SKEWS)} (e.g. zipf:1.2)")
    out: dict[str, Any] = {"skew": skew, "alpha": DEFAULT_ALPHA[skew]}
    if sep and not arg.strip() and skew != "uniform":  # "zipf:" names a parameter and gives none
        raise TraceError(f"{origin}: alpha: missing after {skew!r}: (e.g. {skew}:{DEFAULT_ALPHA[skew]:g})")
    if arg:
        if skew == "uniform":
            raise TraceError(f"{origin}: alpha: uniform takes no parameter")
        try:
            out["alpha"] = float(arg)
        except ValueError:
            raise TraceError(f"{origin}: alpha: not a number: {arg!r}") from None
    for p in parts[1:]:
        key, eq, val = p.partition("=")
        key = key.strip()
        if not eq or key not in ("affinity", "seed"):
            raise TraceError(f"{origin}: {key or p}: unknown option; expected affinity=A or seed=N")
        try:
            out[key] = int(val) if key == "seed" else float(val)
        except ValueError:
            raise TraceError(f"{origin}: {key}: not a number: {val!r}") from None
    _check_params(origin, out["skew"], out["alpha"], out.get("affinity", 0.0), out.get("seed", 0))
    return out


# Largest synthetic trace: 2^40 tokens (T * k assignments must stay within numpy's int64 multinomial draws; a
# simulated step draws at most MAX_SYNTHETIC_TOKENS anyway).
MAX_TOKENS = 1 << 40


def _check_params(origin: str, skew: str, alpha: float, affinity: float, seed: int = 0) -> None:
    if skew not in SKEWS:
        raise TraceError(f"{origin}: skew: unknown {skew!r}; expected one of {', '.join(SKEWS)}")
    if skew == "zipf" and not (np.isfinite(alpha) and alpha >= 0):
        raise TraceError(f"{origin}: alpha: zipf exponent must be >= 0, got {alpha}")
    if skew == "dirichlet" and not (np.isfinite(alpha) and alpha > 0):
        raise TraceError(f"{origin}: alpha: dirichlet concentration must be > 0, got {alpha}")
    if not (0.0 <= affinity <= 1.0):
        raise TraceError(f"{origin}: affinity: must be in [0, 1], got {affinity}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TraceError(f"{origin}: seed: must be an integer >= 0, got {seed!r}")


def popularity(rng: np.random.Generator, num_experts: int, num_layers: int, skew: str,
               alpha: float) -> np.ndarray:
    """Per-layer expert popularity ``p[L, E]`` (rows sum to 1); see the module docstring."""
    E, L = num_experts, num_layers
    if skew == "uniform":
        return np.full((L, E), 1.0 / E)
    if skew == "zipf":
        w = (np.arange(1, E + 1, dtype=np.float64)) ** (-alpha)
        w /= w.sum()
        perm = np.argsort(rng.random((L, E)), axis=1)  # one random permutation per layer
        p = np.empty((L, E))
        np.put_along_axis(p, perm, np.broadcast_to(w, (L, E)), axis=1)
        return p
    p = rng.dirichlet(np.full(E, alpha), size=L)
    # very small alpha can underflow some entries to 0; keep every expert reachable
    p = np.maximum(p, 1e-300)
    return p / p.sum(axis=1, keepdims=True)


def successor_maps(p: np.ndarray) -> np.ndarray:
    """``sigma[L-1, E]``: expert i of layer l -> the expert with i's popularity rank in layer l+1."""
    order = np.argsort(-p, axis=1, kind="stable")  # order[l, q] = expert of popularity rank q
    rank = np.argsort(order, axis=1)  # rank[l, e]
    return np.take_along_axis(order[1:], rank[:-1], axis=1)


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


def _draw_distinct(rng: np.random.Generator, p: np.ndarray, inv_p: np.ndarray, C: int, k: int,
                   excl: np.ndarray | None = None, excl_mask: np.ndarray | None = None) -> np.ndarray:
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


def _sample_chunk(rng: np.random.Generator, p: np.ndarray, sigma: np.ndarray, affinity: float, k: int,
                  C: int) -> np.ndarray:
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
        # the j-th non-following rank takes the j-th draw
        pos = np.cumsum(~follow, axis=1) - 1
        fill = np.take_along_axis(cand, np.clip(pos, 0, k - 1), axis=1)
        out[:, l] = np.where(follow, succ, fill)
    return out


def _sample_chunk_grouped(rng: np.random.Generator, p: np.ndarray, sigma: np.ndarray, affinity: float, k: int,
                          C: int, n_group: int, topk_group: int) -> np.ndarray:
    """topk_ids [C, L, k] for C tokens under group-limited routing (see the module docstring).

    Per layer: race keys [C, E] (smaller = better); group score = product of the group's two smallest keys (the
    sum of its top-2 scores -log key); the topk_group best groups are kept, groups of followed experts first
    (earlier ranks first); followers outside the kept groups stop following; the other ranks take, in order, the
    smallest keys of the kept groups' experts not taken by a follower.
    """
    L, E = p.shape
    S = E // n_group
    inv_p = (1.0 / np.maximum(p, _P_FLOOR)).astype(np.float32)
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
        pos = np.cumsum(~follow, axis=1) - 1
        fill = np.take_along_axis(cand, np.clip(pos, 0, k - 1), axis=1)
        out[:, l] = np.where(follow, succ, fill)
    return out


def inclusion_probs(p: np.ndarray, k: int) -> np.ndarray:
    """Probability ``pi[L, E]`` that expert e is among a token's k draws without replacement from p[l].

    Exponential-race (Poisson-sampling) approximation: expert e is drawn when its arrival ``Exp(1)/p_e`` beats
    the k-th arrival time, taken as a constant lambda: ``pi_e = 1 - exp(-lambda * p_e)``, lambda solved so that
    ``sum_e pi_e = k``. Exact for uniform p (``pi = k/E``), within a few percent of Monte Carlo for Zipf 1.2
    at E=256, k=8; no sampling noise, so it does not add spurious skew. Rows sum to k.
    """
    L, E = p.shape
    if k >= E:
        return np.ones((L, E))
    lo = np.zeros(L)
    hi = np.full(L, 1.0)
    def f(lam: np.ndarray) -> np.ndarray:
        return (1.0 - np.exp(-lam[:, None] * p)).sum(axis=1)

    while (f(hi) < k).any():
        hi = np.where(f(hi) < k, hi * 2.0, hi)
    for _ in range(80):  # bisection, all layers at once
        mid = 0.5 * (lo + hi)
        below = f(mid) < k
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    pi = 1.0 - np.exp(-hi[:, None] * p)
    return pi * (k / pi.sum(axis=1, keepdims=True))


def _sum_others(x: np.ndarray) -> np.ndarray:
    """``out[..., i] = sum_{j != i} x[..., j]`` without the cancellation of ``x.sum() - x[i]`` (prefix + suffix
    sums): the rest of a group can be 1e-25 of an expert holding nearly all of it."""
    c = np.cumsum(x, axis=-1)
    pre = np.concatenate([np.zeros_like(c[..., :1]), c[..., :-1]], axis=-1)
    rc = np.cumsum(x[..., ::-1], axis=-1)[..., ::-1]
    return pre + np.concatenate([rc[..., 1:], np.zeros_like(rc[..., :1])], axis=-1)


def _log_root(f: Any, target: float, x0: np.ndarray, rtol: float = 1e-12, max_iter: int = 60) -> np.ndarray:
    """Per-row root of the increasing ``f(x) = target`` (x > 0), vectorised over rows.

    A bracket ``[lo, hi]`` around x0 (steps of x16), then the Illinois variant of regula falsi in ``u = log x``
    (superlinear: 9-11 evaluations of ``f`` in all at DeepSeek-V3 shape, where bisection to the same accuracy
    takes about 45), stopped when every row has ``|f(x) - target| <= rtol * target``.
    """
    lo, hi = x0.copy(), x0.copy()
    f_hi = f(hi)
    f_lo = f_hi.copy()  # both ends start at x0: one evaluation
    for _ in range(64):
        low = f_hi < target
        if not low.any():
            break
        hi = np.where(low, hi * 16.0, hi)
        f_hi = np.where(low, f(hi), f_hi)
    for _ in range(64):
        high = f_lo > target
        if not high.any():
            break
        lo = np.where(high, lo / 16.0, lo)
        f_lo = np.where(high, f(lo), f_lo)
    u_lo, u_hi = np.log(lo), np.log(hi)
    g_lo, g_hi = f_lo - target, f_hi - target  # g_lo <= 0 <= g_hi
    side = np.zeros(x0.shape, dtype=np.int8)  # which end moved last: -1 lo, +1 hi
    u = np.where(g_hi - g_lo > 0, u_hi - g_hi * (u_hi - u_lo) / np.where(g_hi > g_lo, g_hi - g_lo, 1.0), u_hi)
    for _ in range(max_iter):
        g = f(np.exp(u)) - target
        if (np.abs(g) <= rtol * target).all():
            break
        up = g > 0  # the root is below u: u becomes hi
        # Illinois: an end kept twice in a row has its g halved, so the secant does not stall on that side
        g_lo = np.where(up & (side == 1), 0.5 * g_lo, g_lo)
        g_hi = np.where(~up & (side == -1), 0.5 * g_hi, g_hi)
        u_hi, g_hi = np.where(up, u, u_hi), np.where(up, g, g_hi)
        u_lo, g_lo = np.where(up, u_lo, u), np.where(up, g_lo, g)
        side = np.where(up, 1, -1).astype(np.int8)
        den = g_hi - g_lo
        u = np.where(den > 0, u_hi - g_hi * (u_hi - u_lo) / np.where(den > 0, den, 1.0), 0.5 * (u_lo + u_hi))
    return np.exp(u)


def grouped_inclusion_probs(p: np.ndarray, k: int, n_group: int, topk_group: int) -> np.ndarray:
    """``pi[L, E]`` under group-limited routing (groups of ``E / n_group`` consecutive experts, ``topk_group``
    kept per token, then top-k over the kept groups' experts); rows sum to k.

    Two-level Poisson-sampling approximation (the module docstring has the equations): a group is kept when the
    product of its two smallest race keys is below a constant ``zeta`` (``sum_j P(Z_j < zeta) = topk_group``),
    and expert e is picked when its group is kept and its key is below a constant ``tau`` (``sum_e pi_e = k``).
    ``topk_group = n_group`` gives :func:`inclusion_probs`'s model. The integrals are Gauss-Legendre in log t.
    """
    L, E = p.shape
    S = E // n_group
    if topk_group >= n_group or S < 2:  # no group limit
        return inclusion_probs(p, k)
    pg = np.maximum(p, _P_FLOOR).reshape(L, n_group, S)
    rest = _sum_others(pg)  # [L, J, S]: mass of the other experts of e's group
    m = pg.sum(axis=2)  # [L, J]

    def span(zeta: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # [lo, hi] within [0, upper] outside which every b_a(t) < p_a exp(-_CUT): exp(-rest_a zeta / t) below
        # t = rest_a zeta / _CUT, exp(-p_a t) above t = _CUT / p_a
        lo_a = rest * (zeta[:, None, None] / _CUT)
        hi_a = np.minimum(upper[..., None], _CUT / pg)
        ok = lo_a < hi_a
        hi = np.where(ok.any(axis=2), np.where(ok, hi_a, 0.0).max(axis=2), upper)
        lo = np.where(ok, lo_a, np.inf).min(axis=2)
        return np.clip(lo, hi * np.exp(-80.0), hi * np.exp(-1e-3)), hi

    def nodes(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ln = np.log(hi / lo)[..., None]
        t = lo[..., None] * np.exp(ln * _GL_U)  # [L, J, N]
        return t[:, :, None, :], (t * ln * _GL_W)[:, :, None, :]

    pg4, neg_pg4, rest4 = pg[..., None], -pg[..., None], rest[..., None]

    # the [L, J, S, N] arrays below are the cost of this function: computed in place, in the same operations
    def b(zeta: np.ndarray, t: np.ndarray) -> np.ndarray:
        # b_a(t) = p_a exp(-p_a t - rest_a zeta / t): [L, J, S, N]
        out = neg_pg4 * t
        out -= rest4 * (zeta[:, None, None, None] / t)
        np.exp(out, out=out)
        out *= pg4
        return out

    def kept(w: np.ndarray) -> np.ndarray:  # H_j = P(Z_j < w^2): [L, J]
        zeta = w * w
        t, dt = nodes(*span(zeta, np.broadcast_to(w[:, None], m.shape)))
        bt = b(zeta, t)
        bt *= dt
        return np.clip(-np.expm1(-m * w[:, None]) - bt.sum(axis=(2, 3)), 0.0, 1.0)

    def incl(w: np.ndarray, tau: np.ndarray) -> np.ndarray:  # P(key_e < tau, Z_j < w^2): [L, J, S]
        zeta = w * w
        W, T = w[:, None, None], tau[:, None, None]
        X = np.broadcast_to(w[:, None], m.shape)
        t, dt = nodes(*span(zeta, np.minimum(X, tau[:, None])))
        bt = b(zeta, t)
        bt *= dt
        i1 = bt.sum(axis=3)
        far = T > W
        i2 = np.where(far, (np.exp(-pg * W) - np.exp(-pg * T)) * np.exp(-rest * W), 0.0)
        lo, hi = span(zeta, X)
        t, dt = nodes(np.minimum(np.maximum(lo, (zeta / tau)[:, None]), hi * np.exp(-1e-3)), hi)
        bt = b(zeta, t)
        others = bt.sum(axis=2, keepdims=True) - bt  # sum over a != e
        np.maximum(others, 0.0, out=others)
        fac = np.maximum(T[..., None] - zeta[:, None, None, None] / t, 0.0)
        fac = neg_pg4 * fac
        np.expm1(fac, out=fac)
        np.negative(fac, out=fac)  # 1 - exp(-p_e (tau - zeta / t))
        others *= fac
        others *= dt
        i3 = np.where(far, others.sum(axis=3), 0.0)
        return np.clip(-np.expm1(-pg * T) - i1 - i2 - i3, 0.0, 1.0)

    w = _log_root(lambda x: kept(x).sum(axis=1), topk_group, np.full(L, float(n_group)))
    if k >= topk_group * S:  # every expert of the kept groups is picked
        pi = np.repeat(kept(w), S, axis=1)
    else:
        tau = _log_root(lambda x: incl(w, x).sum(axis=(1, 2)), k, np.full(L, float(k * n_group / topk_group)))
        pi = incl(w, tau).reshape(L, E)
    return pi * (k / pi.sum(axis=1, keepdims=True))


def _pair_up(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair two count vectors of equal total into (row, col, amount) triples (north-west corner rule)."""
    cr, cc = np.cumsum(rows), np.cumsum(cols)
    cuts = np.union1d(cr, cc)
    cuts = cuts[cuts > 0]
    starts = np.concatenate([[0], cuts[:-1]])
    return (np.searchsorted(cr, starts, side="right"), np.searchsorted(cc, starts, side="right"), cuts - starts)


def _cap_layer_counts(rng: np.random.Generator, counts: np.ndarray, T: int) -> np.ndarray:
    """Move assignments off experts holding more than T (a token picks an expert at most once) onto experts
    with room, chosen at random in proportion to their room."""
    over = np.maximum(counts - T, 0)
    if not over.any():
        return counts
    counts = counts - over
    return counts + rng.multivariate_hypergeometric(T - counts, int(over.sum()))


def _cap_columns(rng: np.random.Generator, trans: np.ndarray, T: int) -> None:
    """In place: same as :func:`_cap_layer_counts` for the next layer's counts (columns of trans [E, E]),
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


def _direct_counts(rng: np.random.Generator, p: np.ndarray, sigma: np.ndarray, affinity: float, k: int,
                   T: int, groups: tuple[int, int] | None = None,
                   transitions: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """counts [L, E] and transitions [L-1, E, E] (None unless ``transitions``) without per-token arrays (see
    module docstring). groups: ``(n_group, topk_group)`` for group-limited routing (:func:`_routing_groups`)."""
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
        counts[0] = _cap_layer_counts(rng, rng.multinomial(T * k, q[0]), T)
        for l in range(L - 1):
            stay = rng.binomial(counts[l], affinity)  # [E]
            nxt = rng.multinomial(int((counts[l] - stay).sum()), q[l + 1])
            np.add.at(nxt, sigma[l], stay)
            counts[l + 1] = _cap_layer_counts(rng, nxt, T)
        return counts, None
    trans = np.zeros((L - 1, E, E), dtype=np.int64)
    counts[0] = _cap_layer_counts(rng, rng.multinomial(T * k, q[0]), T)
    for l in range(L - 1):  # loop over layers only
        stay = rng.binomial(counts[l], affinity)  # [E]
        rest = counts[l] - stay
        trans[l] = rng.multinomial(rest, q[l + 1])  # [E, E], row i sums to rest[i]
        trans[l, np.arange(E), sigma[l]] += stay
        _cap_columns(rng, trans[l], T)
        counts[l + 1] = trans[l].sum(axis=0)
    return counts, trans


def _routing_groups(model: ModelSpec, E: int) -> tuple[int, int] | None:
    """``(n_group, topk_group)`` when the model limits each token to some of its expert groups, else None.

    Groups of one expert limit nothing (the topk_group >= k best experts hold the top-k), so they count as none.
    """
    n_group, topk_group = int(getattr(model, "n_group", 1)), int(getattr(model, "topk_group", 1))
    if n_group > 1 and topk_group < n_group and E // n_group >= 2:
        return n_group, topk_group
    return None


def step_synthetic_tokens(tokens_per_gpu: int, num_gpus: int) -> int:
    """Tokens per layer of a simulated step's synthetic trace: ``min(tokens_per_gpu * G, 2^18)``."""
    return min(tokens_per_gpu * num_gpus, MAX_SYNTHETIC_TOKENS)


def synthetic_trace(model: ModelSpec, num_tokens: int, skew: str = "zipf", alpha: float = 1.2,
                    affinity: float = 0.0, seed: int = 0, layers: Sequence[int] | None = None,
                    with_topk_ids: bool = True, with_transitions: bool = True) -> RoutingTrace:
    """Seeded synthetic trace of ``num_tokens`` tokens for ``model`` (its experts, top-k, MoE layers).

    layers: model layer indices to record (default: all MoE layers). with_topk_ids: keep per-token ids
    ``[T, L, k]`` (exact per-token model); False draws counts and transitions directly (fast at any T).
    with_transitions (counts-only): False draws the counts alone (no ``[L-1, E, E]`` matrices; what the
    simulator reads), from the same distribution but another random stream than with transitions.
    Same arguments and seed give the same trace.
    """
    origin = f"synthetic {skew}:{alpha} affinity={affinity} seed={seed}"
    _check_params(origin, skew, float(alpha), float(affinity), seed)
    if num_tokens < 1:
        raise TraceError(f"{origin}: num_tokens: must be >= 1, got {num_tokens}")
    if num_tokens > MAX_TOKENS:
        raise TraceError(f"{origin}: num_tokens: must be <= {MAX_TOKENS:,} (moesim's limit), got {num_tokens:,}")
    E, k = int(model.num_experts), int(model.top_k)
    lay = tuple(int(x) for x in (model.moe_layers if layers is None else layers))
    if not lay:
        raise TraceError(f"{origin}: layers: none to record")
    moe = {int(x) for x in model.moe_layers}
    bad = [x for x in lay if x not in moe]
    if bad:
        raise TraceError(f"{origin}: layers: {bad} are not MoE layers of {model.slug}")
    groups = _routing_groups(model, E)
    if groups is not None and k > groups[1] * (E // groups[0]):
        raise TraceError(f"{origin}: top_k: {k} exceeds the {groups[1] * (E // groups[0])} experts of "
                         f"topk_group={groups[1]} groups")
    rng = np.random.default_rng(seed)
    p = popularity(rng, E, len(lay), skew, float(alpha))
    sigma = successor_maps(p)
    source = f"{origin} model={model.slug} T={num_tokens}"
    if not with_topk_ids:
        counts, trans = _direct_counts(rng, p, sigma, float(affinity), k, int(num_tokens), groups,
                                       transitions=bool(with_transitions))
        return RoutingTrace(model=model.slug, num_experts=E, top_k=k, layers=lay, counts=counts,
                            num_tokens=int(num_tokens), transitions=trans, topk_ids=None, source=source)
    C = _CHUNK_TOKENS
    ids = np.empty((num_tokens, len(lay), k), dtype=np.int32)
    for start in range(0, num_tokens, C):  # chunks of tokens, bounded memory
        stop = min(num_tokens, start + C)
        if groups is None:
            ids[start:stop] = _sample_chunk(rng, p, sigma, float(affinity), k, stop - start)
        else:
            ids[start:stop] = _sample_chunk_grouped(rng, p, sigma, float(affinity), k, stop - start, *groups)
    return RoutingTrace(model=model.slug, num_experts=E, top_k=k, layers=lay, counts=counts_from_topk(ids, E),
                        num_tokens=int(num_tokens), transitions=transitions_from_topk(ids, E), topk_ids=ids,
                        source=source)


def drift_trace(trace: RoutingTrace, sigma: float, seed: int = 0, steps: int = 1) -> list[RoutingTrace]:
    """``steps`` successive counts-only traces whose expert popularity drifts from ``trace``'s: a random walk
    in log popularity, each step multiplying every expert's share by ``exp(sigma * z)``, ``z ~ N(0, 1)``
    independent per layer and expert, then drawing ``num_tokens * top_k`` assignments from it (a token picks an
    expert at most once: counts are capped at ``num_tokens``). Seeded; transitions are not kept."""
    origin = f"drift sigma={sigma} seed={seed}"
    if not (np.isfinite(sigma) and sigma >= 0):
        raise TraceError(f"{origin}: sigma: must be >= 0, got {sigma}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise TraceError(f"{origin}: steps: must be an integer >= 1, got {steps!r}")
    _check_params(origin, "uniform", 0.0, 0.0, seed)
    rng = np.random.default_rng(seed)
    counts = np.asarray(trace.counts, dtype=np.float64)
    log_p = np.log(np.maximum(counts, 0.5) / counts.sum(axis=1, keepdims=True))
    T, k = int(trace.num_tokens), int(trace.top_k)
    out = []
    for step in range(int(steps)):
        log_p = log_p + sigma * rng.standard_normal(log_p.shape)
        p = np.exp(log_p - log_p.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        drawn = np.stack([_cap_layer_counts(rng, rng.multinomial(T * k, row), T) for row in p])
        out.append(RoutingTrace(model=trace.model, num_experts=trace.num_experts, top_k=k, layers=trace.layers,
                                counts=drawn.astype(np.int64), num_tokens=T,
                                source=f"{trace.source} + {origin} step={step + 1}"))
    return out

"""Per-expert token counts of AIConfigurator's synthetic routings, as its MoE collectors generate them.

AIConfigurator (ai-dynamo/aiconfigurator, ``collector/helper.py``) times fused-MoE kernels under two synthetic
routings, and a measured row only means something once we know how many rows each *local* expert received.
This module rebuilds those counts (our own implementation of the rules the collector documents; no code is
taken from it). Dimension legend: T tokens per rank, k top-k, E experts, ``ep`` EP ranks, E_l = E / ep local
experts; the emulated rank keeps experts ``[0, E_l)``.

``balanced`` (``balanced_logits``): ``stride = ceil(E / k)``; token t picks, for j in [0, k)::

    e(t, j) = (t + j * stride) mod E                          if T >= stride
    e(t, j) = floor((t * stride / T + j * stride) mod E)      otherwise

``power_law_<a>`` (``_generate_power_law_distribution``): E per-expert loads drawn by inverse-CDF sampling of a
power law with exponent ``a`` on ``[1, 0.8 T]`` (``[0.01, 2]`` when ``T k <= E``), scaled to ``T k`` and
rounded; each load is clamped at T (an expert sees a token at most once) and the overflow, and the rounding
remainder, are spread one at a time, rank by rank, over the least (or, to remove, most) loaded experts; then
the EP rank with the largest load is swapped into rank 0. The collector draws unseeded and reports the mean
latency of 5 draws; :func:`local_counts` returns ``draws`` seeded draws so a prediction can average the same way.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from moesim.errors import field_error

__all__ = [
    "DISTRIBUTIONS",
    "balanced_counts",
    "local_counts",
    "parse_distribution",
    "power_law_counts",
    "touched_tokens",
]

DISTRIBUTIONS = ("balanced", "power_law_<alpha>")
# The collector averages its latency over this many power-law draws (helper.py, ``num_samples``).
COLLECTOR_DRAWS = 5


def parse_distribution(name: str) -> float | None:
    """``None`` for ``balanced``, the exponent ``a`` for ``power_law_<a>``; ``SpecError`` otherwise."""
    if name == "balanced":
        return None
    if name.startswith("power_law_"):
        try:
            alpha = float(name[len("power_law_") :])
        except ValueError:
            alpha = float("nan")
        if math.isfinite(alpha) and alpha > 0 and alpha != 1.0:
            return alpha
    raise field_error("routing", "distribution", f"must be 'balanced' or 'power_law_<alpha>', got {name!r}")


def _balanced_choices(tokens: int, top_k: int, num_experts: int) -> np.ndarray:
    """``[T, k]`` experts of each token under the collector's ``balanced`` routing (module docstring)."""
    stride = math.ceil(num_experts / top_k)
    t = np.arange(tokens, dtype=np.float64)[:, None]
    j = np.arange(top_k, dtype=np.float64)[None, :]
    if tokens >= stride:
        sel = (t + j * stride).astype(np.int64) % num_experts
    else:
        sel = np.floor(np.mod(t * stride / tokens + j * stride, num_experts)).astype(np.int64)
    return sel


def balanced_counts(tokens: int, top_k: int, num_experts: int) -> np.ndarray:
    """``[E]`` rows per expert of the collector's ``balanced`` routing (equation in the module docstring)."""
    sel = _balanced_choices(tokens, top_k, num_experts)
    return np.bincount(sel.ravel(), minlength=num_experts).astype(np.float64)


def touched_tokens(tokens: int, top_k: int, num_experts: int, distribution: str, counts: np.ndarray) -> np.ndarray:
    """``[D]`` tokens of rank 0's workload where the SGLang collector keeps only the tokens with at least one
    local expert (``build_rank0_workloads``: the others are never sent to the rank), for ``[D, E_l]`` local
    ``counts`` (:func:`local_counts`).

    ``balanced``: counted exactly from the choices. ``power_law``: the collector assigns each expert's m_e
    tokens without our knowing which, so this is the expectation for m_e distinct tokens drawn at random::

        T' = T (1 - prod_e (1 - m_e / T))
    """
    m = np.asarray(counts, dtype=np.float64)
    if parse_distribution(distribution) is None:
        sel = _balanced_choices(tokens, top_k, num_experts)
        hit = float((sel < m.shape[-1]).any(axis=1).sum())
        return np.full(m.shape[:-1], hit)
    miss = np.prod(np.clip(1.0 - m / max(tokens, 1), 0.0, 1.0), axis=-1)
    return tokens * (1.0 - miss)


def _level(row: np.ndarray, todo: int, bound: float) -> int:
    """Water-fill ``todo`` rows onto ``row`` (in place) without passing ``bound``: the same end state as
    giving one row at a time to the least loaded expert. Returns how many rows could not be placed."""
    room = np.maximum(bound - row, 0.0)
    if todo <= 0 or room.sum() <= 0:
        return max(todo, 0)
    todo_left = int(min(todo, room.sum()))
    lo, hi = float(row.min()), float(bound)
    while hi - lo > 1:  # smallest integer level L with need(L) >= todo
        mid = math.floor((lo + hi) / 2)
        if np.minimum(np.maximum(mid - row, 0.0), room).sum() >= todo_left:
            hi = mid
        else:
            lo = mid
    base = np.minimum(np.maximum((hi - 1) - row, 0.0), room)
    row += base
    rest = todo_left - int(base.sum())
    for e in np.flatnonzero((row < hi) & (row < bound))[:rest]:
        row[e] += 1
    return todo - todo_left


def _spread(counts: np.ndarray, amount: int, ep: int, bound: float, add: bool) -> np.ndarray:
    """Add (``add``) or remove ``amount`` rows, shared out over the EP ranks in turn, each rank giving them to
    its least loaded experts (taking them from its most loaded), never above ``bound`` nor below 0."""
    per_rank = counts.reshape(ep, -1).copy()
    full_rounds, rest = divmod(amount, ep)
    for rank in range(ep):
        todo = full_rounds + (1 if rank < rest else 0)
        if add:
            _level(per_rank[rank], todo, bound)
        else:  # removing from the most loaded is filling the complement
            flipped = bound - per_rank[rank]
            _level(flipped, todo, bound)
            per_rank[rank] = bound - flipped
    return per_rank.reshape(-1)


def power_law_counts(
    tokens: int, top_k: int, num_experts: int, ep: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """``[E]`` rows per expert of one ``power_law_<alpha>`` draw (equation in the module docstring)."""
    if tokens * top_k > num_experts:
        lo, hi = 1.0, tokens * 0.8
    else:
        lo, hi = 0.01, 2.0
    u = rng.random(num_experts)
    e1 = 1.0 - alpha
    x = ((hi**e1 - lo**e1) * u + lo**e1) ** (1.0 / e1)
    target = tokens * top_k
    counts = np.rint(x / x.sum() * target)
    overflow = int(np.maximum(counts - tokens, 0).sum())
    counts = np.minimum(counts, tokens)
    if overflow > 0:
        counts = _spread(counts, overflow, ep, tokens, add=True)
    delta = int(target - counts.sum())
    if delta > 0:
        counts = _spread(counts, delta, ep, tokens, add=True)
    elif delta < 0:
        counts = _spread(counts, -delta, ep, tokens, add=False)
    per_rank = counts.reshape(ep, -1)
    top = int(per_rank.sum(axis=1).argmax())
    if top != 0:
        per_rank[[0, top]] = per_rank[[top, 0]]
    return per_rank.reshape(-1)


@lru_cache(maxsize=65536)
def local_counts(
    tokens: int,
    top_k: int,
    num_experts: int,
    ep: int,
    distribution: str,
    draws: int = COLLECTOR_DRAWS,
    seed: int = 0,
) -> np.ndarray:
    """``[D, E_l]`` rows of each local expert of EP rank 0, for D draws (1 for ``balanced``).

    Power-law draws are seeded by ``(seed, tokens, top_k, num_experts, alpha, draw)`` only, so every EP size of
    one shape sees the same global draws, as one routing seen by differently sized EP groups would. Results
    are cached and read-only.
    """
    if num_experts % ep:
        raise field_error("routing", "ep", f"{num_experts} experts do not split over {ep} EP ranks")
    local = num_experts // ep
    alpha = parse_distribution(distribution)
    if alpha is None:
        out = balanced_counts(tokens, top_k, num_experts)[None, :local]
        out.flags.writeable = False
        return out
    out = np.empty((draws, local))
    for d in range(draws):
        key = (seed, tokens, top_k, num_experts, int(round(alpha * 1000)), d)
        out[d] = power_law_counts(tokens, top_k, num_experts, ep, alpha, np.random.default_rng(key))[:local]
    out.flags.writeable = False
    return out

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
  probability of expert e in a k-subset (:func:`.inclusion.inclusion_probs`), then row i of each transition matrix:
  Binomial(counts_l[i], a) to ``sigma_l(i)`` and the rest Multinomial over the next layer's inclusion
  distribution. An expert given more than T assignments (impossible per token) has the excess moved to
  experts with room. Same expectations as the per-token model up to the approximation of pi and the
  without-replacement exclusion of already-chosen experts; DeepSeek-V3 shape at 524288 tokens in about
  0.3 s with DeepSeek-V3's groups (most of it the 3.7 million binomials of the transition rows; measured on
  the same machine). ``with_transitions=False`` draws only the counts, as the column sums of that draw: layer
  l+1 gets the ``sigma_l``-mapped binomial stays plus one Multinomial(sum of the rest, pi/k) (a sum of
  multinomials over one distribution), capped like the columns; about 0.07 s at the same shape. Same
  distribution, another random stream than with transitions. Under group-limited routing
  pi is :func:`.inclusion.grouped_inclusion_probs` in every layer; the affinity binomial and the capping are
  unchanged, so at high affinity the counts-only transitions are more concentrated than the per-token ones,
  whose followers are dropped when their groups do not fit (DeepSeek-V3, a = 0.6: top-successor share 0.75 vs
  0.71; a = 1: 1.0 vs 0.88; a <= 0.3 within 0.02). With affinity a layer's per-token marginal is no longer its
  grouped pi (followers carry the previous layer's marginal through sigma, which keeps popularity ranks but
  not group-mates); the counts-only binomial does the same, and its counts stay within 6% (L1 / k) of the
  per-token ones at a = 0.3.

The per-token sampler is :mod:`moesim.traces.synthetic_sampling`, the counts-only one
:mod:`moesim.traces.synthetic_counts`, and the inclusion probabilities (with their grouped equations)
:mod:`moesim.traces.inclusion`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from moesim.errors import TraceError
from moesim.traces.synthetic_counts import cap_layer_counts, direct_counts
from moesim.traces.synthetic_sampling import sample_topk_ids
from moesim.traces.trace import RoutingTrace

if TYPE_CHECKING:
    from moesim.specs import ModelSpec

SKEWS = ("zipf", "dirichlet", "uniform")
DEFAULT_ALPHA = {"zipf": 1.2, "dirichlet": 1.0, "uniform": 0.0}
# A simulated step's synthetic trace (``moesim simulate --synthetic``, ``moesim whatif``) is counts-only and draws
# at most this many tokens per layer: the relative sampling noise of one expert's count is then about
# 1/sqrt(2^18 * k / E) (1.1% at DeepSeek-V3's k=8, E=256), well below the skew being modelled.
MAX_SYNTHETIC_TOKENS = 1 << 18


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


def popularity(rng: np.random.Generator, num_experts: int, num_layers: int, skew: str, alpha: float) -> np.ndarray:
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


def routing_groups(model: ModelSpec, E: int) -> tuple[int, int] | None:
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


def synthetic_trace(
    model: ModelSpec,
    num_tokens: int,
    skew: str = "zipf",
    alpha: float = 1.2,
    affinity: float = 0.0,
    seed: int = 0,
    layers: Sequence[int] | None = None,
    with_topk_ids: bool = True,
    with_transitions: bool = True,
) -> RoutingTrace:
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
    groups = routing_groups(model, E)
    if groups is not None and k > groups[1] * (E // groups[0]):
        raise TraceError(
            f"{origin}: top_k: {k} exceeds the {groups[1] * (E // groups[0])} experts of topk_group={groups[1]} groups"
        )
    rng = np.random.default_rng(seed)
    p = popularity(rng, E, len(lay), skew, float(alpha))
    sigma = successor_maps(p)
    source = f"{origin} model={model.slug} T={num_tokens}"
    if not with_topk_ids:
        counts, trans = direct_counts(
            rng, p, sigma, float(affinity), k, int(num_tokens), groups, transitions=bool(with_transitions)
        )
        return RoutingTrace(
            model=model.slug,
            num_experts=E,
            top_k=k,
            layers=lay,
            counts=counts,
            num_tokens=int(num_tokens),
            transitions=trans,
            topk_ids=None,
            source=source,
        )
    ids = sample_topk_ids(rng, p, sigma, float(affinity), k, int(num_tokens), groups)
    return RoutingTrace.from_topk_ids(ids, E, layers=lay, model=model.slug, source=source)


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
        drawn = np.stack([cap_layer_counts(rng, rng.multinomial(T * k, row), T) for row in p])
        out.append(
            RoutingTrace(
                model=trace.model,
                num_experts=trace.num_experts,
                top_k=k,
                layers=trace.layers,
                counts=drawn.astype(np.int64),
                num_tokens=T,
                source=f"{trace.source} + {origin} step={step + 1}",
            )
        )
    return out

"""moesim.traces.synthetic: seeded Zipf/Dirichlet/uniform traces with cross-layer affinity, per-token and direct."""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.errors import TraceError
from moesim.specs import ModelSpec, load_model
from moesim.traces.inclusion import grouped_inclusion_probs, inclusion_probs
from moesim.traces.synthetic import parse_synthetic, popularity, successor_maps, synthetic_trace
from moesim.traces.trace import RoutingTrace, top_successor_share


def model(
    E: int = 64,
    k: int = 8,
    moe: tuple[int, ...] = tuple(range(16)),
    slug: str = "m",
    n_group: int = 1,
    topk_group: int = 1,
) -> ModelSpec:
    """A ModelSpec of the given routing shape (OLMoE's other fields, with a dense MLP for the layers before the
    first MoE layer; no group limit unless asked)."""
    return replace(
        load_model("olmoe-1b-7b"),
        slug=slug,
        num_experts=E,
        top_k=k,
        moe_layers=tuple(moe),
        num_layers=max(moe) + 1,
        n_group=n_group,
        topk_group=topk_group,
        dense_intermediate_size=1024,
    )


DSV3 = load_model("deepseek-v3")  # 256 experts, top-8, 58 MoE layers (3..60), 8 groups of 32, 4 kept


@pytest.mark.parametrize(
    "spec, want",
    [
        ("zipf:1.2", {"skew": "zipf", "alpha": 1.2}),
        ("zipf", {"skew": "zipf", "alpha": 1.2}),
        ("Dirichlet:0.3", {"skew": "dirichlet", "alpha": 0.3}),
        ("uniform", {"skew": "uniform", "alpha": 0.0}),
        ("zipf:0.8,affinity=0.5,seed=7", {"skew": "zipf", "alpha": 0.8, "affinity": 0.5, "seed": 7}),
    ],
)
def test_parse_synthetic(spec: str, want: dict) -> None:
    assert parse_synthetic(spec) == want


@pytest.mark.parametrize(
    "spec, field",
    [
        ("pareto:1", "skew"),
        ("zipf:x", "alpha"),
        ("dirichlet:0", "alpha"),
        ("zipf:-1", "alpha"),
        ("uniform:2", "alpha"),
        ("zipf,affinity=2", "affinity"),
        ("zipf,colour=3", "colour"),
        ("", "skew"),
    ],
)
def test_parse_synthetic_errors(spec: str, field: str) -> None:
    with pytest.raises(TraceError, match=f"^synthetic spec '{spec}': {field}: "):
        parse_synthetic(spec)


@settings(max_examples=25, deadline=None)
@given(
    E=st.integers(2, 40),
    data=st.data(),
    T=st.integers(1, 300),
    L=st.integers(1, 4),
    skew=st.sampled_from(["zipf", "dirichlet", "uniform"]),
    affinity=st.floats(0, 1),
    seed=st.integers(0, 1000),
    direct=st.booleans(),
)
def test_synthetic_invariants(
    E: int, data: st.DataObject, T: int, L: int, skew: str, affinity: float, seed: int, direct: bool
) -> None:
    n_group = data.draw(st.sampled_from([g for g in range(1, E + 1) if E % g == 0]))
    topk_group = data.draw(st.integers(1, n_group))
    room = E if n_group == 1 else topk_group * (E // n_group)  # ModelSpec's own check on top_k
    k = data.draw(st.integers(1, min(room, 8)))
    m = model(E, k, tuple(range(2, 2 + L)), n_group=n_group, topk_group=topk_group)
    alpha = {"zipf": 1.2, "dirichlet": 0.5, "uniform": 0.0}[skew]
    t = synthetic_trace(m, T, skew=skew, alpha=alpha, affinity=affinity, seed=seed, with_topk_ids=not direct)
    assert (t.counts.sum(axis=1) == T * k).all()
    assert t.counts.max() <= T  # an expert appears at most once per token
    assert np.array_equal(t.transitions.sum(axis=2), t.counts[:-1])
    assert np.array_equal(t.transitions.sum(axis=1), t.counts[1:])
    assert t.layers == m.moe_layers and t.model == "m"
    if not direct:
        ids = t.topk_ids
        assert ids.shape == (T, L, k)
        assert (np.diff(np.sort(ids, axis=2), axis=2) != 0).all()  # no duplicate expert within a token's top-k
        if n_group > 1:
            assert (_groups_used(ids, E // n_group) <= topk_group).all()
    again = synthetic_trace(m, T, skew=skew, alpha=alpha, affinity=affinity, seed=seed, with_topk_ids=not direct)
    assert again == t  # seeded


def test_seed_changes_trace() -> None:
    m = model()
    a = synthetic_trace(m, 2000, seed=0)
    b = synthetic_trace(m, 2000, seed=1)
    assert not np.array_equal(a.counts, b.counts)


def test_skew_grows_with_alpha_and_uniform_is_flat() -> None:
    m = model(64, 8, (0, 1, 2))
    imb = {
        a: synthetic_trace(m, 20000, alpha=a, with_topk_ids=False).load_stats()["max_over_mean"].mean()
        for a in (0.0, 0.6, 1.2)
    }
    assert imb[0.0] < imb[0.6] < imb[1.2]
    uni = synthetic_trace(m, 20000, skew="uniform", with_topk_ids=False).load_stats()["max_over_mean"]
    # 20000*8/64 = 2500 per expert, Poisson-like noise ~ 50: max of 64 stays within ~10%
    assert (uni < 1.1).all()
    d_skewed = synthetic_trace(m, 20000, skew="dirichlet", alpha=0.1, with_topk_ids=False).load_stats()["cv"].mean()
    d_flat = synthetic_trace(m, 20000, skew="dirichlet", alpha=100.0, with_topk_ids=False).load_stats()["cv"].mean()
    assert d_skewed > 3 * d_flat


def test_affinity_concentrates_transitions() -> None:
    m = model(64, 8, (0, 1, 2, 3))
    shares = []
    for a in (0.0, 0.5, 1.0):
        t = synthetic_trace(m, 5000, skew="zipf", alpha=0.8, affinity=a, seed=3)
        shares.append(top_successor_share(t.transitions, 8)[0].mean())
    assert shares[0] < shares[1] < shares[2]
    assert shares[2] == pytest.approx(1.0)
    # with affinity 1 every (token, rank) follows the successor map: one successor per expert
    t = synthetic_trace(m, 500, skew="zipf", alpha=0.8, affinity=1.0, seed=3)
    assert ((t.transitions > 0).sum(axis=2) <= 1).all()
    # independence baseline: with affinity 0 the share is close to the independent share
    t0 = synthetic_trace(m, 20000, skew="zipf", alpha=0.8, affinity=0.0, seed=3, with_topk_ids=False)
    share, ind = top_successor_share(t0.transitions, 8)
    assert np.allclose(share, ind, atol=0.03)


def test_direct_matches_per_token_statistically() -> None:
    """The counts-only generator reproduces the per-token model's skew and transition concentration."""
    m = model(64, 8, (0, 1, 2))
    for a in (0.0, 0.6):
        per_tok = synthetic_trace(m, 20000, alpha=1.0, affinity=a, seed=5, with_topk_ids=True)
        direct = synthetic_trace(m, 20000, alpha=1.0, affinity=a, seed=5, with_topk_ids=False)
        # same seed -> same popularity draws, so the hottest experts agree
        assert np.array_equal(per_tok.counts.argmax(axis=1), direct.counts.argmax(axis=1))
        rel = np.abs(per_tok.counts - direct.counts) / per_tok.counts.clip(min=1)
        assert np.median(rel) < 0.1
        s1 = top_successor_share(per_tok.transitions)[0]
        s2 = top_successor_share(direct.transitions)[0]
        assert np.allclose(s1, s2, atol=0.03)


def test_inclusion_probs() -> None:
    rng = np.random.default_rng(0)
    p = popularity(rng, 16, 2, "uniform", 0.0)
    pi = inclusion_probs(p, 4)
    assert np.allclose(pi, 0.25)  # exact for uniform
    p = popularity(rng, 64, 2, "zipf", 1.2)
    pi = inclusion_probs(p, 8)
    assert np.allclose(pi.sum(axis=1), 8) and pi.max() <= 1.0 + 1e-9
    # against Monte Carlo of the per-token sampler (exponential race), 40000 tokens
    keys = rng.standard_exponential((40000, 64)) / p[0]
    mc = np.bincount(np.argpartition(keys, 7, axis=1)[:, :8].ravel(), minlength=64) / 40000
    assert np.abs(pi[0] - mc).max() < 0.05


def test_successor_map_is_rank_preserving_permutation() -> None:
    p = popularity(np.random.default_rng(1), 32, 3, "zipf", 1.2)
    sig = successor_maps(p)
    assert sig.shape == (2, 32)
    for l in range(2):
        assert sorted(sig[l].tolist()) == list(range(32))
        assert sig[l][p[l].argmax()] == p[l + 1].argmax()


def test_deepseek_v3_scale_counts_only() -> None:
    """64 GPUs x 8192 tokens at DeepSeek-V3 shape (256 experts, top-8, 58 MoE layers) without per-token ids."""
    start = time.perf_counter()
    t = synthetic_trace(DSV3, 64 * 8192, alpha=1.2, affinity=0.3, with_topk_ids=False)
    elapsed = time.perf_counter() - start
    assert t.counts.shape == (58, 256) and t.transitions.shape == (57, 256, 256) and t.topk_ids is None
    assert (t.counts.sum(axis=1) == 524288 * 8).all()
    assert t.layers[0] == 3 and t.layers[-1] == 60
    assert elapsed < 20, f"took {elapsed:.1f} s"


def test_layers_subset_and_errors() -> None:
    t = synthetic_trace(DSV3, 100, layers=[3, 10], with_topk_ids=True)
    assert t.layers == (3, 10) and t.topk_ids.shape == (100, 2, 8)
    with pytest.raises(TraceError, match=r"layers: \[0\] are not MoE layers of deepseek-v3"):
        synthetic_trace(DSV3, 100, layers=[0])
    with pytest.raises(TraceError, match="num_tokens: must be >= 1"):
        synthetic_trace(DSV3, 0)
    with pytest.raises(TraceError, match="affinity"):
        synthetic_trace(DSV3, 10, affinity=1.5)
    with pytest.raises(TraceError, match="skew"):
        synthetic_trace(DSV3, 10, skew="pareto")
    unchecked = replace(DSV3)  # ModelSpec refuses top_k 129 itself; synthetic_trace checks again
    object.__setattr__(unchecked, "top_k", 129)
    with pytest.raises(TraceError, match="top_k: 129 exceeds the 128 experts of topk_group=4 groups"):
        synthetic_trace(unchecked, 10)


def test_top_k_equals_num_experts() -> None:
    m = model(4, 4, (0, 1))
    for direct in (True, False):
        t = synthetic_trace(m, 50, with_topk_ids=not direct)
        assert (t.counts == 50).all()


# ------------------------------------------------------------------------------------ group-limited routing
def _groups_used(ids: np.ndarray, group_size: int) -> np.ndarray:
    """[T, L] number of distinct expert groups among each token's top-k."""
    g = np.sort(ids // group_size, axis=-1)
    return 1 + (np.diff(g, axis=-1) != 0).sum(axis=-1)


def _deepseek_topk(
    rng: np.random.Generator, num_tokens: int, logits: np.ndarray, top_k: int, n_group: int, topk_group: int
) -> np.ndarray:
    """Reference, as ``sample_topk`` in test_dispatch.py: DeepSeek's group-limited top-k on Gumbel-noised logits
    (group score = sum of its top-2 scores, the topk_group best groups kept)."""
    E = logits.size
    scores = rng.gumbel(size=(num_tokens, E)) + logits
    if n_group > 1:
        group_score = np.sort(scores.reshape(num_tokens, n_group, -1), axis=-1)[..., -2:].sum(-1)
        top = np.argsort(-group_score, axis=1)[:, :topk_group]
        mask = np.full((num_tokens, n_group), -np.inf)
        np.put_along_axis(mask, top, 0.0, axis=1)
        scores = scores + np.repeat(mask, E // n_group, axis=1)
    return np.argsort(-scores, axis=1)[:, :top_k]


def test_grouped_per_token_ids_stay_in_topk_group_groups() -> None:
    lay = DSV3.moe_layers[:6]
    for a in (0.0, 0.5):
        t = synthetic_trace(DSV3, 3000, alpha=1.2, affinity=a, seed=2, layers=lay)
        assert isinstance(t, RoutingTrace) and t.topk_ids.shape == (3000, 6, 8)  # validated on construction
        assert (_groups_used(t.topk_ids, 32) <= 4).all()
        assert (np.diff(np.sort(t.topk_ids, axis=2), axis=2) != 0).all()
    # the same draws without the group limit spread over more groups, so the check above can fail
    free = synthetic_trace(replace(DSV3, n_group=1, topk_group=1), 3000, alpha=1.2, seed=2, layers=lay)
    assert (_groups_used(free.topk_ids, 32) > 4).mean() > 0.3


def test_grouped_affinity_follows_successors_whose_group_is_kept() -> None:
    lay = DSV3.moe_layers[:5]
    p = popularity(np.random.default_rng(3), 256, 5, "zipf", 0.8)  # synthetic_trace's first draws for seed 3
    sigma = successor_maps(p)
    shares = []
    for a in (0.0, 0.5, 1.0):
        t = synthetic_trace(DSV3, 2000, alpha=0.8, affinity=a, seed=3, layers=lay)
        ids = t.topk_ids.astype(np.int64)
        assert (_groups_used(ids, 32) <= 4).all()
        shares.append(top_successor_share(t.transitions, 8)[0].mean())
        succ = np.stack([sigma[l][ids[:, l]] for l in range(4)], axis=1)  # [T, L-1, k]
        followed = ids[:, 1:] == succ
        if a == 1.0:
            # every rank follows unless its successor's group comes after the first 4 distinct ones (rank order)
            g = succ // 32
            seen = np.stack([_distinct_count(g[:, :, : r + 1]) for r in range(8)], axis=2)  # distinct up to r
            first_at = np.stack([(g == g[:, :, [r]]).argmax(axis=2) for r in range(8)], axis=2)
            assert np.array_equal(followed, np.take_along_axis(seen, first_at, axis=2) <= 4)
            assert 0.6 < followed.mean() < 0.95
        elif a == 0.5:
            assert 0.42 < followed.mean() < 0.55  # about a: the successor's group is usually among the kept
    assert shares[0] < shares[1] < shares[2]


def _distinct_count(g: np.ndarray) -> np.ndarray:
    """Distinct values along the last axis (non-empty)."""
    return 1 + (np.diff(np.sort(g, axis=-1), axis=-1) != 0).sum(axis=-1)


@pytest.mark.parametrize("skew, alpha", [("zipf", 1.2), ("dirichlet", 0.5)])
def test_grouped_per_token_is_deepseeks_rule(skew: str, alpha: float) -> None:
    """Per-expert inclusion frequencies of the synthetic trace match DeepSeek's rule on the same popularity
    (logits log p) within sampling noise, and differ from top-k without the group limit."""
    T = 20000
    t = synthetic_trace(DSV3, T, skew=skew, alpha=alpha, seed=4, layers=[3])
    p = popularity(np.random.default_rng(4), 256, 1, skew, alpha)[0]
    f = t.counts[0] / T

    def chi2(ref_ids: np.ndarray) -> float:
        g = np.bincount(ref_ids.ravel(), minlength=256) / T
        pool = 0.5 * (f + g)
        z2 = (f - g) ** 2 / (2 * pool * (1 - pool) / T + 1e-12)
        return float(z2.mean())

    rng = np.random.default_rng(9)
    assert chi2(_deepseek_topk(rng, T, np.log(p), 8, 8, 4)) < 1.35  # about 1 (+- 0.1) under the same rule
    assert chi2(_deepseek_topk(rng, T, np.log(p), 8, 1, 1)) > 2  # 2.5 (Dirichlet), 18 (Zipf)


def test_grouped_counts_only_matches_per_token() -> None:
    """Counts-only expectations (grouped pi) agree with the per-token grouped frequencies within sampling noise
    (about 0.025 here), much closer than the ungrouped pi; with affinity the counts-only trace still does."""
    lay = DSV3.moe_layers[:3]
    T, T_direct = 30000, 1 << 18
    for skew, alpha in (("zipf", 1.2), ("dirichlet", 0.3)):
        p = popularity(np.random.default_rng(6), 256, 3, skew, alpha)
        grouped = grouped_inclusion_probs(p, 8, 8, 4)
        assert np.allclose(grouped.sum(axis=1), 8) and grouped.min() >= 0 and grouped.max() <= 1
        for a in (0.0, 0.3):
            per_tok = synthetic_trace(DSV3, T, skew=skew, alpha=alpha, affinity=a, seed=6, layers=lay)
            f = per_tok.counts / T
            err_plain = np.abs(inclusion_probs(p, 8) - f).sum(axis=1) / 8  # 0.07-0.18
            direct = synthetic_trace(
                DSV3, T_direct, skew=skew, alpha=alpha, affinity=a, seed=6, layers=lay, with_topk_ids=False
            )
            err_direct = np.abs(direct.counts / T_direct - f).sum(axis=1) / 8
            if a == 0.0:
                err_grouped = np.abs(grouped - f).sum(axis=1) / 8
                assert (err_grouped < 0.035).all() and (err_grouped < 0.4 * err_plain).all(), (err_grouped, err_plain)
                assert (err_direct < 0.035).all(), err_direct
            else:  # followers carry layer l's grouped marginal through sigma: not layer l+1's grouped pi
                assert (err_direct < 0.07).all() and (err_direct < 0.5 * err_plain).all(), (err_direct, err_plain)
            s1 = top_successor_share(per_tok.transitions)[0]
            s2 = top_successor_share(direct.transitions)[0]
            assert np.allclose(s1, s2, atol=0.03)


def test_grouped_inclusion_probs_extreme_skew() -> None:
    """Valid probabilities when a group's other experts hold 1e-25 of its top one (Dirichlet 0.001)."""
    p = popularity(np.random.default_rng(0), 256, 8, "dirichlet", 0.001)
    pi = grouped_inclusion_probs(p, 8, 8, 4)
    assert np.isfinite(pi).all() and pi.min() >= 0 and pi.max() <= 1 + 1e-12
    assert np.allclose(pi.sum(axis=1), 8)
    assert np.array_equal(grouped_inclusion_probs(p, 8, 8, 8), inclusion_probs(p, 8))  # all groups kept
    u = popularity(np.random.default_rng(0), 64, 2, "uniform", 0.0)
    assert np.allclose(grouped_inclusion_probs(u, 4, 8, 2), 4 / 64)


def _digest(t: RoutingTrace) -> str:
    h = hashlib.sha256()
    for a in (t.counts, t.transitions, t.topk_ids):
        if a is not None:
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize(
    "name, skew, alpha, affinity, seed, n_layers, ids, want",
    [
        ("olmoe-1b-7b", "zipf", 1.2, 0.5, 11, 3, True, "8a8b85fcfa62fa21"),
        ("olmoe-1b-7b", "zipf", 1.2, 0.5, 11, 3, False, "254e56b29af99e7c"),
        ("mixtral-8x7b", "dirichlet", 0.7, 0.3, 5, 4, True, "3064a3190d12cf2b"),
        ("mixtral-8x7b", "dirichlet", 0.7, 0.3, 5, 4, False, "66ee5d9fa76fc44c"),
    ],
)
def test_ungrouped_models_unchanged(
    name: str, skew: str, alpha: float, affinity: float, seed: int, n_layers: int, ids: bool, want: str
) -> None:
    """Models without group-limited routing draw exactly the traces they drew before it existed (checksums
    taken from the generator before group-limited routing was added)."""
    m = load_model(name)
    t = synthetic_trace(
        m, 600, skew=skew, alpha=alpha, affinity=affinity, seed=seed, layers=m.moe_layers[:n_layers], with_topk_ids=ids
    )
    assert _digest(t) == want


@pytest.mark.parametrize("name, affinity", [("olmoe-1b-7b", 0.0), ("olmoe-1b-7b", 0.6), ("deepseek-v3", 0.5)])
def test_counts_without_transitions_match_counts_with_them(name: str, affinity: float) -> None:
    """The counts-only draw without transition matrices (what ``moesim simulate`` uses) draws the column sums
    of the transition draw: same totals and caps, same skew, the same hottest experts, the same
    layer-to-layer following; another random stream."""
    m = load_model(name)
    lay = m.moe_layers[:6]
    T = 40000
    kw = dict(skew="zipf", alpha=1.2, affinity=affinity, seed=3, layers=lay, with_topk_ids=False)
    full = synthetic_trace(m, T, **kw)
    only = synthetic_trace(m, T, with_transitions=False, **kw)
    assert only.transitions is None and full.transitions is not None
    assert np.array_equal(only.counts.sum(axis=1), full.counts.sum(axis=1))  # T * k per layer
    assert only.counts.max() <= T and only.counts.min() >= 0
    assert not np.array_equal(only.counts, full.counts)  # another stream, not a copy
    assert np.array_equal(only.counts.argmax(axis=1), full.counts.argmax(axis=1))
    rel = np.abs(only.counts - full.counts) / full.counts.clip(min=1)
    heavy = full.counts > 0.2 * T * m.top_k / m.num_experts
    assert np.median(rel[heavy]) < 0.05
    # affinity carries layer l's counts to the successors: same correlation in both
    sigma = successor_maps(popularity(np.random.default_rng(3), m.num_experts, len(lay), "zipf", 1.2))

    def follow(c: np.ndarray) -> float:
        return float(np.mean([np.corrcoef(c[l], c[l + 1][sigma[l]])[0, 1] for l in range(len(lay) - 1)]))

    assert follow(only.counts) == pytest.approx(follow(full.counts), abs=0.05)


def test_log_root_finds_each_rows_root() -> None:
    from moesim.traces.inclusion import _log_root

    scale = np.array([1e-6, 0.3, 1.0, 7.0, 5e4])

    def f(x: np.ndarray) -> np.ndarray:  # increasing in x, root at x = (target / scale) ** (1 / 3)
        return scale * x**3

    x = _log_root(f, 2.0, np.ones_like(scale))
    assert np.allclose(x, (2.0 / scale) ** (1 / 3), rtol=1e-10)

"""moesim.synthetic: seeded Zipf/Dirichlet/uniform traces with cross-layer affinity, per-token and direct."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.errors import TraceError
from moesim.synthetic import inclusion_probs, popularity, successor_maps
from moesim.trace import parse_synthetic, synthetic_trace, top_successor_share


def model(E: int = 64, k: int = 8, moe: tuple[int, ...] = tuple(range(16)), slug: str = "m") -> SimpleNamespace:
    return SimpleNamespace(slug=slug, num_experts=E, top_k=k, moe_layers=moe, num_layers=max(moe) + 1)


DSV3 = model(256, 8, tuple(range(3, 61)), "deepseek-v3")


@pytest.mark.parametrize("spec, want", [
    ("zipf:1.2", {"skew": "zipf", "alpha": 1.2}),
    ("zipf", {"skew": "zipf", "alpha": 1.2}),
    ("Dirichlet:0.3", {"skew": "dirichlet", "alpha": 0.3}),
    ("uniform", {"skew": "uniform", "alpha": 0.0}),
    ("zipf:0.8,affinity=0.5,seed=7", {"skew": "zipf", "alpha": 0.8, "affinity": 0.5, "seed": 7}),
])
def test_parse_synthetic(spec: str, want: dict) -> None:
    assert parse_synthetic(spec) == want


@pytest.mark.parametrize("spec, field", [("pareto:1", "skew"), ("zipf:x", "alpha"), ("dirichlet:0", "alpha"),
                                         ("zipf:-1", "alpha"), ("uniform:2", "alpha"), ("zipf,affinity=2", "affinity"),
                                         ("zipf,colour=3", "colour"), ("", "skew")])
def test_parse_synthetic_errors(spec: str, field: str) -> None:
    with pytest.raises(TraceError, match=f"^synthetic spec '{spec}': {field}: "):
        parse_synthetic(spec)


@settings(max_examples=25, deadline=None)
@given(E=st.integers(2, 40), data=st.data(), T=st.integers(1, 300), L=st.integers(1, 4),
       skew=st.sampled_from(["zipf", "dirichlet", "uniform"]), affinity=st.floats(0, 1),
       seed=st.integers(0, 1000), direct=st.booleans())
def test_synthetic_invariants(E: int, data: st.DataObject, T: int, L: int, skew: str, affinity: float, seed: int,
                              direct: bool) -> None:
    k = data.draw(st.integers(1, min(E, 8)))
    m = model(E, k, tuple(range(2, 2 + L)))
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
    again = synthetic_trace(m, T, skew=skew, alpha=alpha, affinity=affinity, seed=seed, with_topk_ids=not direct)
    assert again == t  # seeded


def test_seed_changes_trace() -> None:
    m = model()
    a = synthetic_trace(m, 2000, seed=0)
    b = synthetic_trace(m, 2000, seed=1)
    assert not np.array_equal(a.counts, b.counts)


def test_skew_grows_with_alpha_and_uniform_is_flat() -> None:
    m = model(64, 8, (0, 1, 2))
    imb = {a: synthetic_trace(m, 20000, alpha=a, with_topk_ids=False).load_stats()["max_over_mean"].mean()
           for a in (0.0, 0.6, 1.2)}
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


def test_top_k_equals_num_experts() -> None:
    m = model(4, 4, (0, 1))
    for direct in (True, False):
        t = synthetic_trace(m, 50, with_topk_ids=not direct)
        assert (t.counts == 50).all()

"""moesim.traces.inclusion: grouped inclusion probabilities on tiny cases, against Monte Carlo of the routing rule
and exact enumeration, plus the symmetries the exact rule has (scale, permutations, identical groups).

test_synthetic.py already checks the DeepSeek-V3 shape against per-token traces, uniform popularity, extreme
Dirichlet skew, ``topk_group == n_group`` and ``_log_root``; this module covers the small shapes and the paths
those leave (``S = 1``, ``k = topk_group * S``, empty groups, several layers at once).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from moesim.traces.inclusion import grouped_inclusion_probs, inclusion_probs

P8 = np.array([0.4, 0.1, 0.2, 0.05, 0.15, 0.02, 0.05, 0.03])  # 4 groups of 2
P12 = np.arange(1, 13) / 78.0  # 6 groups of 2, increasing


def grouped_mc(
    p: np.ndarray, k: int, n_group: int, topk_group: int, tokens: int = 200_000, seed: int = 0
) -> np.ndarray:
    """Per-expert frequencies of the exact rule the module approximates: race keys ``Exp(1) / p``, the
    ``topk_group`` groups with the smallest product of their two smallest keys kept, then the k smallest keys of
    the kept groups (DeepSeek's top-2-sum group score on Gumbel-noised ``log p``)."""
    rng = np.random.default_rng(seed)
    E = p.size
    S = E // n_group
    with np.errstate(divide="ignore"):  # a zero popularity: an infinite key, never picked
        keys = rng.standard_exponential((tokens, E)) / p
    two = np.sort(keys.reshape(tokens, n_group, S), axis=2)[:, :, :2]
    z = two[:, :, 0] * two[:, :, 1]
    kept = np.argsort(z, axis=1)[:, :topk_group]
    penalty = np.full((tokens, n_group), np.inf)
    np.put_along_axis(penalty, kept, 0.0, axis=1)
    masked = keys + np.repeat(penalty, S, axis=1)
    ids = np.argpartition(masked, k - 1, axis=1)[:, :k]
    return np.bincount(ids.ravel(), minlength=E) / tokens


def plackett_luce_inclusion(p: np.ndarray, k: int) -> np.ndarray:
    """Exact P(e among k draws without replacement, each draw proportional to p), by enumerating ordered draws."""
    p = p / p.sum()
    out = np.zeros(p.size)
    for seq in itertools.permutations(range(p.size), k):
        prob, left = 1.0, 1.0
        for e in seq:
            prob *= p[e] / left
            left -= p[e]
        out[list(seq)] += prob
    return out


@pytest.mark.parametrize(
    "p, k, n_group, topk_group, err_max",
    [
        (P8, 2, 4, 2, 0.07),  # measured 0.053 (ungrouped pi: 0.148)
        (P8, 1, 4, 1, 0.15),  # measured 0.120 (ungrouped: 0.298)
        (np.array([0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05]), 3, 2, 1, 0.07),  # 0.049 (ungrouped: 0.210)
        (P12, 4, 6, 3, 0.04),  # 0.027 (ungrouped: 0.124)
    ],
)
def test_tiny_cases_against_monte_carlo(p: np.ndarray, k: int, n_group: int, topk_group: int, err_max: float) -> None:
    """The approximation is within a few percent of the routing rule's frequencies (L1 / k; Monte Carlo noise
    about 0.002) and several times closer than the ungrouped pi, which ignores the group limit."""
    pi = grouped_inclusion_probs(p[None], k, n_group, topk_group)[0]
    f = grouped_mc(p, k, n_group, topk_group)
    err = np.abs(pi - f).sum() / k
    err_plain = np.abs(inclusion_probs(p[None], k)[0] - f).sum() / k
    assert err < err_max, err
    assert err < 0.5 * err_plain, (err, err_plain)
    assert pi.sum() == pytest.approx(k, abs=1e-9) and pi.min() >= 0 and pi.max() <= 1
    # the order of experts inside a group follows their popularity
    S = p.size // n_group
    for j in range(n_group):
        grp = slice(j * S, (j + 1) * S)
        assert np.array_equal(np.argsort(-pi[grp], kind="stable"), np.argsort(-p[grp], kind="stable"))


def test_whole_groups_picked_when_k_fills_the_kept_groups() -> None:
    """k = topk_group * S: every expert of a kept group is picked, so the two experts of a group share one
    probability (the group's), the groups' shares sum to topk_group, and they track Monte Carlo."""
    pi = grouped_inclusion_probs(P8[None], 4, 4, 2)[0].reshape(4, 2)
    assert np.array_equal(pi[:, 0], pi[:, 1])
    assert pi[:, 0].sum() == pytest.approx(2.0, abs=1e-9)
    assert np.all(np.diff(pi[:, 0]) < 0)  # group masses 0.5 > 0.25 > 0.17 > 0.08
    f = grouped_mc(P8, 4, 4, 2).reshape(4, 2)
    assert np.abs(pi - f).max() < 0.05  # measured 0.041 (0.588 vs 0.627 for group 1)


def test_groups_that_are_never_kept() -> None:
    """Two of four groups with zero popularity are never kept (topk_group = 2), so the rule is plain top-k over
    the other four experts: the grouped pi equals the ungrouped model on them, and within 0.025 of the exact
    Plackett-Luce inclusion probabilities (enumerated)."""
    live = np.array([0.5, 0.3, 0.2, 0.1]) / 1.1
    p = np.concatenate([live, np.zeros(4)])
    pi = grouped_inclusion_probs(p[None], 2, 4, 2)[0]
    assert np.isfinite(pi).all() and pi[4:].max() < 1e-20
    assert np.allclose(pi[:4], inclusion_probs(live[None], 2)[0], atol=1e-7)
    exact = plackett_luce_inclusion(live, 2)
    assert exact.sum() == pytest.approx(2.0)
    assert np.abs(pi[:4] - exact).max() < 0.025  # 0.754 vs 0.771 for the top expert


def test_dominant_group_is_almost_always_the_kept_one() -> None:
    """With topk_group = 1 and one group holding 98% of the mass, its two experts get nearly all of k = 2."""
    p = np.array([0.49, 0.49, 0.005, 0.005, 0.005, 0.005, 0.0, 0.01])
    pi = grouped_inclusion_probs(p[None], 2, 4, 1)[0]
    f = grouped_mc(p, 2, 4, 1, tokens=50_000)
    assert pi[0] == pi[1] and pi[0] > 0.98 and f[0] > 0.99
    assert pi[6] == 0.0 and pi[7] == 0.0  # group 3 holds a zero: the product of its two keys is infinite
    assert np.abs(pi - f).max() < 0.015


def test_scale_invariance() -> None:
    """Multiplying every popularity by a constant scales every key and leaves the rule unchanged."""
    base = grouped_inclusion_probs(P12[None], 4, 6, 3)
    for c in (1e-3, 7.0, 1e4):
        assert np.allclose(grouped_inclusion_probs(c * P12[None], 4, 6, 3), base, rtol=1e-8, atol=1e-12)


def test_permuting_groups_and_experts_permutes_the_result() -> None:
    """Relabelling groups, or experts within a group, relabels the probabilities the same way."""
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.full(12, 0.7))
    pi = grouped_inclusion_probs(p[None], 3, 4, 2)[0].reshape(4, 3)
    for _ in range(3):
        gperm = rng.permutation(4)
        eperm = rng.permutation(3)
        q = p.reshape(4, 3)[gperm][:, eperm]
        got = grouped_inclusion_probs(q.reshape(1, -1), 3, 4, 2)[0].reshape(4, 3)
        assert np.allclose(got, pi[gperm][:, eperm], rtol=1e-9, atol=1e-12)


def test_identical_groups_share_k_equally() -> None:
    """Groups with the same popularities are kept equally often: each gets exactly k / n_group, and the same
    expert of every group the same probability (Monte Carlo agrees on the within-group split)."""
    r = np.tile([0.1, 0.05, 0.07, 0.03], 4)
    r /= r.sum()
    pi = grouped_inclusion_probs(r[None], 3, 4, 2)[0].reshape(4, 4)
    assert np.allclose(pi.sum(axis=1), 0.75, atol=1e-9)
    assert np.allclose(pi, pi[0], atol=1e-12)
    f = grouped_mc(r, 3, 4, 2).reshape(4, 4).mean(axis=0)
    assert np.abs(pi[0] - f).max() < 0.03


def test_layers_are_solved_independently() -> None:
    """Rows of p are separate layers: solving them together gives each row's own answer."""
    P = np.stack([P8, P8[::-1], np.full(8, 1 / 8), np.array([0.9, 0.01, 0.01, 0.01, 0.02, 0.02, 0.02, 0.01])])
    together = grouped_inclusion_probs(P, 2, 4, 2)
    alone = np.stack([grouped_inclusion_probs(P[i : i + 1], 2, 4, 2)[0] for i in range(len(P))])
    assert together.shape == (4, 8)
    assert np.allclose(together, alone, rtol=1e-9, atol=1e-12)
    assert np.allclose(together[2], 2 / 8)  # uniform: exact by symmetry


def test_single_expert_groups_fall_back_to_ungrouped() -> None:
    """S = 1 (n_group = E): a group's score needs two experts, so the group limit is not modelled."""
    assert np.array_equal(grouped_inclusion_probs(P8[None], 2, 8, 4), inclusion_probs(P8[None], 2))


def test_ungrouped_inclusion_small_cases() -> None:
    """inclusion_probs: all experts when k >= E; for k = 1 pi is close to p (exactly p for uniform)."""
    assert np.array_equal(inclusion_probs(P8[None], 8), np.ones((1, 8)))
    pi = inclusion_probs(np.stack([P8, np.full(8, 1 / 8)]), 1)
    assert np.allclose(pi.sum(axis=1), 1.0) and np.allclose(pi[1], 1 / 8)
    assert np.abs(pi[0] - P8).max() < 0.06  # Poisson sampling flattens: 0.35 vs 0.4 for the top expert
    assert np.array_equal(np.argsort(pi[0], kind="stable"), np.argsort(P8, kind="stable"))

"""moesim.traces.collector_routing: AIConfigurator's synthetic routings, checked against hand counts and against a
one-row-at-a-time reference of the documented power-law rules.

test_fused_moe.py already checks balanced spreads for E divisible by k, power-law totals and caps with ep = 1,
``balanced`` / ``power_law_1.01`` / ``zipf`` names and touched-token bounds; test_measured_rows.py the draws and
seed arguments and the ``ep`` error. Here: the two balanced branches by hand with ``E`` not a multiple of k,
rejected exponents, the touched-token formula by hand, ``_level`` against greedy filling, and every step of
``power_law_counts`` (both load ranges, overflow and remainder spreading, the rank swap) against a reference.
"""

from __future__ import annotations

import numpy as np
import pytest

from moesim.errors import SpecError
from moesim.traces.collector_routing import (
    COLLECTOR_DRAWS,
    _level,
    balanced_counts,
    local_counts,
    parse_distribution,
    power_law_counts,
    touched_tokens,
)


# ------------------------------------------------------------------ balanced
def test_balanced_when_tokens_reach_the_stride() -> None:
    """E = 10, k = 3: stride ceil(10 / 3) = 4, T = 5 >= 4, token t picks t, t + 4, t + 8 (mod 10)."""
    # j = 0: 0 1 2 3 4; j = 1: 4 5 6 7 8; j = 2: 8 9 0 1 2
    assert balanced_counts(5, 3, 10).tolist() == [2, 2, 2, 1, 2, 1, 1, 1, 2, 1]


def test_balanced_when_tokens_are_fewer_than_the_stride() -> None:
    """T = 2 < stride 4: token t starts at t * 4 / 2 = 2t, so token 0 picks 0, 4, 8 and token 1 picks 2, 6, 0."""
    assert balanced_counts(2, 3, 10).tolist() == [2, 0, 1, 0, 1, 0, 1, 0, 1, 0]
    # T = 3: starts 0, 4/3, 8/3 -> floor(start + 4 j mod 10): (0, 4, 8), (1, 5, 9), (2, 6, 0)
    assert balanced_counts(3, 3, 10).tolist() == [2, 1, 1, 0, 1, 1, 1, 0, 1, 1]
    assert balanced_counts(3, 3, 10).dtype == np.float64


def test_balanced_local_counts_are_rank_zeros_slice() -> None:
    out = local_counts(5, 3, 10, 5, "balanced")
    assert out.shape == (1, 2) and out.tolist() == [[2.0, 2.0]]
    assert not out.flags.writeable
    assert local_counts(5, 3, 10, 5, "balanced") is out  # cached
    with pytest.raises(SpecError, match=r"^routing: ep: 10 experts do not split over 4 EP ranks$"):
        local_counts(5, 3, 10, 4, "balanced")


# ------------------------------------------------------------------ names
@pytest.mark.parametrize(
    "name",
    ["power_law_1", "power_law_1.0", "power_law_0", "power_law_-2", "power_law_nan", "power_law_inf", "power_law_"]
    + ["Balanced", "", "power_law"],
)
def test_rejected_distribution_names(name: str) -> None:
    """alpha = 1 has no inverse CDF of this form (1 / (1 - a)); alpha must be finite and > 0."""
    with pytest.raises(SpecError) as exc:
        parse_distribution(name)
    assert str(exc.value) == f"routing: distribution: must be 'balanced' or 'power_law_<alpha>', got {name!r}"


def test_accepted_exponents() -> None:
    assert parse_distribution("power_law_2") == 2.0
    assert parse_distribution("power_law_0.5") == 0.5
    assert parse_distribution("power_law_1e-3") == 0.001


# ------------------------------------------------------------------ touched tokens
def test_touched_tokens_power_law_formula() -> None:
    """T' = T (1 - prod_e (1 - m_e / T)) per draw, m_e clipped to T."""
    counts = np.array([[4.0, 0.0], [2.0, 2.0], [0.0, 0.0], [1.0, 3.0], [9.0, 0.0]])
    got = touched_tokens(4, 2, 8, "power_law_1.2", counts)
    assert got.shape == (5,)
    assert np.allclose(got, [4.0, 3.0, 0.0, 4 * (1 - 0.75 * 0.25), 4.0])


def test_touched_tokens_balanced_by_hand() -> None:
    """E = 10, k = 3, T = 5, ep = 5 (local experts 0, 1): tokens 0 and 1 (j = 0) and 2, 3 (j = 2 wraps to 0, 1);
    token 4 picks 4, 8, 2."""
    counts = local_counts(5, 3, 10, 5, "balanced")
    assert touched_tokens(5, 3, 10, "balanced", counts).tolist() == [4.0]
    # the exact count ignores the counts' values, only their number of local experts
    assert touched_tokens(5, 3, 10, "balanced", np.zeros((2, 5))).tolist() == [5.0, 5.0]  # experts 0..4
    assert touched_tokens(5, 3, 10, "balanced", np.zeros((1, 1))).tolist() == [2.0]  # expert 0: tokens 0, 2


# ------------------------------------------------------------------ water filling
def greedy_fill(row: np.ndarray, todo: int, bound: float) -> tuple[np.ndarray, int]:
    """One row at a time to the least loaded expert below ``bound`` (lowest index on ties)."""
    row = row.copy()
    for placed in range(todo):
        room = np.flatnonzero(row < bound)
        if room.size == 0:
            return row, todo - placed
        row[room[np.argmin(row[room])]] += 1
    return row, 0


def test_level_equals_greedy_filling() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 7))
        bound = float(rng.integers(1, 9))
        row = rng.integers(0, int(bound) + 1, n).astype(np.float64)
        todo = int(rng.integers(0, 3 * n * int(bound) // 2 + 2))
        want, left = greedy_fill(row, todo, bound)
        got = row.copy()
        assert _level(got, todo, bound) == left
        assert np.array_equal(got, want), (row, todo, bound)


def test_level_by_hand() -> None:
    row = np.array([3.0, 0.0, 1.0, 5.0])
    assert _level(row, 4, 5.0) == 0
    # expert 1: 0 -> 1; tie at 1, lowest index: expert 1 -> 2; expert 2: 1 -> 2; tie at 2: expert 1 -> 3
    assert row.tolist() == [3.0, 3.0, 2.0, 5.0]
    row = np.array([4.0, 5.0])
    assert _level(row, 3, 5.0) == 2 and row.tolist() == [5.0, 5.0]  # one row of room


# ------------------------------------------------------------------ power law
def reference_power_law(tokens: int, top_k: int, E: int, ep: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """The module docstring's rules, row by row: inverse-CDF loads, scaled and rounded, clamped at T; overflow and
    remainder shared out rank by rank (amount // ep each, the first amount % ep ranks one more), each row to the
    rank's least loaded expert below T (removed from its most loaded above 0); the largest rank swapped to 0."""
    lo, hi = (1.0, 0.8 * tokens) if tokens * top_k > E else (0.01, 2.0)
    u = rng.random(E)
    x = ((hi ** (1 - alpha) - lo ** (1 - alpha)) * u + lo ** (1 - alpha)) ** (1 / (1 - alpha))
    counts = np.rint(x / x.sum() * tokens * top_k)

    def spread(c: np.ndarray, amount: int, add: bool) -> np.ndarray:
        ranks = c.reshape(ep, -1).copy()
        for r in range(ep):
            seg = ranks[r]
            for _ in range(amount // ep + (1 if r < amount % ep else 0)):
                ok = np.flatnonzero(seg < tokens) if add else np.flatnonzero(seg > 0)
                if ok.size == 0:
                    break
                i = ok[np.argmin(seg[ok])] if add else ok[np.argmax(seg[ok])]
                seg[i] += 1 if add else -1
        return ranks.reshape(-1)

    overflow = int(np.maximum(counts - tokens, 0).sum())
    counts = np.minimum(counts, tokens)
    if overflow:
        counts = spread(counts, overflow, True)
    delta = int(tokens * top_k - counts.sum())
    if delta:
        counts = spread(counts, abs(delta), delta > 0)
    ranks = counts.reshape(ep, -1)
    top = int(ranks.sum(axis=1).argmax())
    ranks[[0, top]] = ranks[[top, 0]]
    return ranks.reshape(-1)


@pytest.mark.parametrize(
    "tokens, top_k, E, ep, alpha",
    [
        (16, 4, 16, 4, 1.2),  # loads on [1, 12.8]; large loads overflow T = 16
        (64, 8, 32, 4, 0.5),
        (100, 6, 24, 3, 1.2),
        (3, 2, 8, 4, 2.0),  # T k = 6 <= E: loads on [0.01, 2]
        (1, 2, 8, 1, 1.5),
    ],
)
def test_power_law_counts_follow_the_rules(tokens: int, top_k: int, E: int, ep: int, alpha: float) -> None:
    for seed in range(40):
        got = power_law_counts(tokens, top_k, E, ep, alpha, np.random.default_rng(seed))
        want = reference_power_law(tokens, top_k, E, ep, alpha, np.random.default_rng(seed))
        assert np.array_equal(got, want), seed
        ranks = got.reshape(ep, -1).sum(axis=1)
        assert ranks[0] == ranks.max() and got.min() >= 0 and got.max() <= tokens


def test_overflow_is_spread_to_the_least_loaded() -> None:
    """ep = 1, T = 8, k = 6, E = 8 (loads on [1, 6.4], alpha 0.5): rounded loads above T are clamped and the
    excess, with the rounding shortfall, goes to the least loaded experts, so the total is exactly T k, no expert
    passes T, and every raised expert ends at most one row above every expert still below T."""
    seen = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        x = ((6.4**0.5 - 1.0) * rng.random(8) + 1.0) ** 2.0  # the draw power_law_counts makes
        raw = np.rint(x / x.sum() * 48)
        if raw.max() <= 8 or raw.sum() > 48:  # no overflow, or a rounding excess removed from the most loaded
            continue
        seen += 1
        got = power_law_counts(8, 6, 8, 1, 0.5, np.random.default_rng(seed))
        assert got.sum() == 48 and got.max() <= 8
        assert (got[raw >= 8] == 8).all()
        raised = got > raw
        assert raised.any()
        assert got[raised].max() <= got[got < 8].min(initial=8) + 1
    assert seen >= 10


def test_local_counts_power_law_draws_are_seeded_per_shape() -> None:
    """Draw d uses the generator seeded (seed, T, k, E, round(1000 alpha), d), whatever ep; rank 0's experts."""
    out = local_counts(64, 4, 16, 4, "power_law_1.2")
    assert out.shape == (COLLECTOR_DRAWS, 4) and not out.flags.writeable
    for d in range(COLLECTOR_DRAWS):
        rng = np.random.default_rng((0, 64, 4, 16, 1200, d))
        assert np.array_equal(out[d], power_law_counts(64, 4, 16, 4, 1.2, rng)[:4])
    assert not np.array_equal(out[0], out[1])  # separate draws
    assert not np.array_equal(local_counts(64, 4, 16, 4, "power_law_1.2", seed=1), out)
    assert np.array_equal(local_counts(64, 4, 16, 4, "power_law_1.2", draws=2), out[:2])

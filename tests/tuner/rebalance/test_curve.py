"""The rebalance curve: each layer's frontier, and the exact merge across layers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tuner.rebalance.curve import frontier, merge_layers, spread


def test_merge_is_the_exact_pareto_curve() -> None:
    rng = np.random.default_rng(2)
    options = []
    for _ in range(3):
        moves = np.concatenate([[0], np.sort(rng.choice(np.arange(1, 9), size=4, replace=False))])
        objective = 10 - np.cumsum(rng.uniform(0, 3, size=5)) + rng.uniform(0, 1.5, size=5)  # not convex
        objective[0] = 10.0
        options.append([(int(m), float(o)) for m, o in zip(moves, objective)])
    curve = merge_layers(options)
    moves = [m for m, _, _ in curve]
    totals = [t for _, t, _ in curve]
    assert moves == sorted(moves) and totals == sorted(totals, reverse=True)
    assert curve[0] == (0, 30.0, (0, 0, 0))
    combos = list(itertools.product(*options))
    for m, total, pick in curve:
        # the picked options are what the point says, and no choice within its moves does better
        assert sum(options[i][j][0] for i, j in enumerate(pick)) == m
        assert sum(options[i][j][1] for i, j in enumerate(pick)) == pytest.approx(total)
        best = min(sum(o for _, o in c) for c in combos if sum(x for x, _ in c) <= m)
        assert total == pytest.approx(best)
    # and every budget's optimum is on the curve
    for budget in range(0, 25):
        best = min(sum(o for _, o in c) for c in combos if sum(x for x, _ in c) <= budget)
        on_curve = min(t for m, t, _ in curve if m <= budget)
        assert on_curve == pytest.approx(best)


def test_frontier_keeps_only_options_lower_than_all_with_fewer_moves() -> None:
    row = np.zeros(2)
    found = [(2, 5.0, row), (0, 9.0, row), (1, 7.0, row), (2, 6.0, row), (3, 7.5, row)]
    assert [(m, o) for m, o, _ in frontier(found)] == [(0, 9.0), (1, 7.0), (2, 5.0)]


def test_spread_picks_log_spaced_states_and_the_last() -> None:
    moves = list(range(0, 101))
    picked = spread(moves, 4)
    assert picked[-1] == 100 and picked[0] >= 1 and len(picked) <= 5
    assert spread([0, 1, 2], 8) == [1, 2]

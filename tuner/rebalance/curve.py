"""The rebalance curve: every layer's options on its lower hull, merged across layers into the fewest moves for
each predicted objective.

Dimension legend: L the trace's recorded MoE layers, E logical experts, G GPUs, S slots per GPU, P = G*S.

A layer's *options* are ``(moves, objective_us, row [P])`` states: its greedy search's states
(:mod:`tuner.rebalance.search`), the full replan's row, and where the replan beats the greedy search, the walks
between the two (the replan pruned of its least useful moves, and made most useful first) and the greedy search
restarted from some of the pruned replans (:data:`POLISH_STARTS`). Each layer keeps its frontier (no other option
is lower with as few moves); :func:`merge_layers` then picks one option per layer for every move budget.
"""

from __future__ import annotations

import time

import numpy as np

from tuner.rebalance.search import TOL, LayerPrices, LayerSearch

# the greedy search restarted from this many states of each pruned replan (a tuning choice, made on OLMoE c4 ->
# github, a benchmark case: 12 starts needed 46 moves for 80% of the MILP replan's gain, 30 needed 38, every
# state 42)
POLISH_STARTS = 30

Option = tuple[int, float, np.ndarray]  # (moves, objective_us, row [P])


def layer_options(
    searches: list[LayerSearch],
    deployed: np.ndarray,
    full: np.ndarray,
    full_obj: list[float],
    counts: np.ndarray,
    num_gpus: int,
    prices: LayerPrices,
    caps: list[int],
    until: float,
) -> tuple[list[list[tuple[int, float]]], list[list[np.ndarray]]]:
    """Each layer's frontier (module docstring) from its finished greedy ``searches``, the ``deployed`` and
    ``full`` replan rows (``[L, P]``, the replan's objectives ``full_obj [L]`` and moves ``caps [L]``) under
    ``counts [L, E]``. The walks and restarts share the time up to ``time.perf_counter() == until``, each layer an
    even share of what is left. Returns ``(options, states)``: per layer, the ``(moves, objective_us)`` options
    and their rows."""
    G = int(num_gpus)
    L, P = deployed.shape
    E = counts.shape[1]
    S = P // G
    options, states = [], []
    for l, s in enumerate(searches):
        found = [(m, o, r) for m, o, r in s.history if m <= caps[l] or m == 0]
        found.append((caps[l], full_obj[l], full[l]))
        if full_obj[l] < min(o for _, o, _ in s.history):
            held = np.zeros((E, G), dtype=bool)
            held[deployed[l], np.arange(P) // S] = True
            share = max(0.0, until - time.perf_counter()) / (L - l)
            found += _walks(deployed[l], full[l], counts[l], G, prices, held, caps[l], share)
        found = frontier(found)
        options.append([(m, o) for m, o, _ in found])
        states.append([r for _, _, r in found])
    return options, states


def _walks(
    deployed: np.ndarray,
    full: np.ndarray,
    w: np.ndarray,
    num_gpus: int,
    prices: LayerPrices,
    held: np.ndarray,
    cap: int,
    share: float,
) -> list[Option]:
    """One layer's walks between the ``deployed [P]`` and ``full [P]`` rows and the restarts, within ``share``
    seconds: a third to each walk, the rest (and what they leave) to the restarts."""
    start = time.perf_counter()
    pruned = LayerSearch(full, w, num_gpus, prices).walk(deployed, held, start + share / 3)
    found = list(pruned)
    found += LayerSearch(deployed, w, num_gpus, prices).walk(full, held, start + 2 * share / 3)
    # the greedy search again from some of the pruned replans: a few moves of the search can stand in for many of
    # the replan's
    for _, _, row in pruned[:: max(1, len(pruned) // POLISH_STARTS)]:
        ls = LayerSearch(row, w, num_gpus, prices, held=held)
        while ls.moves < cap and time.perf_counter() < start + share and ls.step():
            pass
        found += ls.history
    return found


def frontier(found: list[Option]) -> list[Option]:
    """The options no other beats with as few moves (by moves, each lower than all before it); the 0-move
    deployed row first."""
    out: list[Option] = []
    for m, o, r in sorted(found, key=lambda x: (x[0], x[1])):
        if not out or o < out[-1][1]:
            out.append((m, o, r))
    return out


def spread(moves: list[int], k: int) -> list[int]:
    """Up to ``k`` curve states after the first (the deployed one), spaced evenly in log moves from the first
    move to the last state (the choices are made among few moves; the last is the curve's end)."""
    if len(moves) <= k + 1:
        return list(range(1, len(moves)))
    targets = np.geomspace(max(moves[1], 1), moves[-1], k)
    picked = {int(np.searchsorted(moves, t, side="right")) - 1 for t in targets}
    return sorted(i for i in picked | {len(moves) - 1} if i > 0)


def merge_layers(options: list[list[tuple[int, float]]]) -> list[tuple[int, float, tuple[int, ...]]]:
    """The Pareto curve over all layers: for every move budget K, the least total objective with one option per
    layer (each layer's ``(moves, objective)`` options, one of them the deployed row with 0 moves) and at most K
    moves in all, a multiple-choice knapsack solved exactly by dynamic programming over K::

        best_l(K) = min_{(m, o) in options_l, m <= K} best_{l-1}(K - m) + o

    Returns ``(moves, total objective, option index per layer)`` at every budget where the total falls, from
    nothing moved."""
    kmax = sum(max(m for m, _ in opts) for opts in options)
    best = np.zeros(kmax + 1)
    choices = []
    for opts in options:
        new = np.full(kmax + 1, np.inf)
        pick = np.zeros(kmax + 1, dtype=np.int64)
        for i, (m, o) in enumerate(opts):
            cand = np.full(kmax + 1, np.inf)
            cand[m:] = best[: kmax + 1 - m] + o
            better = cand < new
            new[better] = cand[better]
            pick[better] = i
        best = new
        choices.append(pick)
    curve = []
    last = np.inf
    for k in range(kmax + 1):
        if best[k] < last - TOL * abs(last if np.isfinite(last) else 0.0):
            last = float(best[k])
            rem, picks = k, []
            for layer in range(len(options) - 1, -1, -1):
                i = int(choices[layer][rem])
                picks.append(i)
                rem -= options[layer][i][0]
            picks.reverse()
            moves = sum(options[layer][i][0] for layer, i in enumerate(picks))
            curve.append((moves, last, tuple(picks)))
    return curve

"""The rebalance move search: its closed-form loads against the engine rules, its moves, its curve."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.engine_dispatch import engine_shares
from tuner.ilp import nic_traffic
from tuner.rebalance.search import LayerPrices, LayerSearch, expert_terms


def _row(rng: np.random.Generator, E: int, G: int, S: int) -> np.ndarray:
    """A map holding every expert, no expert twice on one GPU."""
    P = G * S
    while True:
        row = rng.permutation(np.concatenate([np.arange(E), rng.choice(E, P - E, replace=False)]))
        if all(len(set(row[g * S : (g + 1) * S].tolist())) == S for g in range(G)):
            return row


def _loads(row: np.ndarray, w: np.ndarray, E: int, G: int, gpn: int, engine: str) -> np.ndarray:
    S = row.size // G
    shares = engine_shares(row[None], np.ones((1, row.size)), E, G, gpn, engine)[0]
    return np.bincount(np.arange(row.size) // S, weights=shares * w[row], minlength=G)


@pytest.mark.parametrize("engine, nearest", [("sglang-dynamic", True), ("even", False)])
@pytest.mark.parametrize("G, gpn", [(16, 8), (8, 8), (32, 4)])
def test_closed_form_loads_match_the_engine_rule(engine: str, nearest: bool, G: int, gpn: int) -> None:
    rng = np.random.default_rng(G + gpn)
    E, S = 64, {16: 5, 8: 9, 32: 3}[G]
    row = _row(rng, E, G, S)
    w = rng.gamma(0.7, 1.0, E) * 1000
    prices = LayerPrices(1.0, 0.3, nearest=nearest, gpus_per_node=gpn)
    s = LayerSearch(row, w, G, prices)
    np.testing.assert_allclose(s.load, _loads(row, w, E, G, gpn, engine), rtol=1e-12)
    sets = np.zeros((E, G), dtype=bool)
    sets[row, np.arange(row.size) // S] = True
    load, _ = expert_terms(sets, w, prices)
    np.testing.assert_allclose(load.sum(axis=1), w)  # every assignment lands somewhere
    if nearest and G > gpn:
        nic = nic_traffic(row[None], w[None], E, G, gpn)[0].max()
        assert s.objective == pytest.approx(s.load.max() + 0.3 * nic, rel=1e-12)


def test_every_step_keeps_a_valid_map_and_lowers_the_objective() -> None:
    rng = np.random.default_rng(3)
    E, G, gpn, S = 64, 16, 8, 5
    start = _row(rng, E, G, S)
    w = rng.gamma(0.5, 1.0, E) * 1000
    prices = LayerPrices(1.0, 0.5, nearest=True, gpus_per_node=gpn)
    s = LayerSearch(start, w, G, prices)
    while s.step():
        pass
    objectives = [o for _, o, _ in s.history]
    assert len(objectives) > 3 and objectives == sorted(objectives, reverse=True)
    for moves, objective, row in s.history:
        assert set(row.tolist()) == set(range(E))  # every expert kept
        assert all(len(set(row[g * S : (g + 1) * S].tolist())) == S for g in range(G))
        fresh = LayerSearch(row, w, G, prices, search=False)
        assert fresh.objective == pytest.approx(objective, rel=1e-9)  # the recorded objective is the row's own
        held = np.zeros((E, G), dtype=bool)
        held[start, np.arange(start.size) // S] = True
        assert moves == int(sum(not held[e, p // S] for p, e in enumerate(row)))
    assert s.history[-1][1] < 0.8 * s.history[0][1]


def test_replace_pricing_is_exact() -> None:
    rng = np.random.default_rng(5)
    E, G, gpn, S = 32, 8, 4, 5
    row = _row(rng, E, G, S)
    w = rng.gamma(0.5, 1.0, E) * 100
    prices = LayerPrices(1.0, 0.4, nearest=True, gpus_per_node=gpn)
    s = LayerSearch(row, w, G, prices)
    p, e = s._replace_candidates(s._hot())
    assert p.size > 0
    obj, _, moves = s._price_replace(p, e)
    for i in rng.choice(p.size, size=min(40, p.size), replace=False):
        new = row.copy()
        new[p[i]] = e[i]
        assert obj[i] == pytest.approx(LayerSearch(new, w, G, prices, search=False).objective, rel=1e-5)
    assert (moves == 1).all()


def test_prices_validate_themselves() -> None:
    from moesim.errors import PlacementError

    with pytest.raises(PlacementError, match="rebalance: c_tok: must be a finite number >= 0, got -1"):
        LayerPrices(-1.0, 0.0, nearest=True, gpus_per_node=8)
    with pytest.raises(PlacementError, match="rebalance: gpus_per_node: must be >= 1, got 0"):
        LayerPrices(1.0, 0.0, nearest=False, gpus_per_node=0)

"""Balancing the busiest GPU and the busiest NIC together: the vectorised pricing against the objective's own
formulas, the invariants of the allowed swaps, and the static draw."""

import numpy as np
import pytest

from moesim.engine_dispatch import apply_engine
from moesim.placement import Placement, even_shares
from tuner.engine_refine import sglang_shares_row
from tuner.eplb import replicate_experts
from tuner.ilp import nic_traffic
from tuner.nic_balance import CAP_PENALTY, balance, balance_cost, balance_row, row_cost
from tuner.placers.node_spread import spread_row


def _cost(phy: np.ndarray, counts: np.ndarray, G: int, gpn: int, gpnic: int, ratio: float) -> float:
    """The layer's objective (in c_tok units) from scratch: SGLang's expected shares, ``tuner.ilp.nic_traffic``."""
    E = counts.shape[0]
    shares = sglang_shares_row(phy, E, G, gpn)
    load = np.bincount(np.arange(phy.shape[0]) // (phy.shape[0] // G), weights=counts[phy] * shares, minlength=G)
    x = nic_traffic(phy[None], counts[None], E, G, gpn, gpnic)[0]
    return float(load.max() + ratio * x.max())


def _spread(counts: np.ndarray, G: int, gpn: int, S: int) -> np.ndarray:
    _, _, reps = replicate_experts(counts[None], G * S)
    return spread_row(counts, reps[0], G, gpn, S)


def test_row_cost_is_the_objective_and_the_descent_lowers_it() -> None:
    rng = np.random.default_rng(3)
    # the last case has no replicas and one expert heavier than the rest: little or nothing to move
    for G, gpn, gpnic, E, S in ((32, 8, 1, 64, 3), (16, 4, 2, 40, 3), (16, 8, 1, 32, 2)):
        for _ in range(3):
            counts = rng.dirichlet(np.full(E, 0.4)) * 1e5
            phy = _spread(counts, G, gpn, S)
            ratio = float(rng.uniform(1.0, 6.0))
            before = _cost(phy, counts, G, gpn, gpnic, ratio)
            shares = sglang_shares_row(phy, E, G, gpn)
            out, swaps = balance_row(phy, counts, shares, G, gpn, ratio, gpnic)
            after = _cost(out, counts, G, gpn, gpnic, ratio)
            assert after <= before + 1e-9
            if E < G * S:
                assert swaps > 0 and after < 0.97 * before
            # row_cost, fed the slot loads and NIC terms of the result, is the from-scratch objective
            load = np.bincount(np.arange(G * S) // S, weights=counts[out] * sglang_shares_row(out, E, G, gpn))
            from tuner.ilp import nic_inbound, nic_outbound

            inb = nic_inbound(out[None], counts[None], E, G, gpn, gpnic)[0]
            per_gpu_out = nic_outbound(out[None], counts[None], E, G, gpn, 1)[0][::gpn]
            assert abs(row_cost(load, inb, per_gpu_out, gpnic, ratio) - after) <= 1e-9 * after


def test_swaps_keep_every_share_replica_count_and_node_count() -> None:
    rng = np.random.default_rng(8)
    G, gpn, E, S = 32, 8, 64, 3
    counts = rng.dirichlet(np.full(E, 0.3)) * 1e5
    phy = _spread(counts, G, gpn, S)
    out, swaps = balance_row(phy, counts, sglang_shares_row(phy, E, G, gpn), G, gpn, 4.0)
    assert swaps > 0
    node = np.arange(G * S) // S // gpn
    for row in (phy, out):
        assert np.array_equal(np.bincount(row, minlength=E), np.bincount(phy, minlength=E))
    nodes = lambda row: np.array([len(set(node[row == e])) for e in range(E)])  # noqa: E731
    np.testing.assert_array_equal(nodes(out), nodes(phy))
    # each expert's shares, as a multiset, are those it had
    before, after = sglang_shares_row(phy, E, G, gpn), sglang_shares_row(out, E, G, gpn)
    for e in range(E):
        np.testing.assert_allclose(np.sort(after[out == e]), np.sort(before[phy == e]))


def test_it_fixes_a_gpu_holding_every_single_replica_expert() -> None:
    """Node 0 puts its four single-replica experts on GPU 0 and the everywhere-replicated ones on GPU 1: equal
    loads, but GPU 0 receives all of the node's network inbound. Swapping within the node evens it."""
    G, gpn, E = 4, 2, 12  # 4 slots per GPU
    counts = np.array([10.0] * 4 + [5.0] * 8)
    # experts 0-3 (10 each) replicated on both nodes; 4-11 (5 each) alone. Node 0: GPU 0 = 4,5,6,7; GPU 1 = 0,1,2,3
    phy = np.array([4, 5, 6, 7, 0, 1, 2, 3, 8, 9, 10, 11, 0, 1, 2, 3])
    ratio = 5.0
    before = _cost(phy, counts, G, gpn, 1, ratio)
    out, swaps = balance_row(phy, counts, sglang_shares_row(phy, E, G, gpn), G, gpn, ratio)
    after = _cost(out, counts, G, gpn, 1, ratio)
    assert swaps > 0 and after < 0.8 * before
    inbound = nic_traffic(out[None], counts[None], E, G, gpn)[0]
    assert inbound.max() <= 1.5 * inbound.min() + 1e-9


def test_keep_draw_keeps_the_static_draw() -> None:
    """Across nodes only lone experts move; within a node replicated experts move too. SGLang's draw, redone
    from the new map, gives every slot the share its expert's slot had before the swap, so the shares passed in
    stay exact and the realised objective only goes down."""
    from moesim.specs import load_model

    model = load_model("deepseek-v3")
    rng = np.random.default_rng(2)
    counts = rng.dirichlet(np.full(256, 0.5), size=2) * 1e6
    G, gpn, S = 64, 8, 5
    node = np.arange(G * S) // S // gpn
    phy = np.stack([_spread(counts[l], G, gpn, S) for l in range(2)])
    p = Placement(G, S, 256, phy, even_shares(phy, 256), {"layers": [3, 4]})
    drawn = apply_engine(p, "sglang-static", gpn, model).shares
    out, swaps = balance(p, counts, gpn, 4.0, shares=drawn, keep_draw=True, time_limit_s=10.0)
    assert swaps > 0
    redrawn = apply_engine(out.with_meta(layers=[3, 4]), "sglang-static", gpn, model).shares
    moved_replicated = 0
    for l in range(2):
        reps = np.bincount(phy[l], minlength=256)
        for e in np.flatnonzero(reps > 1):
            # a replicated expert keeps its nodes, and its drawn shares node by node
            np.testing.assert_array_equal(node[out.phy2log[l] == e], node[phy[l] == e])
            np.testing.assert_allclose(redrawn[l][out.phy2log[l] == e], drawn[l][phy[l] == e])
            moved_replicated += int(np.any(np.flatnonzero(out.phy2log[l] == e) != np.flatnonzero(phy[l] == e)))

        # and the realised objective (the draw's loads, the NIC terms) only went down
        def real(row: np.ndarray, shares: np.ndarray, c: np.ndarray = counts[l]) -> float:
            load = np.bincount(np.arange(G * S) // S, weights=c[row] * shares).max()
            return float(load + 4.0 * nic_traffic(row[None], c[None], 256, G, gpn)[0].max())

        assert real(out.phy2log[l], redrawn[l]) <= real(phy[l], drawn[l]) + 1e-6
    assert moved_replicated > 0  # the within-node swaps were used


def test_one_node_or_no_network_price_is_a_no_op() -> None:
    counts = np.ones((1, 8))
    row = np.arange(8)[None]
    p = Placement(4, 2, 8, row, even_shares(row, 8))
    assert balance(p, counts, 4, 5.0)[1] == 0
    assert balance(p, counts, 2, 0.0)[1] == 0


def test_a_load_cap_is_never_crossed_and_is_reached_first() -> None:
    """With the busiest GPU below the cap the descent never lifts it above; from above, it comes down first."""
    rng = np.random.default_rng(11)
    G, gpn, E, S = 32, 8, 64, 3
    for _ in range(4):
        counts = rng.dirichlet(np.full(E, 0.4)) * 1e5
        phy = _spread(counts, G, gpn, S)
        shares = sglang_shares_row(phy, E, G, gpn)

        def load(row: np.ndarray, c: np.ndarray = counts) -> float:
            return float(np.bincount(np.arange(G * S) // S, weights=c[row] * sglang_shares_row(row, E, G, gpn)).max())

        free, _ = balance_row(phy, counts, shares, G, gpn, 8.0)
        cap = load(phy)  # the starting load as the cap
        capped, _ = balance_row(phy, counts, shares, G, gpn, 8.0, load_cap=cap)
        assert load(capped) <= cap * (1 + 1e-12)
        assert load(capped) <= max(load(free), cap) + 1e-9


def test_kicks_only_ever_lower_the_cost_and_keep_the_draw() -> None:
    """The iterated local search keeps a kicked descent only when it ends lower, so with kicks the layer ends at
    or below the plain descent's cost; its kicks are within-node swaps, so the keep-draw invariants hold."""
    rng = np.random.default_rng(5)
    G, gpn, E, S = 32, 8, 64, 3
    node = np.arange(G * S) // S // gpn
    lowered = 0
    for seed in range(4):
        counts = rng.dirichlet(np.full(E, 0.4)) * 1e5
        phy = _spread(counts, G, gpn, S)
        shares = sglang_shares_row(phy, E, G, gpn)
        plain, _ = balance_row(phy, counts, shares, G, gpn, 4.0, keep_draw=True)
        kicked, _ = balance_row(phy, counts, shares, G, gpn, 4.0, keep_draw=True, kicks=30, seed=seed)
        a, b = _cost(plain, counts, G, gpn, 1, 4.0), _cost(kicked, counts, G, gpn, 1, 4.0)
        assert b <= a + 1e-9
        lowered += b < a - 1e-9
        for e in np.flatnonzero(np.bincount(phy, minlength=E) > 1):  # replicated experts keep their nodes
            np.testing.assert_array_equal(node[kicked == e], node[phy == e])
    assert lowered > 0  # the kicks found something the descent alone did not


def test_kicks_without_a_limit_need_a_deadline() -> None:
    phy = np.arange(8)
    with pytest.raises(ValueError, match="deadline"):
        balance_row(phy, np.ones(8), np.ones(8), 4, 2, 1.0, kicks=None)


def test_balance_cost_is_the_sum_of_the_layers_objectives() -> None:
    rng = np.random.default_rng(9)
    G, gpn, E, S = 32, 8, 64, 3
    counts = rng.dirichlet(np.full(E, 0.4), size=3) * 1e5
    phy = np.stack([_spread(counts[l], G, gpn, S) for l in range(3)])
    p = Placement(G, S, E, phy, even_shares(phy, E))
    want = sum(_cost(phy[l], counts[l], G, gpn, 1, 3.0) for l in range(3))
    assert abs(balance_cost(p, counts, gpn, 3.0) - want) <= 1e-9 * want
    # a cap below the busiest GPU adds CAP_PENALTY per assignment above it
    loads = [
        np.bincount(np.arange(G * S) // S, weights=counts[l][phy[l]] * sglang_shares_row(phy[l], E, G, gpn))
        for l in range(3)
    ]
    caps = np.array([ld.max() - 1.0 for ld in loads])
    assert abs(balance_cost(p, counts, gpn, 3.0, load_caps=caps) - (want + 3 * CAP_PENALTY)) <= 1e-9 * want

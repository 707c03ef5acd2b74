"""Lower bounds on the placement objective: below every placement and split of small problems enumerated whole,
and tight where the optimum is known."""

import itertools

import numpy as np
import pytest

from moesim.engine_dispatch import replica_weights
from moesim.placement import Placement, even_shares
from tuner.bounds import crossing_bound, gap, inbound_bound, load_bound, network_load_bound, objective_bound
from tuner.ilp import CostModel, nic_inbound, nic_outbound, nic_traffic, node_inbound, predicted_terms

E, G, GPN, S = 4, 4, 2, 2  # 2 nodes x 2 GPUs, 2 slots each: 8 slots for 4 experts


def all_rows():
    """Every slot -> expert map of the small problem holding each expert at least once."""
    for row in itertools.product(range(E), repeat=G * S):
        if len(set(row)) == E:
            yield np.array(row)


@pytest.fixture(scope="module")
def rows():
    return np.stack(list(all_rows()))  # [R, P]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_load_bound_below_every_placement_and_split(rows, seed) -> None:
    rng = np.random.default_rng(seed)
    c = rng.gamma(0.4, size=E) * 100 + 1
    lb = load_bound(c[None], G, S)[0]
    slot_gpu = np.arange(G * S) // S
    best = np.inf
    for phy in rows[rng.permutation(len(rows))[:3000]]:
        for shares in (even_shares(phy[None], E)[0], rng.dirichlet(np.ones(G * S))):
            sh = shares / np.bincount(phy, weights=shares, minlength=E)[phy]  # any split summing to 1 per expert
            load = np.bincount(slot_gpu, weights=c[phy] * sh, minlength=G).max()
            assert lb <= load * (1 + 1e-9)
            best = min(best, load)
    assert lb >= c.sum() / G - 1e-9 and lb <= best


def test_load_bound_replica_term() -> None:
    # one expert holds 90% of the load: on 8 GPUs of one slot the 4 spare slots give it at most 5 replicas, so
    # some GPU carries >= 90/5 = 18, above the mean 12.5; without spare slots it is 90
    c = np.array([[90.0, 4.0, 3.0, 3.0]])
    assert load_bound(c, 8, 1)[0] == pytest.approx(18.0, rel=1e-6)
    assert load_bound(c, 4, 1)[0] == pytest.approx(90.0, rel=1e-6)


def test_inbound_formula_is_what_the_sglang_rule_sends(rows) -> None:
    """node_inbound equals, rank by rank, what SGLang's expected per-rank split sends across nodes."""
    rng = np.random.default_rng(3)
    c = rng.gamma(0.5, size=E) * 100 + 1
    node_of_slot = np.arange(G * S) // S // GPN
    node_of_rank = np.arange(G) // GPN
    for phy in rows[rng.permutation(len(rows))[:200]]:
        W = replica_weights(phy[None], E, G, GPN, "sglang-static")[0]  # [G ranks, P] expected split
        want = np.zeros(2)
        for r in range(G):
            sent = c[phy] / G * W[r]  # this rank's assignments to each slot
            remote = node_of_slot != node_of_rank[r]
            want += np.bincount(node_of_slot[remote], weights=sent[remote], minlength=2)
        assert np.allclose(node_inbound(phy, c, E, G, GPN)[0], want)


def test_outbound_formula_is_what_the_sglang_rule_sends(rows) -> None:
    """nic_outbound equals, rank by rank, what SGLang's expected per-rank split sends to other nodes; the inbound
    per NIC sums to the node's; nic_traffic is the larger direction."""
    rng = np.random.default_rng(7)
    c = rng.gamma(0.5, size=E) * 100 + 1
    node_of_slot = np.arange(G * S) // S // GPN
    node_of_rank = np.arange(G) // GPN
    for phy in rows[rng.permutation(len(rows))[:200]]:
        W = replica_weights(phy[None], E, G, GPN, "sglang-static")[0]
        want = np.array([(c[phy] / G * W[r])[node_of_slot != node_of_rank[r]].sum() for r in range(G)])
        assert np.allclose(nic_outbound(phy, c, E, G, GPN)[0], want)
        inb = nic_inbound(phy, c, E, G, GPN)[0]
        assert np.allclose(inb.reshape(-1, GPN).sum(axis=1), node_inbound(phy, c, E, G, GPN)[0])
        assert np.allclose(nic_traffic(phy, c, E, G, GPN)[0], np.maximum(inb, want))
        # two GPUs on one NIC: the NIC carries both
        assert np.allclose(nic_inbound(phy, c, E, G, GPN, 2)[0], inb.reshape(-1, 2).sum(axis=1))
        assert np.allclose(nic_outbound(phy, c, E, G, GPN, 2)[0], want.reshape(-1, 2).sum(axis=1))


def test_inbound_bound_below_every_placement() -> None:
    # 5 experts in 8 slots on 2 nodes: only 3 can be on both nodes, so some traffic must cross
    e5 = 5
    rows5 = np.stack([np.array(r) for r in itertools.product(range(e5), repeat=G * S) if len(set(r)) == e5])
    rng = np.random.default_rng(4)
    c = rng.gamma(0.5, size=(1, e5)) * 100 + 1
    lb = inbound_bound(c, G, GPN, S)[0]
    best = nic_inbound(rows5, np.repeat(c, len(rows5), axis=0), e5, G, GPN).max(axis=1).min()
    assert 0 < lb <= best * (1 + 1e-9)
    # four experts fit on both nodes: nothing need cross; one node: no network
    assert inbound_bound(c[:, :4], G, GPN, S)[0] == 0.0 and inbound_bound(c, G, G, S)[0] == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_network_load_bound_below_every_placement_and_tight(seed) -> None:
    """The joint bound is below the objective of every placement of a small problem enumerated whole, at or above
    each separate bound, and reached by the replica counts it returns where they pack exactly."""
    e5 = 5
    rows5 = np.stack([np.array(r) for r in itertools.product(range(e5), repeat=G * S) if len(set(r)) == e5])
    rng = np.random.default_rng(seed)
    c = rng.gamma(0.5, size=(1, e5)) * 100 + 1
    c_tok, c_nic = 1.0, float(rng.uniform(0.2, 3.0))
    cc = np.repeat(c, len(rows5), axis=0)
    loads = np.stack([np.bincount(np.arange(G * S) // S, weights=c[0][r] / np.bincount(r)[r]) for r in rows5])
    objective = c_tok * loads.max(axis=1) + c_nic * nic_traffic(rows5, cc, e5, G, GPN).max(axis=1)
    bound, load, net, reps = network_load_bound(c, G, GPN, S, c_tok, c_nic)
    assert bound[0] <= objective.min() * (1 + 1e-9)
    separate = max(c_tok * load_bound(c, G, S)[0], c_nic * inbound_bound(c, G, GPN, S)[0])
    assert bound[0] >= separate * (1 - 1e-9)
    assert reps[0].sum() == G * S and reps[0].min() >= 1
    assert c_tok * load[0] + c_nic * net[0] >= bound[0] * (1 - 1e-9)
    # without the network the bound is the load bound
    only = network_load_bound(c, G, GPN, S, c_tok, 0.0)[0][0]
    assert only == pytest.approx(c_tok * load_bound(c, G, S)[0])


def test_crossing_bound_below_every_pair_of_placements() -> None:
    rng = np.random.default_rng(5)
    T = rng.gamma(0.5, size=(E, E)) * 10
    lb = crossing_bound(T[None], S)[0]
    one = [np.array(r) for r in itertools.permutations(np.repeat(np.arange(E), 2))][:400]  # two replicas each
    worst_gap = np.inf
    for a, b in itertools.product(one[::20], one[::20]):
        pa = Placement(G, S, E, np.stack([a, b]), even_shares(np.stack([a, b]), E), {})
        x = predicted_terms(pa, np.ones((2, E)), T[None], GPN, CostModel(1.0, 1.0, 1.0))["cross_gpu_tokens"]
        assert lb <= x * (1 + 1e-9)
        worst_gap = min(worst_gap, x - lb)
    assert worst_gap >= 0


def test_objective_bound_sums_terms_and_gap() -> None:
    rng = np.random.default_rng(6)
    c = rng.gamma(0.5, size=(3, E)) * 100
    T = rng.gamma(0.5, size=(2, E, E))
    cost = CostModel(2.0, 0.5, 0.25, us_per_nic_assignment=0.125)
    b = objective_bound(c, T, G, GPN, S, cost, network=True)
    want = (
        network_load_bound(c, G, GPN, S, 2.0, 0.125)[0].sum()
        + 0.5 * crossing_bound(T, S).sum()
        + 0.25 * crossing_bound(T, GPN * S).sum()
    )
    assert b["objective_us"] == pytest.approx(want)
    plain = objective_bound(c, T, G, GPN, S, cost)
    assert plain["objective_us"] == pytest.approx(
        want - network_load_bound(c, G, GPN, S, 2.0, 0.125)[0].sum() + 2.0 * load_bound(c, G, S).sum()
    )
    assert gap(10.0, 9.0) == pytest.approx(0.1) and gap(0.0, 0.0) == 0.0

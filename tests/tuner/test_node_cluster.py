"""The node stage (tuner.node_cluster) and the packing local search it relies on, on planted instances."""

import numpy as np

from tuner.eplb import eplb_placement
from tuner.ilp import CostModel, greedy_bins, improve_bins, predicted_terms, solve_ilp
from tuner.node_cluster import cluster_nodes, cross_node_tokens

COST = CostModel(us_per_token=0.02, us_per_gpu_token=0.002, us_per_node_token=0.01, bytes_per_token=8192.0)


def _blocks(L: int = 3, E: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two planted blocks: tokens of experts 0..E/2-1 go to experts 0..E/2-1 of the next layer (and the same for
    the upper half), with uneven expert loads but equal block loads; the only way to cut node crossings is to
    split by block, and the per-layer MILP alone (given the neighbours) never starts to (no single layer gains)."""
    rng = np.random.default_rng(seed)
    half = E // 2
    low = 1000.0 + rng.integers(0, 200, size=(L, half)).astype(float)
    counts = np.concatenate([low, low[:, ::-1]], axis=1)  # both blocks carry the same load
    trans = []
    for l in range(L - 1):
        T = np.zeros((E, E))
        for blk in (slice(0, half), slice(half, E)):
            dst = counts[l + 1, blk] / counts[l + 1, blk].sum()
            T[blk, blk] = np.outer(counts[l, blk], dst)
        trans.append(T * counts[l + 1].sum() / T.sum())
    return counts, np.stack(trans)


def test_cluster_nodes_recovers_planted_blocks() -> None:
    counts, T = _blocks()
    L, E = counts.shape
    phy = np.tile(np.arange(E), (L, 1))  # one replica each; start: even experts on node 0, odd on node 1
    start = np.tile(np.arange(E) % 2, (L, 1))
    cap = counts.sum(axis=1) / 2 * 1.05
    nodes = cluster_nodes(counts, T, phy, start, 2, cap, steps=5000)
    before = cross_node_tokens(phy, start, T, E, 2)
    after = cross_node_tokens(phy, nodes, T, E, 2)
    assert before > 0.4 * T.sum()
    assert after < 0.05 * before
    for l in range(L):
        np.testing.assert_array_equal(np.bincount(nodes[l], minlength=2), [E // 2, E // 2])  # slots kept
        loads = np.bincount(nodes[l], weights=counts[l], minlength=2)
        assert loads.max() <= max(cap[l], np.bincount(start[l], weights=counts[l]).max()) * (1 + 1e-9)
    # same seed, same answer
    np.testing.assert_array_equal(nodes, cluster_nodes(counts, T, phy, start, 2, cap, steps=5000))


def test_cluster_nodes_respects_a_tight_node_cap() -> None:
    counts, T = _blocks(seed=1)
    counts[:, : counts.shape[1] // 2] *= 1.5  # the planted blocks no longer balance: the cap must hold them apart
    L, E = counts.shape
    phy = np.tile(np.arange(E), (L, 1))
    start = np.tile(np.arange(E) % 2, (L, 1))
    start_loads = [np.bincount(start[l], weights=counts[l], minlength=2) for l in range(L)]
    cap = np.array([lo.max() for lo in start_loads])
    nodes = cluster_nodes(counts, T, phy, start, 2, cap, steps=5000)
    for l in range(L):
        assert np.bincount(nodes[l], weights=counts[l], minlength=2).max() <= cap[l] * (1 + 1e-9)
    assert cross_node_tokens(phy, nodes, T, E, 2) < cross_node_tokens(phy, start, T, E, 2)


def test_improve_bins_fixes_lpt() -> None:
    w = np.array([8.0, 7.0, 6.0, 5.0, 4.0, 2.0])  # LPT with 3 slots per bin: {8, 5, 4} = 17 and {7, 6, 2} = 15
    ones = np.ones(6, dtype=np.int64)
    y0, x0 = greedy_bins(w, ones, np.array([3, 3]))
    assert (w @ x0).max() == 17.0
    y, x = improve_bins(w, ones, y0)
    assert (w @ x).max() == 16.0  # {8, 6, 2} and {7, 5, 4}
    np.testing.assert_array_equal(y.sum(axis=0), [3, 3])
    np.testing.assert_array_equal(y.sum(axis=1), ones)


def test_ilp_adopts_node_clustering_on_planted_blocks() -> None:
    counts, T = _blocks(E=16, seed=2)
    warm = eplb_placement(counts, 4, 4)
    res = solve_ilp(counts, T, 4, 2, 4, COST, warm_start=warm, time_limit_s=10)
    res.placement.validate()
    assert res.clustered
    lb, lw = res.placement.gpu_loads(counts), warm.gpu_loads(counts)
    assert np.all(lb.max(axis=1) <= lw.max(axis=1) * (1 + 1e-6))  # no layer less balanced than EPLB
    before = predicted_terms(warm, counts, T, 2, COST)
    after = predicted_terms(res.placement, counts, T, 2, COST)
    assert after["cross_node_tokens"] < 0.2 * before["cross_node_tokens"]
    assert after["objective_us"] < before["objective_us"]

"""``moesim.layer_core``: the vectorised core, checked against hand-derived traffic, token and capacity numbers
(the equations of ``moesim.dispatch.base`` and ``moesim.capacity``), its sequential latency sum, its row
independence, and :func:`layer_results`' tail-GPU selection.

OLMoE (E 64, top-8, H 2048) with the contiguous placement: on ``dgx-h100`` (1 node x 8) each GPU holds 8
experts, on ``h100-2x8-ib400`` (2 nodes x 8) 4. Uniform routing makes every GPU alike, so per-GPU numbers
follow from the formulas by hand.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from moesim.layer_core import LayerArrays, capacity_rows, layer_results, simulate_arrays
from moesim.options import SimOptions
from moesim.results import LayerResult

E, K, H = 64, 8, 2048  # OLMoE
T = 512  # tokens per GPU
ROW_BF16 = 2.0 * H  # bytes of one BF16 token row
ROW_FP8 = H * (1 + 4 / 128)


@pytest.fixture(scope="module")
def node():  # noqa: ANN201
    from moesim.specs import load_cluster

    return load_cluster("dgx-h100")


@pytest.fixture(scope="module")
def two_nodes():  # noqa: ANN201
    from moesim.specs import load_cluster

    return load_cluster("h100-2x8-ib400")


def contiguous(layers: int, num_experts: int = E) -> tuple[np.ndarray, np.ndarray]:
    """One slot per expert, experts 0..E-1 in order (GPU g holds experts [g S, (g + 1) S))."""
    return np.tile(np.arange(num_experts), (layers, 1)), np.ones((layers, num_experts))


def run(model, cluster, counts, **opts) -> LayerArrays:  # noqa: ANN001
    counts = np.asarray(counts, dtype=np.float64)
    phy, sh = contiguous(counts.shape[0])
    slots = E // cluster.num_gpus
    return simulate_arrays(model, cluster, counts, phy, sh, slots, SimOptions(tokens_per_gpu=T, **opts), None)


def skewed(layers: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 200, size=(layers, E)).astype(np.float64)


def test_uniform_single_node_without_dedup(olmoe, node) -> None:  # noqa: ANN001
    a = run(olmoe, node, np.ones((2, E)), dedup=False)
    g = node.num_gpus
    assert a.latency.shape == a.gpu_tokens.shape == (2, g)
    # every GPU processes T*k assignments: T*G*k spread evenly over G GPUs
    assert np.allclose(a.gpu_tokens, T * K)
    # without dedup each assignment is one row; a GPU sends (G-1)/G of its T*k rows over NVLink; both directions
    assert np.allclose(a.nvlink_bytes, 2 * (g - 1) * T * K * ROW_BF16, rtol=1e-12)
    assert np.array_equal(a.network_bytes, np.zeros(2))
    assert np.array_equal(a.dropped, np.zeros(2)) and np.array_equal(a.rerouted, np.zeros(2))
    assert np.allclose(a.latency, a.latency[0, 0])  # uniform: all GPUs alike
    assert np.all(a.dispatch > 0) and np.all(a.compute > 0) and np.all(a.router > 0)


def test_sequential_latency_is_the_sum_of_the_phases(olmoe, two_nodes) -> None:  # noqa: ANN001
    a = run(olmoe, two_nodes, skewed(3), overlap_chunks=1)
    assert np.allclose(a.latency, a.router + a.permute + a.dispatch + a.compute + a.combine, rtol=1e-12)
    # the router is the same on every GPU (it runs on each GPU's own T tokens)
    assert np.all(a.router == a.router[:, :1])


def test_dedup_two_nodes_flat_traffic_by_hand(olmoe, two_nodes) -> None:  # noqa: ANN001
    g, gpn = two_nodes.num_gpus, two_nodes.gpus_per_node
    a = run(olmoe, two_nodes, np.ones((1, E)), dedup=True, alltoall="flat")
    n = E // g  # experts per GPU
    u = 1 - math.comb(E - n, K) / math.comb(E, K)  # a token reaches a GPU unless none of its n experts is chosen
    assert a.nvlink_bytes[0] == pytest.approx(2 * g * (gpn - 1) * T * u * ROW_BF16, rel=1e-9)
    assert a.network_bytes[0] == pytest.approx(2 * g * (g - gpn) * T * u * ROW_BF16, rel=1e-9)


def test_hierarchical_sends_a_token_once_per_node(olmoe, two_nodes) -> None:  # noqa: ANN001
    g, nodes = two_nodes.num_gpus, 2
    a = run(olmoe, two_nodes, np.ones((1, E)), alltoall="hierarchical")
    un = 1 - math.comb(E - E // nodes, K) / math.comb(E, K)  # delivery to the other node, deduplicated
    assert a.network_bytes[0] == pytest.approx(2 * g * (nodes - 1) * T * un * ROW_BF16, rel=1e-9)
    flat = run(olmoe, two_nodes, np.ones((1, E)), alltoall="flat")
    assert a.network_bytes[0] < flat.network_bytes[0]


def test_combine_dtype_scales_only_the_combine_bytes(olmoe, node) -> None:  # noqa: ANN001
    counts = skewed(2)
    bf = run(olmoe, node, counts)
    fp = run(olmoe, node, counts, combine_dtype="fp8")
    # nvlink = dispatch + combine = D (1 + B_combine / B_dispatch); bf16/bf16 is 2 D
    assert np.allclose(fp.nvlink_bytes, bf.nvlink_bytes / 2 * (1 + ROW_FP8 / ROW_BF16), rtol=1e-12)
    assert np.array_equal(fp.dispatch, bf.dispatch) and np.all(fp.combine < bf.combine)
    assert np.array_equal(fp.compute, bf.compute)


def test_allgather_sends_every_token_to_every_gpu(olmoe, node) -> None:  # noqa: ANN001
    g = node.num_gpus
    a = run(olmoe, node, skewed(2), ep_mode="allgather")
    # u = 1 for every GPU whatever the routing: each GPU receives T rows from each of the G-1 others, both ways
    assert np.allclose(a.nvlink_bytes, 2 * g * (g - 1) * T * ROW_BF16, rtol=1e-12)
    assert np.allclose(a.dispatch, a.dispatch[0, 0])
    assert np.allclose(a.gpu_tokens.sum(axis=1), T * g * K)  # the experts still process T*G*k assignments


def test_counts_are_normalised(olmoe, two_nodes) -> None:  # noqa: ANN001
    counts = skewed(2, seed=3)
    a, b = run(olmoe, two_nodes, counts), run(olmoe, two_nodes, 7.0 * counts)
    for f in dataclasses.fields(LayerArrays):
        assert np.allclose(getattr(a, f.name), getattr(b, f.name), rtol=1e-12, atol=0), f.name
    # the busiest GPU holds the hottest contiguous block of experts
    per_gpu = counts.reshape(2, two_nodes.num_gpus, -1).sum(axis=-1)
    assert np.allclose(a.gpu_tokens, per_gpu / per_gpu.sum(axis=1, keepdims=True) * T * 16 * K)


def test_a_row_does_not_depend_on_the_other_rows(olmoe, two_nodes) -> None:  # noqa: ANN001
    counts = skewed(3, seed=5)
    together = run(olmoe, two_nodes, counts, capacity_factor=1.0)
    for i in range(3):
        alone = run(olmoe, two_nodes, counts[i : i + 1], capacity_factor=1.0)
        for f in dataclasses.fields(LayerArrays):
            assert np.array_equal(getattr(together, f.name)[i], getattr(alone, f.name)[0]), (i, f.name)


def test_identical_rank_weights_equal_the_shares(olmoe, two_nodes) -> None:  # noqa: ANN001
    counts = skewed(2, seed=1)
    g = two_nodes.num_gpus
    phy, sh = contiguous(2)
    opts = SimOptions(tokens_per_gpu=T)
    base = simulate_arrays(olmoe, two_nodes, counts, phy, sh, E // g, opts, None)
    w = np.broadcast_to(sh[:, None, :], (2, g, E)).copy()  # every source splits by the shares
    ranked = simulate_arrays(olmoe, two_nodes, counts, phy, sh, E // g, opts, None, rank_weights=w)
    for f in dataclasses.fields(LayerArrays):
        assert np.allclose(getattr(base, f.name), getattr(ranked, f.name), rtol=1e-9), f.name


def test_per_layer_capacity(olmoe, two_nodes) -> None:  # noqa: ANN001
    counts = skewed(2, seed=2) ** 2  # strongly skewed: some experts far above capacity
    phy, sh = contiguous(2)
    g = two_nodes.num_gpus
    opts = SimOptions(tokens_per_gpu=T)
    a = simulate_arrays(
        olmoe, two_nodes, counts, phy, sh, E // g, opts, None, capacity_factors=[None, 1.0], drop_policies=["probs"] * 2
    )
    assert a.dropped[0] == 0 and a.dropped[1] > 0.05
    assignments = T * g * K
    assert a.gpu_tokens[0].sum() == pytest.approx(assignments)
    p = counts / counts.sum(axis=1, keepdims=True)
    # capacity works on the rounded counts rint(p A): kept + dropped is their sum, which is A only up to rounding
    rounded = np.rint(p[1] * assignments).sum()
    assert a.gpu_tokens[1].sum() + a.dropped[1] * assignments == pytest.approx(rounded, rel=1e-12)
    _, dropped, _ = capacity_rows(p, assignments, phy, E // g, g, T, K, [None, 1.0], ["probs"] * 2)
    assert np.array_equal(a.dropped, dropped)
    # options.capacity_factor applies to every layer when no per-layer list is given
    both = run(olmoe, two_nodes, counts, capacity_factor=1.0)
    assert both.dropped[0] > 0 and both.dropped[1] == a.dropped[1]


# ---------------------------------------------------------------------------------------------- capacity_rows
# 4 experts, k = 1, 2 GPUs x 2 slots (experts 0, 1 on GPU 0; 2, 3 on GPU 1), T = 4 per GPU: A = 8 assignments;
# capacity = G * ceil(T k / E * f) = 2 * ceil(1.0 * f).
P = np.array([[0.5, 0.25, 0.125, 0.125], [0.5, 0.0, 0.25, 0.25]])  # counts [4, 2, 1, 1] and [4, 0, 2, 2]
PHY = np.tile(np.arange(4), (2, 1))


def cap(factors: list, policies: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return capacity_rows(P, 8.0, PHY, 2, 2, 4, 1, factors, policies)


def test_dropless_rows_are_returned_untouched() -> None:
    kept, dropped, rerouted = cap([None, None], ["probs", "probs"])
    assert kept is P and np.array_equal(dropped, [0, 0]) and np.array_equal(rerouted, [0, 0])


@pytest.mark.parametrize("policy", ["probs", "position"])
def test_drop_by_hand(policy: str) -> None:
    kept, dropped, rerouted = cap([1.0, 1.0], [policy, policy])
    # capacity 2: expert 0 keeps 2 of its 4 in both layers
    assert np.allclose(kept, [[0.25, 0.25, 0.125, 0.125], [0.25, 0.0, 0.25, 0.25]])
    assert np.allclose(dropped, [2 / 8, 2 / 8]) and np.array_equal(rerouted, [0, 0])


def test_reroute_by_hand() -> None:
    kept, dropped, rerouted = cap([1.0, 1.0], ["reroute", "reroute"])
    # layer 0: expert 1 (same GPU as expert 0) is full at 2, so the 2 overflow are dropped;
    # layer 1: expert 1 is empty, it takes both overflow assignments
    assert np.allclose(kept, [[0.25, 0.25, 0.125, 0.125], [0.25, 0.25, 0.25, 0.25]])
    assert np.allclose(dropped, [0.25, 0.0]) and np.allclose(rerouted, [0.0, 0.25])
    assert np.allclose(kept.sum(axis=1) + dropped, 1.0)


def test_mixed_rows_keep_their_own_capacity() -> None:
    kept, dropped, rerouted = cap([2.0, None], ["position", "probs"])
    # factor 2: capacity 2 * ceil(2) = 4, nothing over it; the None row is dropless
    assert np.array_equal(kept, P) and np.array_equal(dropped, [0, 0]) and kept is not P
    kept, dropped, _ = cap([None, 1.0], ["probs", "position"])
    assert np.array_equal(kept[0], P[0]) and np.allclose(kept[1], [0.25, 0.0, 0.25, 0.25])
    assert np.allclose(dropped, [0.0, 0.25])


def test_capacity_counts_are_rounded_assignments() -> None:
    # p * A = [2.6, 2.6, 2.8]: rint gives [3, 3, 3]; capacity 1 * ceil(8 * 1 / 3 * 1) = 3 -> nothing dropped
    p = np.array([[2.6, 2.6, 2.8]]) / 8.0
    kept, dropped, _ = capacity_rows(p, 8.0, np.array([[0, 1, 2]]), 3, 1, 8, 1, [1.0], ["probs"])
    assert dropped[0] == 0 and np.allclose(kept, [[3 / 8] * 3])


# ---------------------------------------------------------------------------------------------- layer_results
def hand_arrays() -> LayerArrays:
    lat = np.array([[1.0, 5.0, 3.0], [7.0, 2.0, 7.0]])  # layer 1 ties: the first GPU wins
    ramp = np.arange(6.0).reshape(2, 3)
    return LayerArrays(
        latency=lat,
        router=ramp + 100,
        permute=ramp + 200,
        dispatch=ramp + 300,
        compute=ramp + 400,
        combine=ramp + 500,
        gpu_tokens=np.array([[10.0, 20.0, 60.0], [5.0, 5.0, 5.0]]),
        dropped=np.array([0.0, 0.25]),
        rerouted=np.array([0.5, 0.0]),
        nvlink_bytes=np.array([1e3, 2e3]),
        network_bytes=np.array([0.0, 4e3]),
    )


def test_layer_results_pick_the_tail_gpu() -> None:
    out = layer_results(hand_arrays(), [3, 9])
    assert [r.layer for r in out] == [3, 9] and all(isinstance(r, LayerResult) for r in out)
    a, b = out
    assert (a.tail_gpu, b.tail_gpu) == (1, 0)
    assert (a.latency_us, a.router_us, a.permute_us, a.dispatch_us, a.compute_us, a.combine_us) == (
        5.0, 101.0, 201.0, 301.0, 401.0, 501.0,
    )  # fmt: skip
    assert (b.latency_us, b.router_us, b.combine_us) == (7.0, 103.0, 503.0)
    assert (a.max_gpu_tokens, a.mean_gpu_tokens) == (60.0, 30.0) and (b.max_gpu_tokens, b.mean_gpu_tokens) == (5, 5)
    assert (a.dropped_fraction, a.rerouted_fraction, b.dropped_fraction) == (0.0, 0.5, 0.25)
    assert (b.nvlink_bytes, b.network_bytes) == (2e3, 4e3)
    assert np.array_equal(b.gpu_latency_us, [7.0, 2.0, 7.0]) and np.array_equal(a.gpu_compute_us, [400, 401, 402])
    assert np.array_equal(b.gpu_dispatch_us, [303, 304, 305]) and np.array_equal(a.gpu_tokens, [10, 20, 60])
    d = a.to_dict()
    assert type(d["tail_gpu"]) is int and type(d["layer"]) is int and type(d["latency_us"]) is float


def test_layer_results_of_a_hot_gpu(olmoe, node) -> None:  # noqa: ANN001
    counts = np.ones((1, E))
    counts[0, 16:24] = 50.0  # experts 16..23: GPU 2's block
    a = run(olmoe, node, counts)
    (r,) = layer_results(a, [0])
    assert r.tail_gpu == 2 and r.max_gpu_tokens == pytest.approx(a.gpu_tokens[0, 2])
    assert r.mean_gpu_tokens == pytest.approx(T * K) and r.max_gpu_tokens > 5 * r.mean_gpu_tokens
    assert r.latency_us == pytest.approx(a.latency[0].max()) and r.compute_us == a.compute[0, 2]

"""All-to-all model: deduplicated delivery from counts against exact routing, wire formats, link loads."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.dispatch import (
    FlatAllToAll,
    HierarchicalAllToAll,
    bytes_per_token,
    delivery_per_token,
    group_selection,
    make_alltoall,
)
from moesim.errors import SpecError


def sample_topk(
    rng: np.random.Generator,
    num_tokens: int,
    logits: np.ndarray,
    top_k: int,
    n_group: int = 1,
    topk_group: int = 1,
) -> np.ndarray:
    """Exact routing by noisy scores: DeepSeek-style group-limited top-k (group score = sum of its top 2)."""
    num_experts = logits.size
    scores = rng.gumbel(size=(num_tokens, num_experts)) + logits
    if n_group > 1:
        group_score = np.sort(scores.reshape(num_tokens, n_group, -1), axis=-1)[..., -2:].sum(-1)
        top = np.argsort(-group_score, axis=1)[:, :topk_group]
        mask = np.full((num_tokens, n_group), -np.inf)
        np.put_along_axis(mask, top, 0.0, axis=1)
        scores = scores + np.repeat(mask, num_experts // n_group, axis=1)
    return np.argsort(-scores, axis=1)[:, :top_k]


def analytic_and_exact(
    num_experts: int,
    num_gpus: int,
    top_k: int,
    alpha: float,
    n_group: int = 1,
    topk_group: int = 1,
    num_tokens: int = 12000,
    seed: int = 0,
):
    rng = np.random.default_rng(seed)
    logits = -alpha * np.log(np.arange(1, num_experts + 1))
    rng.shuffle(logits)
    ids = sample_topk(rng, num_tokens, logits, top_k, n_group, topk_group)
    per_gpu = num_experts // num_gpus
    touched = np.zeros((num_tokens, num_gpus), dtype=bool)
    np.put_along_axis(touched, ids // per_gpu, True, axis=1)
    exact = touched.mean(axis=0)
    counts = np.bincount(ids.ravel(), minlength=num_experts)
    p = counts / counts.sum()
    group_size = num_experts // n_group
    group_mass = np.bincount(np.arange(num_experts) // group_size, weights=p, minlength=n_group)[None]
    sel = group_selection(group_mass, topk_group)
    experts = np.arange(num_experts)
    u = delivery_per_token(
        p[None],
        np.ones((1, num_experts)),
        experts // per_gpu,
        (experts // group_size)[None],
        num_gpus,
        sel,
        top_k,
        num_experts,
        topk_group,
    )[0]
    return u, exact


@pytest.mark.parametrize("num_experts,num_gpus,top_k", [(256, 8, 8), (256, 64, 8), (64, 8, 8), (8, 4, 2)])
def test_dedup_exact_for_uniform_routing(num_experts, num_gpus, top_k) -> None:
    u, exact = analytic_and_exact(num_experts, num_gpus, top_k, alpha=0.0)
    assert np.allclose(u, exact, atol=0.015)  # the sample is within its binomial noise
    # exactly uniform counts: the analytic form equals 1 - C(E-n,k)/C(E,k)
    n = num_experts // num_gpus
    miss = np.prod([(num_experts - n - i) / (num_experts - i) for i in range(top_k)])
    experts = np.arange(num_experts)
    u_exact = delivery_per_token(
        np.full((1, num_experts), 1 / num_experts),
        np.ones((1, num_experts)),
        experts // n,
        np.zeros((1, num_experts), dtype=np.int64),
        num_gpus,
        np.ones((1, 1)),
        top_k,
        num_experts,
        1,
    )
    assert np.allclose(u_exact, 1 - miss, rtol=1e-9)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.2])
@pytest.mark.parametrize("num_gpus", [8, 64])
def test_dedup_close_to_exact_for_skewed_routing(alpha, num_gpus) -> None:
    u, exact = analytic_and_exact(256, num_gpus, 8, alpha)
    assert abs(u.sum() - exact.sum()) / exact.sum() < 0.03  # distinct GPUs per token
    assert np.max(np.abs(u - exact) / np.maximum(exact, 0.02)) < 0.15


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("num_gpus", [8, 32])
def test_group_limited_routing(alpha, num_gpus) -> None:
    """DeepSeek-V3: 8 groups, top-4 groups: a token reaches at most 4 groups' GPUs."""
    u, exact = analytic_and_exact(256, num_gpus, 8, alpha, n_group=8, topk_group=4)
    assert abs(u.sum() - exact.sum()) / exact.sum() < 0.05
    if num_gpus == 8:  # one group per GPU: exactly the 4 selected groups are touched
        assert u.sum() == pytest.approx(4.0, rel=1e-6)
        assert exact.sum() == pytest.approx(4.0, rel=0.02)
    # plain top-8 would touch far more GPUs
    u_flat, _ = analytic_and_exact(256, num_gpus, 8, alpha)
    assert u_flat.sum() > u.sum()


def test_vacuous_group_limit_is_plain_topk() -> None:
    u_g, _ = analytic_and_exact(256, 16, 8, 0.0, n_group=2, topk_group=2, num_tokens=10)
    u, _ = analytic_and_exact(256, 16, 8, 0.0, num_tokens=10)
    assert np.allclose(u_g, u)


def test_no_dedup_sends_every_assignment() -> None:
    p = np.full((1, 16), 1 / 16)
    u = delivery_per_token(
        p,
        np.ones((1, 16)),
        np.arange(16) // 4,
        np.zeros((1, 16), dtype=np.int64),
        4,
        np.ones((1, 1)),
        4,
        16,
        1,
        dedup=False,
    )
    assert np.allclose(u, 1.0)  # k * q = 4 * 1/4


def test_group_selection_waterfills() -> None:
    s = group_selection(np.array([[0.7, 0.1, 0.1, 0.1]]), 2)
    assert s[0, 0] == pytest.approx(1.0)
    assert s.sum() == pytest.approx(2.0)
    assert np.allclose(s[0, 1:], 1 / 3)
    assert np.allclose(group_selection(np.full((1, 8), 1 / 8), 4), 0.5)


def test_wire_formats() -> None:
    assert bytes_per_token(7168, "bf16") == 14336
    # DeepEP: FP8 payload plus one FP32 scale per 128 channels, i.e. (1 + 4/128) / 2 of BF16
    assert bytes_per_token(7168, "fp8") == pytest.approx(14336 * (1 + 4 / 128) / 2)
    with pytest.raises(SpecError):
        bytes_per_token(7168, "fp4")


class _Links:
    """Duck-typed link classes: 2 nodes x 4 GPUs."""

    num_gpus, gpus_per_node, num_nodes = 8, 4, 2
    multi_node = True
    nic_latency_us, nvl_latency_us = 5.0, 1.0
    gpus_per_switch = 0  # no PCIe switch class


def test_flat_and_hierarchical_loads_conserve_bytes() -> None:
    links = _Links()
    rng = np.random.default_rng(1)
    u = rng.uniform(0.1, 0.6, size=(3, 8))
    un = 1 - (1 - u.reshape(3, 2, 4)).prod(-1)  # any node delivery <= the sum of its GPUs'
    t, b = 100.0, 10.0
    flat = FlatAllToAll().loads(links, u, un, t, b)
    # every byte leaving a GPU arrives somewhere
    assert np.allclose(flat.nvl_in.sum(1), flat.nvl_out.sum(1))
    assert np.allclose(flat.nic_in.sum(1), flat.nic_out.sum(1))
    # total delivered bytes = G sources x T x sum_{d != s} u(d) x B
    total = t * b * (8 * u.sum(1) - u.sum(1))
    assert np.allclose(flat.nvl_in.sum(1) + flat.nic_in.sum(1), total)
    hier = HierarchicalAllToAll().loads(links, u, un, t, b)
    assert np.allclose(hier.nic_in.sum(1), hier.nic_out.sum(1))
    assert np.allclose(hier.nvl_in.sum(1), hier.nvl_out.sum(1))
    # node dedup: fewer network bytes than flat, paid for with NVLink forwarding
    assert (hier.nic_in.sum(1) < flat.nic_in.sum(1)).all()
    assert (hier.nvl_in.sum(1) > flat.nvl_in.sum(1)).all()
    rev = flat.reversed()
    assert np.array_equal(rev.nvl_in, flat.nvl_out)


def test_unknown_strategy_is_one_line_error() -> None:
    with pytest.raises(SpecError, match="alltoall"):
        make_alltoall("ring")


def test_link_classes_agree_with_the_topology_graph() -> None:
    """The hot path reads capacities off the cluster spec; they must be the graph's (moesim.topology)."""
    from moesim.dispatch import link_classes
    from moesim.specs import list_clusters, load_cluster
    from moesim.topology import link_classes as graph_classes

    for slug in list_clusters():
        cluster = load_cluster(slug)
        ours, graph = link_classes(cluster), graph_classes(cluster)
        assert ours.num_gpus == graph.num_gpus and ours.num_nodes == graph.num_nodes, slug
        port = graph.pcie_port_gb_s if cluster.levels[0].kind == "pcie" else graph.nvlink_port_gb_s
        assert ours.nvl_bw_gb_s == pytest.approx(port), slug
        if graph.num_nodes > 1:
            assert ours.nic_bw_gb_s == pytest.approx(graph.nic_gb_s), slug
            assert ours.gpus_per_nic == graph.gpus_per_nic, slug
        if graph.gpus_per_pcie_switch:
            assert ours.gpus_per_switch == graph.gpus_per_pcie_switch, slug
            assert ours.switch_uplink_gb_s == pytest.approx(graph.pcie_uplink_gb_s), slug

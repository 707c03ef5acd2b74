"""All-to-all model: deduplicated delivery from counts against exact routing, wire formats, link loads."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from moesim.dispatch import (
    FlatAllToAll,
    HierarchicalAllToAll,
    bytes_per_token,
    delivery_per_token,
    group_selection,
    link_classes,
    link_times_us,
    make_alltoall,
)
from moesim.errors import SpecError
from moesim.specs import list_clusters, load_cluster
from moesim.topology import build_topology
from moesim.topology import link_classes as graph_link_classes


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
    uplink_bw_gb_s = 0.0  # full-bisection fabric: no leaf uplink class


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


@pytest.mark.parametrize("slug", list_clusters())
def test_link_classes_agree_with_the_topology_graph(slug: str) -> None:
    """Every shipped cluster: the hot path's capacities are the graph's (``moesim.topology``, the single source);
    only the latencies and efficiency curves come from the spec."""
    cluster = load_cluster(slug)
    ours, graph = link_classes(cluster), graph_link_classes(cluster)
    assert (ours.num_gpus, ours.gpus_per_node, ours.num_nodes) == (
        graph.num_gpus,
        graph.gpus_per_node,
        graph.num_nodes,
    )
    pcie = cluster.levels[0].kind == "pcie"
    assert ours.nvl_bw_gb_s == (graph.pcie_port_gb_s if pcie else graph.nvlink_port_gb_s) > 0
    assert ours.nic_bw_gb_s == graph.nic_gb_s
    assert ours.gpus_per_nic == graph.gpus_per_nic
    oversubscribed = cluster.fabric is not None and cluster.fabric.oversubscription > 1
    assert ours.uplink_bw_gb_s == (graph.leaf_uplink_gb_s if oversubscribed else 0.0)
    switch_class = 0 < graph.gpus_per_pcie_switch < graph.gpus_per_node
    assert ours.gpus_per_switch == (graph.gpus_per_pcie_switch if switch_class else 0)
    assert ours.switch_uplink_gb_s == (graph.pcie_uplink_gb_s if switch_class else 0.0)
    # and the graph's numbers are the spec's (a regression guard for the builder)
    assert ours.nvl_bw_gb_s == cluster.levels[0].bw_gb_s
    if cluster.num_nodes > 1:
        assert ours.nic_bw_gb_s == cluster.nic.bw_gb_s
        assert graph.leaf_uplink_gb_s == pytest.approx(
            cluster.num_nodes * cluster.nic.bw_gb_s / cluster.fabric.oversubscription
        )
    assert ours.nvl_latency_us == cluster.levels[0].latency_ns * 1e-3


def _shared_nic_os2() -> Any:
    """``h100-8x8-ib400-os2`` with two GPUs per NIC (4 rails), to exercise the shared-NIC leaf loads."""
    base = load_cluster("h100-8x8-ib400-os2")
    nic = dataclasses.replace(base.nic, layout="shared", nics_per_node=4, gpus_per_nic=2)
    return dataclasses.replace(base, slug="os2-shared-nic", nic=nic)


@pytest.mark.parametrize("make", [lambda: load_cluster("h100-8x8-ib400-os2"), _shared_nic_os2])
def test_flat_loads_match_the_graph_spine_route(make: Any) -> None:
    """Flat all-to-all (sender's NIC to receiver's NIC) is the graph's spine route: the per-class bytes equal
    the bytes on the corresponding graph edges, the leaf uplinks included."""
    cluster = make()
    links = link_classes(cluster)
    topo = build_topology(cluster, route="spine")
    num_gpus, gpn, gpnic = cluster.num_gpus, cluster.gpus_per_node, links.gpus_per_nic
    assert links.uplink_bw_gb_s == pytest.approx(cluster.num_nodes * 50 / 2)
    u = np.random.default_rng(3).uniform(0.05, 0.5, size=(1, num_gpus))
    tb = 1000.0
    loads = FlatAllToAll().loads(links, u, np.zeros((1, cluster.num_nodes)), 1.0, tb)
    edge = topo.link_load(np.where(np.eye(num_gpus, dtype=bool), 0.0, np.broadcast_to(tb * u, (num_gpus,) * 2)))
    for g in range(num_gpus):
        node, rail = g // gpn, (g % gpn) // gpnic
        assert loads.nvl_in[0, g] == pytest.approx(edge.get((("nvswitch", node), ("gpu", g)), 0.0))
        assert loads.nvl_out[0, g] == pytest.approx(edge.get((("gpu", g), ("nvswitch", node)), 0.0))
        nic_in = loads.nic_in[0, node * gpn + rail * gpnic : node * gpn + (rail + 1) * gpnic].sum()
        assert nic_in == pytest.approx(edge[("leaf", rail), ("nic", node, rail)])
        assert loads.up_in[0, g] == pytest.approx(edge[("spine",), ("leaf", rail)])
        assert loads.up_out[0, g] == pytest.approx(edge[("leaf", rail), ("spine",)])


def test_oversubscribed_spine_slows_flat_but_not_rail_aligned_hierarchical() -> None:
    """A 2:1 leaf uplink: flat's cross-rail traffic crosses the spine; DeepEP's same-rank RDMA never does."""
    full, half = link_classes(load_cluster("h100-8x8-ib400")), link_classes(load_cluster("h100-8x8-ib400-os2"))
    u = np.random.default_rng(5).uniform(0.1, 0.4, size=(2, 64))
    un = 1 - (1 - u.reshape(2, 8, 8)).prod(-1)
    for strategy, slower in ((FlatAllToAll(), True), (HierarchicalAllToAll(), False)):
        t_full = link_times_us(full, strategy.loads(full, u, un, 4096, 14336))
        t_half = link_times_us(half, strategy.loads(half, u, un, 4096, 14336))
        if slower:
            assert (t_half >= t_full).all() and (t_half.max(-1) > 1.2 * t_full.max(-1)).all()
        else:
            assert np.array_equal(t_half, t_full)


@pytest.mark.parametrize("cluster_name", ["dgx-h100", "h100-2x8-ib400", "h100-8x8-ib400-os2", "h100-pcie-8"])
@pytest.mark.parametrize("scheme", ["flat", "hierarchical"])
def test_loads_by_source_equal_rank_one_loads_when_sources_agree(cluster_name, scheme) -> None:
    """Every source with the same deliveries is the rank-1 case: both forms give the same bytes per class."""
    from dataclasses import fields

    from moesim.dispatch import link_classes, make_alltoall
    from moesim.specs import load_cluster

    links = link_classes(load_cluster(cluster_name))
    rng = np.random.default_rng(0)
    u = rng.random((3, links.num_gpus))
    un = rng.random((3, links.num_nodes))
    strategy = make_alltoall(scheme)
    ref = strategy.loads(links, u, un, 4096.0, 14336.0)
    got = strategy.loads_by_source(
        links,
        np.broadcast_to(u[:, None, :], (3, links.num_gpus, links.num_gpus)),
        np.broadcast_to(un[:, None, :], (3, links.num_gpus, links.num_nodes)),
        4096.0,
        14336.0,
    )
    for f in fields(ref):
        np.testing.assert_allclose(
            np.broadcast_to(getattr(got, f.name), np.shape(getattr(ref, f.name))),
            getattr(ref, f.name),
            rtol=1e-12,
            atol=1e-6,
            err_msg=f.name,
        )


def test_loads_by_source_credit_a_local_replica() -> None:
    """Two nodes; every source of node 0 delivers only to GPU 0 and every source of node 1 only to GPU 8
    (its nearest replica): no byte crosses the network, unlike the rank-1 average of the same deliveries."""
    from moesim.dispatch import link_classes, make_alltoall
    from moesim.specs import load_cluster

    links = link_classes(load_cluster("h100-2x8-ib400"))
    u = np.zeros((1, 16, 16))
    u[0, :8, 0] = 1.0
    u[0, 8:, 8] = 1.0
    un = np.zeros((1, 16, 2))
    un[0, :8, 0] = un[0, 8:, 1] = 1.0
    for scheme in ("flat", "hierarchical"):
        strategy = make_alltoall(scheme)
        local = strategy.loads_by_source(links, u, un, 100.0, 1.0)
        averaged = strategy.loads(links, u.mean(axis=1), un.mean(axis=1), 100.0, 1.0)
        assert local.network_bytes[0] == 0.0 and averaged.network_bytes[0] > 0.0


def test_alltoall_registry_is_the_one_choice_list() -> None:
    """Every scheme follows the AllToAll protocol under its registry name."""
    from moesim.dispatch import ALLTOALL, AllToAll, make_alltoall

    assert list(ALLTOALL) == ["flat", "hierarchical"]
    for name, cls in ALLTOALL.items():
        assert cls.name == name and isinstance(make_alltoall(name), AllToAll)
    with pytest.raises(SpecError, match="options: alltoall: must be one of flat, hierarchical"):
        make_alltoall("ring")

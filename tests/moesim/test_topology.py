"""Topology: routes through the right switches and NICs, loads add up, the bottleneck is the link that the
physics says it is."""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pytest

from moesim.errors import SpecError
from moesim.specs import list_clusters, load_cluster
from moesim.topology import build_topology, link_classes


def _all_to_all(num_gpus: int, nbytes: float) -> np.ndarray:
    t = np.full((num_gpus, num_gpus), nbytes)
    np.fill_diagonal(t, 0.0)
    return t


@pytest.mark.parametrize("slug", list_clusters())
def test_every_pair_has_a_valid_path(slug: str) -> None:
    c = load_cluster(slug)
    topo = build_topology(c)
    assert sum(1 for n in topo.graph if n[0] == "gpu") == c.num_gpus
    for s in range(c.num_gpus):
        for d in (0, c.num_gpus - 1, (s + 3) % c.num_gpus):
            path = topo.path(s, d)
            if s == d:
                assert path == []
                continue
            assert path[0][0] == ("gpu", s) and path[-1][1] == ("gpu", d)
            assert all(a[1] == b[0] for a, b in itertools.pairwise(path))  # contiguous
            assert all(topo.graph.edges[e]["capacity_gb_s"] > 0 for e in path)


def test_intra_node_path_via_nvswitch() -> None:
    topo = build_topology(load_cluster("dgx-h100"))
    assert topo.path(2, 5) == [(("gpu", 2), ("nvswitch", 0)), (("nvswitch", 0), ("gpu", 5))]
    assert topo.graph.edges[("gpu", 2), ("nvswitch", 0)]["capacity_gb_s"] == 450


def test_inter_node_path_through_nic_rail() -> None:
    topo = build_topology(load_cluster("h800-2x8-ib400"))
    # same rail: NIC 3 of node 0 -> leaf 3 -> NIC 3 of node 1, no NVLink
    nodes = [e[0] for e in topo.path(3, 11)] + [("gpu", 11)]
    assert nodes == [("gpu", 3), ("nic", 0, 3), ("leaf", 3), ("nic", 1, 3), ("gpu", 11)]
    # other rail: rail 3 then NVLink forwarding on the destination node (DeepEP / PXN style)
    nodes = [e[0] for e in topo.path(3, 13)] + [("gpu", 13)]
    assert nodes == [
        ("gpu", 3),
        ("nic", 0, 3),
        ("leaf", 3),
        ("nic", 1, 3),
        ("gpu", 11),
        ("nvswitch", 1),
        ("gpu", 13),
    ]
    # spine routing crosses the fat-tree instead
    spine = build_topology(load_cluster("h800-2x8-ib400"), route="spine")
    nodes = [e[0] for e in spine.path(3, 13)] + [("gpu", 13)]
    assert nodes == [
        ("gpu", 3),
        ("nic", 0, 3),
        ("leaf", 3),
        ("spine",),
        ("leaf", 5),
        ("nic", 1, 5),
        ("gpu", 13),
    ]


def test_pcie_path_through_host() -> None:
    topo = build_topology(load_cluster("h100-pcie-8"))
    nodes = [e[0] for e in topo.path(0, 1)] + [("gpu", 1)]
    assert nodes == [("gpu", 0), ("pcie_switch", 0, 0), ("gpu", 1)]  # same switch: no host hop
    nodes = [e[0] for e in topo.path(0, 7)] + [("gpu", 7)]
    assert nodes == [("gpu", 0), ("pcie_switch", 0, 0), ("host", 0), ("pcie_switch", 0, 3), ("gpu", 7)]
    assert not any(n[0] == "nvswitch" for n in topo.graph)


def test_link_load_conserves_bytes() -> None:
    c = load_cluster("h100-2x8-ib400")
    topo = build_topology(c)
    rng = np.random.default_rng(0)
    t = rng.integers(0, 1 << 20, size=(16, 16)).astype(float)
    np.fill_diagonal(t, 0)
    loads = topo.link_load(t)
    node = np.arange(16) // 8
    local = np.arange(16) % 8
    for r in range(8):
        # rail r of node 0 carries what node 0's GPU r sends to node 1, nothing else
        assert loads[("nic", 0, r), ("leaf", r)] == pytest.approx(t[r, 8:].sum())
    for d in range(8, 16):
        # node 1's NVSwitch port into GPU d: node-1 peers, plus node-0 traffic forwarded from other rails
        own = sum(t[s, d] for s in range(8, 16) if s != d)
        forwarded = sum(t[s, d] for s in range(8) if local[s] != local[d])
        assert loads[("nvswitch", 1), ("gpu", d)] == pytest.approx(own + forwarded)
    # the total over NIC->leaf links equals all bytes crossing nodes
    cross = t[node[:, None] != node[None, :]].sum()
    assert sum(v for (u, w), v in loads.items() if u[0] == "nic" and w[0] == "leaf") == pytest.approx(cross)


def test_bottleneck_single_node_is_the_nvswitch_port() -> None:
    c = load_cluster("dgx-h100")
    topo = build_topology(c)
    msg = 8 << 20
    edge, t_us = topo.bottleneck(_all_to_all(8, msg))
    assert {edge[0][0], edge[1][0]} == {"gpu", "nvswitch"}
    # 7 peers * 8 MiB through a 450 GB/s port at the large-message efficiency (0.82)
    assert t_us == pytest.approx(7 * msg / (450e3 * c.efficiency(0, msg)), rel=1e-9)


def test_bottleneck_multi_node_is_the_nic() -> None:
    c = load_cluster("h800-2x8-ib400")
    edge, _ = build_topology(c).bottleneck(_all_to_all(16, 4 << 20))
    assert "nic" in (edge[0][0], edge[1][0])
    assert edge in [(a, b) for a, b in build_topology(c).graph.edges if "leaf" in (a[0], b[0])]


def test_oversubscription_makes_the_spine_the_bottleneck() -> None:
    full = build_topology(load_cluster("h100-8x8-ib400"), route="spine")
    half = build_topology(load_cluster("h100-8x8-ib400-os2"), route="spine")
    t = _all_to_all(64, 1 << 20)
    _, t_full = full.bottleneck(t)
    e_half, t_half = half.bottleneck(t)
    assert "spine" in (e_half[0][0], e_half[1][0])
    assert t_half > t_full


def test_pcie_shared_uplink_is_the_bottleneck() -> None:
    c = load_cluster("h100-pcie-8")
    edge, t_us = build_topology(c).bottleneck(_all_to_all(8, 1 << 20))
    assert {edge[0][0], edge[1][0]} == {"pcie_switch", "host"}
    # both GPUs behind a switch send to the 6 GPUs off-switch through one 63 GB/s uplink
    assert t_us == pytest.approx(2 * 6 * (1 << 20) / (63.0e3 * c.efficiency(0, 1 << 20)), rel=1e-9)


def test_no_traffic_and_bad_traffic() -> None:
    topo = build_topology(load_cluster("dgx-h100"))
    assert topo.bottleneck(np.zeros((8, 8))) == (None, 0.0)
    with pytest.raises(SpecError, match="traffic"):
        topo.link_load(np.zeros((4, 4)))
    with pytest.raises(SpecError, match="gpu"):
        topo.path(0, 8)


def test_link_classes() -> None:
    lc = link_classes(load_cluster("h100-8x8-ib400-os2"))
    assert (lc.nvlink_port_gb_s, lc.nic_gb_s, lc.gpus_per_nic) == (450, 50, 1)
    assert lc.leaf_downlink_gb_s == 8 * 50 and lc.leaf_uplink_gb_s == pytest.approx(8 * 50 / 2)
    pc = link_classes(load_cluster("h100-pcie-8"))
    assert (pc.nvlink_port_gb_s, pc.pcie_port_gb_s, pc.pcie_uplink_gb_s, pc.gpus_per_pcie_switch) == (
        0,
        63,
        63,
        2,
    )
    assert pc.nic_gb_s == 0


def test_graph_is_strongly_connected() -> None:
    for slug in ("dgx-h100", "h100-pcie-8", "h800-8x8-ib400"):
        assert nx.is_strongly_connected(build_topology(load_cluster(slug)).graph)

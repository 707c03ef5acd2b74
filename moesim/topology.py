"""A cluster as a graph of GPUs, switches and NICs, with per-direction link capacities.

Dimension legend: G GPUs (global index ``g = node * gpus_per_node + local``), N nodes.

Graph (``networkx.DiGraph``; every physical link is two directed edges, one per direction):

- ``("gpu", g)``: a GPU.
- ``("nvswitch", n)``: the NVSwitch fabric of node n (the 4 NVSwitch chips of a DGX H100 aggregated: every GPU
  has one port of ``levels[0].bw_gb_s`` per direction into it, and the fabric is non-blocking).
- ``("pcie_switch", n, s)`` and ``("host", n)``: on PCIe nodes, ``pcie.gpus_per_switch`` GPUs sit behind each
  PCIe switch, whose uplink to the host root complex (``pcie.switch_uplink_gb_s``) they share.
- ``("nic", n, i)``: NIC i of node n. ``rail``: NIC i serves local GPU i; ``shared``: ``gpus_per_nic`` GPUs share.
- ``("leaf", i)``: the leaf switch of rail i (all nodes' NIC i), rail-optimised; ``("spine",)``: the spine
  layer of the fat-tree, aggregated. Each leaf's uplink capacity is its downlink capacity / oversubscription.

Edge attributes: ``capacity_gb_s`` (per direction), ``latency_ns``, ``kind`` (``nvswitch``, ``nvlink``,
``pcie``, ``pcie_uplink``, ``nic``, ``ib``/``roce`` rail link, ``uplink`` leaf-spine), ``level`` (whose
efficiency curve applies: 0 intra-node, 1 inter-node).

Routes (``Topology.path``): same node: through the NVSwitch (or the PCIe switch, and the host when the two GPUs
sit behind different switches). Different nodes, ``route="rail"`` (default; what DeepEP and NCCL's PXN do): leave
on the source GPU's NIC, cross its rail leaf to the same-rail NIC of the destination node, then forward over
the destination's NVSwitch to the destination GPU. ``route="spine"``: source NIC -> leaf -> spine -> the
destination GPU's leaf -> its NIC (no NVLink forwarding).

Cost of a traffic matrix (``Topology.bottleneck``): every edge e carries ``load_e`` bytes; its time is

    t_e [us] = load_e / (capacity_e [GB/s] * 1e3 * eff_level(e)(m_e))

with ``m_e`` the mean per-flow message size on the edge (bytes) and ``eff`` the level's efficiency curve from
the cluster spec. The bottleneck is the edge with the largest ``t_e`` (bandwidth term only; latency is left to
the caller, e.g. ``moesim.dispatch``).

Cheap summary for the simulator's hot path (no graph walks per call)::

    link_classes(cluster) -> LinkClassCapacities
        .nvlink_port_gb_s      per-GPU NVSwitch/NVLink port, per direction (0 on PCIe nodes)
        .pcie_port_gb_s        per-GPU PCIe link to its switch (0 on NVLink nodes)
        .pcie_uplink_gb_s      per PCIe-switch uplink to the host, shared by gpus_per_pcie_switch GPUs
        .gpus_per_pcie_switch
        .nic_gb_s              per NIC (rail) per direction (0 on one node)
        .gpus_per_nic
        .leaf_uplink_gb_s      per leaf (rail) switch to the spine = nodes * nic_gb_s / oversubscription
        .leaf_downlink_gb_s    per leaf switch, sum of its NIC links

These are the only capacities the cost model uses: ``moesim.dispatch.link_classes`` builds its per-class view
from this summary (it adds the spec's latencies and efficiency curves). The graph and the summary are both
read off one list of links (``cluster_links``), the single source of truth for link capacities; the summary
needs no graph, so the simulator never imports networkx. It is cached per cluster.
A leaf's uplink carries only traffic that changes rail (``route="spine"``): rail-aligned traffic (DeepEP's
same-local-rank RDMA, ``route="rail"``) never reaches the spine, whatever the oversubscription.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from moesim.errors import SpecError

if TYPE_CHECKING:
    import networkx as nx

    from moesim.specs import ClusterSpec

__all__ = ["PCIE_GEN5_X16_GB_S", "LinkClassCapacities", "Topology", "build_topology", "link_classes"]

Node = Hashable
Edge = tuple[Node, Node]

# PCIe Gen5 x16 per direction, from the PCI-SIG PCIe 5.0 base specification's signalling rate and encoding:
# 32 GT/s * 16 lanes * 128/130 (128b/130b) / 8 bits = 63.0 GB/s. GPU-to-NIC traffic crosses such a link (through
# a PCIe switch) on DGX-class nodes (DGX H100: ConnectX-7 on PCIe Gen5).
PCIE_GEN5_X16_GB_S = 32e9 * 16 * 128 / 130 / 8 / 1e9
# Modelling assumptions, no published per-hop figure used: the latencies of the GPU-NIC PCIe hop and of the
# leaf-spine hop. They only annotate the graph's edges (``latency_ns``) for callers walking paths; no cost in
# moesim reads them (moesim.dispatch takes per-level latencies from the cluster spec), so their values do not
# change any prediction. Order of magnitude of a PCIe switch traversal / one switch ASIC hop (sub-microsecond).
NIC_HOP_NS = 500.0
SPINE_HOP_NS = 300.0


@dataclass(frozen=True)
class LinkClassCapacities:
    """Per-class link capacities of a cluster, per direction (GB/s); see the module docstring."""

    num_gpus: int
    gpus_per_node: int
    num_nodes: int
    nvlink_port_gb_s: float
    pcie_port_gb_s: float
    pcie_uplink_gb_s: float
    gpus_per_pcie_switch: int
    nic_gb_s: float
    gpus_per_nic: int
    leaf_uplink_gb_s: float
    leaf_downlink_gb_s: float


class Topology:
    """A cluster's graph with path, load and bottleneck queries. Build it with :func:`build_topology`."""

    def __init__(self, cluster: ClusterSpec, graph: nx.DiGraph, route: str) -> None:
        self.cluster = cluster
        self.graph = graph
        self.route = route
        self.num_gpus = cluster.num_gpus
        self.gpus_per_node = cluster.gpus_per_node
        self._paths: dict[tuple[int, int], list[Edge]] = {}

    # ------------------------------------------------------------------ paths
    def _node_path(self, src: int, dst: int) -> list[Node]:
        c = self.cluster
        gpn = self.gpus_per_node
        ns, ls = divmod(src, gpn)
        nd, ld = divmod(dst, gpn)
        if src == dst:
            return [("gpu", src)]
        if ns == nd:
            return [("gpu", src), *self._intra(ns, ls, ld), ("gpu", dst)]
        gpus_per_nic = c.nic.gpus_per_nic if c.nic is not None else 1
        nic_s = ls // gpus_per_nic
        if self.route == "rail":
            # Same-rail NIC on the destination node, then NVLink/PCIe forwarding to the destination GPU.
            via = nd * gpn + nic_s * gpus_per_nic
            hops: list[Node] = [("gpu", src), ("nic", ns, nic_s), ("leaf", nic_s), ("nic", nd, nic_s)]
            if via == dst:
                return [*hops, ("gpu", dst)]
            return [*hops, ("gpu", via), *self._intra(nd, via - nd * gpn, ld), ("gpu", dst)]
        nic_d = ld // gpus_per_nic
        leaves: list[Node] = [("leaf", nic_s)] if nic_s == nic_d else [("leaf", nic_s), ("spine",), ("leaf", nic_d)]
        return [("gpu", src), ("nic", ns, nic_s), *leaves, ("nic", nd, nic_d), ("gpu", dst)]

    def _intra(self, node: int, a: int, b: int) -> list[Node]:
        """Switch hops between local GPUs a and b of one node (exclusive of the GPUs)."""
        pcie = self.cluster.pcie
        if self.cluster.levels[0].kind != "pcie" or pcie is None:
            return [("nvswitch", node)]
        sa, sb = a // pcie.gpus_per_switch, b // pcie.gpus_per_switch
        if sa == sb:
            return [("pcie_switch", node, sa)]
        return [("pcie_switch", node, sa), ("host", node), ("pcie_switch", node, sb)]

    def path(self, src_gpu: int, dst_gpu: int) -> list[Edge]:
        """Directed edges from ``src_gpu`` to ``dst_gpu`` (empty when they are the same GPU)."""
        for g in (src_gpu, dst_gpu):
            if not 0 <= int(g) < self.num_gpus:
                raise SpecError(f"{self.cluster.slug}: gpu: index {g} out of range 0..{self.num_gpus - 1}")
        key = (int(src_gpu), int(dst_gpu))
        if key not in self._paths:
            nodes = self._node_path(*key)
            edges = list(itertools.pairwise(nodes))
            missing = [e for e in edges if not self.graph.has_edge(*e)]
            if missing:  # a bug in the builder, not bad input
                raise AssertionError(f"route {key} uses missing edge {missing[0]}")
            self._paths[key] = edges
        return self._paths[key]

    # ------------------------------------------------------------------ loads
    def _check_traffic(self, traffic_bytes: np.ndarray) -> np.ndarray:
        t = np.asarray(traffic_bytes, dtype=np.float64)
        if t.shape != (self.num_gpus, self.num_gpus):
            raise SpecError(
                f"{self.cluster.slug}: traffic: expected shape ({self.num_gpus}, {self.num_gpus}) [G, G], got {t.shape}"
            )
        if (t < 0).any():
            raise SpecError(f"{self.cluster.slug}: traffic: bytes must be >= 0")
        return t

    def _loads(self, traffic_bytes: np.ndarray) -> tuple[dict[Edge, float], dict[Edge, int]]:
        t = self._check_traffic(traffic_bytes)
        loads: dict[Edge, float] = {}
        flows: dict[Edge, int] = {}
        src, dst = np.nonzero(t)
        for s, d in zip(src.tolist(), dst.tolist()):  # G^2 pairs at most: 4096 for 64 GPUs
            if s == d:
                continue
            b = float(t[s, d])
            for e in self.path(s, d):
                loads[e] = loads.get(e, 0.0) + b
                flows[e] = flows.get(e, 0) + 1
        return loads, flows

    def link_load(self, traffic_bytes: np.ndarray) -> dict[Edge, float]:
        """Bytes on each directed edge for ``traffic_bytes[G, G]`` (row: source GPU, column: destination)."""
        return self._loads(traffic_bytes)[0]

    def edge_times_us(self, traffic_bytes: np.ndarray) -> dict[Edge, float]:
        """Time each loaded edge needs for its bytes: ``load / (capacity * eff(mean flow size))``, us."""
        loads, flows = self._loads(traffic_bytes)
        out: dict[Edge, float] = {}
        for e, load in loads.items():
            attrs = self.graph.edges[e]
            level = min(int(attrs["level"]), len(self.cluster.levels) - 1)
            eff = float(self.cluster.efficiency(level, load / flows[e]))
            out[e] = load / (float(attrs["capacity_gb_s"]) * 1e3 * eff)  # GB/s * 1e3 = bytes per us
        return out

    def bottleneck(self, traffic_bytes: np.ndarray) -> tuple[Edge | None, float]:
        """The slowest edge and its time in us (``(None, 0.0)`` for no traffic)."""
        times = self.edge_times_us(traffic_bytes)
        if not times:
            return None, 0.0
        edge = max(times, key=lambda e: (times[e], str(e)))
        return edge, times[edge]


# one full-duplex link: its two ends, per-direction capacity (GB/s), latency (ns), kind and efficiency level
Link = tuple[Node, Node, float, float, str, int]


def cluster_links(cluster: ClusterSpec) -> list[Link]:
    """Every physical link of the cluster (module docstring): the one description the graph and the
    per-class summary are both built from, so the summary needs no graph (and no networkx import)."""
    links: list[Link] = []

    def add(a: Node, b: Node, capacity_gb_s: float, latency_ns: float, kind: str, level: int) -> None:
        links.append((a, b, float(capacity_gb_s), float(latency_ns), kind, level))

    intra = cluster.levels[0]
    gpn, nodes = cluster.gpus_per_node, cluster.num_nodes
    for n in range(nodes):
        if intra.kind == "pcie" and cluster.pcie is not None:
            per = cluster.pcie.gpus_per_switch
            for s in range(gpn // per):
                sw = ("pcie_switch", n, s)
                add(sw, ("host", n), cluster.pcie.switch_uplink_gb_s, intra.latency_ns / 2, "pcie_uplink", 0)
                for i in range(s * per, (s + 1) * per):
                    add(("gpu", n * gpn + i), sw, intra.bw_gb_s, intra.latency_ns / 2, "pcie", 0)
        else:
            for i in range(gpn):
                add(("gpu", n * gpn + i), ("nvswitch", n), intra.bw_gb_s, intra.latency_ns / 2, intra.kind, 0)
    if nodes > 1 and cluster.nic is not None:
        inter = cluster.levels[1]
        nic = cluster.nic
        over = cluster.fabric.oversubscription if cluster.fabric is not None else 1.0
        for n in range(nodes):
            for j in range(nic.nics_per_node):
                nic_node = ("nic", n, j)
                for i in range(j * nic.gpus_per_nic, (j + 1) * nic.gpus_per_nic):
                    add(("gpu", n * gpn + i), nic_node, PCIE_GEN5_X16_GB_S, NIC_HOP_NS, "nic", 1)
                add(nic_node, ("leaf", j), nic.bw_gb_s, inter.latency_ns / 2, inter.kind, 1)
        for j in range(nic.nics_per_node):
            add(("leaf", j), ("spine",), nodes * nic.bw_gb_s / over, SPINE_HOP_NS, "uplink", 1)
    return links


def build_topology(cluster: ClusterSpec, route: str = "rail") -> Topology:
    """Turn a cluster spec into a :class:`Topology` (see the module docstring for nodes, edges and routes)."""
    import networkx as nx  # only path and bottleneck queries need the graph (0.1-0.5 s to import)

    if route not in ("rail", "spine"):
        raise SpecError(f"{cluster.slug}: route: must be rail or spine, got {route!r}")
    g = nx.DiGraph(name=cluster.slug)
    gpn = cluster.gpus_per_node
    for n in range(cluster.num_nodes):
        for i in range(gpn):
            g.add_node(("gpu", n * gpn + i), node=n, local=i)
    for a, b, capacity, latency, kind, level in cluster_links(cluster):
        for u, v in ((a, b), (b, a)):  # full duplex: two directed edges of the same per-direction capacity
            g.add_edge(u, v, capacity_gb_s=capacity, latency_ns=latency, kind=kind, level=level)
    return Topology(cluster, g, route)


@functools.lru_cache(maxsize=64)
def link_classes(cluster: ClusterSpec) -> LinkClassCapacities:
    """Per-class capacities read off the cluster's links once per cluster (cached; for vectorised cost models)."""
    capacity = {(a, b): c for a, b, c, *_ in cluster_links(cluster)}
    gpn, nodes = cluster.gpus_per_node, cluster.num_nodes
    gpu0 = ("gpu", 0)

    def cap(u: Node, v: Node) -> float:
        return capacity.get((u, v), capacity.get((v, u), 0.0))

    is_pcie = cluster.levels[0].kind == "pcie" and cluster.pcie is not None
    per_switch = cluster.pcie.gpus_per_switch if is_pcie and cluster.pcie is not None else 0
    multi = nodes > 1 and cluster.nic is not None
    gpus_per_nic = cluster.nic.gpus_per_nic if cluster.nic is not None else 1
    return LinkClassCapacities(
        num_gpus=cluster.num_gpus,
        gpus_per_node=gpn,
        num_nodes=nodes,
        nvlink_port_gb_s=0.0 if is_pcie else cap(gpu0, ("nvswitch", 0)),
        pcie_port_gb_s=cap(gpu0, ("pcie_switch", 0, 0)) if is_pcie else 0.0,
        pcie_uplink_gb_s=cap(("pcie_switch", 0, 0), ("host", 0)) if is_pcie else 0.0,
        gpus_per_pcie_switch=per_switch,
        nic_gb_s=cap(("nic", 0, 0), ("leaf", 0)) if multi else 0.0,
        gpus_per_nic=gpus_per_nic,
        leaf_uplink_gb_s=cap(("leaf", 0), ("spine",)) if multi else 0.0,
        leaf_downlink_gb_s=sum(cap(("nic", n, 0), ("leaf", 0)) for n in range(nodes)) if multi else 0.0,
    )

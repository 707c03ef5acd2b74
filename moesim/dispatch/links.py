"""The link classes the all-to-all loads, the bytes on each (:class:`LinkLoads`) and the time they take.

Dimension legend: L MoE layers, E logical experts, k top-k, G GPUs, N nodes (g = node * gpn + local rank),
S slots per GPU, P = G*S physical slots, J = n_group expert groups (1 without group-limited routing).

3. Time
-------
Each link class c has a capacity ``bw_c`` (GB/s per direction, read off the topology graph:
``moesim.topology.link_classes``, the single source of link capacities) and a size-dependent
efficiency ``eff_c(msg)`` (``ClusterSpec.efficiency(level, msg)``, log-interpolated points the cluster profile
cites from nccl-tests), evaluated at the per-peer message size ``msg``::

    t_c = bytes_c / (bw_c * 1e3 * eff_c(msg))                          # us (1 GB/s = 1e3 bytes/us)
    t(d) = max(t_in(d), max_s t_out(s)) + latency                      # d waits for its slowest sender too

with ``latency`` the per-hop latency of the levels crossed (flat: the outermost level used; hierarchical:
inter-node + intra-node, the forwarding is a second hop). The hierarchical scheme pipelines its two hops
(DeepEP forwards chunk by chunk), so its time is the max over both hops' links, not their sum. Combine is the
reverse traffic (in <-> out) with the combine dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from moesim.errors import field_error
from moesim.topology import link_classes as graph_link_classes

if TYPE_CHECKING:
    from moesim.specs import ClusterSpec

__all__ = ["LinkClasses", "LinkLoads", "link_classes", "link_times_us"]


@dataclass(frozen=True)
class LinkClasses:
    """The link classes of a cluster that the all-to-all loads, derived once per cluster by
    :func:`link_classes` from the topology graph's capacities (:func:`moesim.topology.link_classes`).

    ``nvl_*``: the intra-node port of each GPU (NVLink/NVSwitch or PCIe), per direction. ``nic_*``: the
    inter-node NIC; ``gpus_per_nic`` GPUs share one (rail layout: 1). ``uplink_bw_gb_s``: each leaf (rail)
    switch's uplink to the spine when the fat-tree is oversubscribed, else 0 (at full bisection it is never the
    bottleneck). ``gpus_per_switch`` / ``switch_uplink_gb_s``: PCIe nodes' switch uplinks to the host (0 when
    there is no such class, or one switch holds the whole node so no peer traffic crosses an uplink).
    """

    num_gpus: int
    gpus_per_node: int
    num_nodes: int
    intra_kind: str
    nvl_bw_gb_s: float
    nvl_latency_us: float
    nic_bw_gb_s: float
    nic_latency_us: float
    gpus_per_nic: int
    uplink_bw_gb_s: float
    cluster: Any  # the ClusterSpec, for its efficiency curves
    gpus_per_switch: int = 0  # PCIe nodes: GPUs behind one PCIe switch (0 = no switch class)
    switch_uplink_gb_s: float = 0.0  # per switch uplink to the host, per direction

    @property
    def multi_node(self) -> bool:
        return self.num_nodes > 1

    def efficiency(self, level: int, message_bytes: np.ndarray) -> np.ndarray:
        """The cluster spec's curve (``ClusterSpec.efficiency``; its points are validated to ``(0, 1]``)."""
        return np.asarray(self.cluster.efficiency(level, message_bytes), dtype=np.float64)


@lru_cache(maxsize=64)
def link_classes(cluster: ClusterSpec) -> LinkClasses:
    """The all-to-all's link classes: capacities from the topology graph (``moesim.topology.link_classes``),
    latencies and efficiency curves from the cluster spec's levels. Cached per cluster (the simulator's hot
    path calls it once per ``simulate``)."""
    caps = graph_link_classes(cluster)
    levels = cluster.levels
    multi = caps.num_nodes > 1
    if multi and caps.nic_gb_s <= 0:
        raise field_error(cluster.slug, "nic", f"{caps.num_nodes} nodes but no NIC to reach them")
    # at full bisection the leaf uplinks are never the bottleneck (the NICs below them are): no class
    oversubscribed = multi and caps.leaf_uplink_gb_s < caps.leaf_downlink_gb_s * (1 - 1e-9)
    pcie = caps.pcie_port_gb_s > 0
    gps = caps.gpus_per_pcie_switch if pcie and caps.gpus_per_pcie_switch < caps.gpus_per_node else 0
    return LinkClasses(
        num_gpus=caps.num_gpus,
        gpus_per_node=caps.gpus_per_node,
        num_nodes=caps.num_nodes,
        intra_kind=str(levels[0].kind),
        nvl_bw_gb_s=caps.pcie_port_gb_s if pcie else caps.nvlink_port_gb_s,
        nvl_latency_us=float(levels[0].latency_ns) * 1e-3,
        nic_bw_gb_s=caps.nic_gb_s if multi else 0.0,
        nic_latency_us=float(levels[1].latency_ns) * 1e-3 if multi else 0.0,
        gpus_per_nic=caps.gpus_per_nic if multi else 1,
        uplink_bw_gb_s=caps.leaf_uplink_gb_s if oversubscribed else 0.0,
        cluster=cluster,
        gpus_per_switch=gps,
        switch_uplink_gb_s=caps.pcie_uplink_gb_s if gps else 0.0,
    )


@dataclass(frozen=True)
class LinkLoads:
    """Bytes per GPU (``[L, G]``) on each link class, in one direction of one all-to-all, and the per-peer
    message sizes (``[L, G]``) that set each class's efficiency."""

    nvl_in: np.ndarray
    nvl_out: np.ndarray
    nic_in: np.ndarray
    nic_out: np.ndarray
    nvl_msg: np.ndarray
    nic_msg: np.ndarray
    latency_us: float
    nvl_own: np.ndarray | float = 0.0  # own rows counted in nvl_in/nvl_out (pipeline load, not link bytes)
    sw_in: np.ndarray | float = 0.0  # PCIe switch uplink bytes into each GPU's switch (per GPU: its switch's)
    sw_out: np.ndarray | float = 0.0
    up_in: np.ndarray | float = 0.0  # leaf (rail) uplink bytes: per GPU, its leaf's spine -> leaf bytes
    up_out: np.ndarray | float = 0.0  # per GPU, its leaf's leaf -> spine bytes

    def reversed(self) -> LinkLoads:
        """The combine direction: the same bytes flowing back (every in/out pair swapped)."""
        return replace(
            self,
            nvl_in=self.nvl_out,
            nvl_out=self.nvl_in,
            nic_in=self.nic_out,
            nic_out=self.nic_in,
            sw_in=self.sw_out,
            sw_out=self.sw_in,
            up_in=self.up_out,
            up_out=self.up_in,
        )

    def scaled(self, factor: float) -> LinkLoads:
        """Loads for another bytes-per-token (combine dtype) or a chunk of the tokens: every byte count times
        ``factor``, the latency unchanged."""
        return replace(self, **{f.name: getattr(self, f.name) * factor for f in fields(self) if f.name != "latency_us"})

    @property
    def nvlink_bytes(self) -> np.ndarray:
        """``[L]`` bytes over intra-node links, all GPUs (own rows excluded)."""
        return (self.nvl_in - self.nvl_own).sum(axis=-1)

    @property
    def network_bytes(self) -> np.ndarray:
        """``[L]`` bytes over the inter-node network, all GPUs."""
        return self.nic_in.sum(axis=-1)


def _shared_nic(links: LinkClasses, x: np.ndarray) -> np.ndarray:
    """Per-GPU NIC bytes -> bytes on the NIC each GPU uses (GPUs sharing a NIC add up)."""
    if links.gpus_per_nic <= 1:
        return x
    shape = x.shape
    per_nic = x.reshape(shape[0], -1, links.gpus_per_nic).sum(axis=-1)
    return np.repeat(per_nic, links.gpus_per_nic, axis=-1)


def link_times_us(links: LinkClasses, loads: LinkLoads) -> np.ndarray:
    """``[L, G]`` time for each GPU to receive everything sent to it (us); see the module docstring.

    ``t(d) = max(t_in(d), max_s t_out(s)) + latency`` over the intra-node port, the PCIe switch uplink, the NIC
    and the leaf (rail) uplink to the spine.
    """
    to_us = 1e3  # GB/s -> bytes/us
    eff0 = links.efficiency(0, loads.nvl_msg)
    t_in = loads.nvl_in / (links.nvl_bw_gb_s * to_us * eff0)
    t_out = loads.nvl_out / (links.nvl_bw_gb_s * to_us * eff0)
    if links.gpus_per_switch:
        t_in = np.maximum(t_in, loads.sw_in / (links.switch_uplink_gb_s * to_us * eff0))
        t_out = np.maximum(t_out, loads.sw_out / (links.switch_uplink_gb_s * to_us * eff0))
    if links.multi_node and links.nic_bw_gb_s > 0:
        eff1 = links.efficiency(1, loads.nic_msg)
        nic_in = _shared_nic(links, loads.nic_in)
        nic_out = _shared_nic(links, loads.nic_out)
        t_in = np.maximum(t_in, nic_in / (links.nic_bw_gb_s * to_us * eff1))
        t_out = np.maximum(t_out, nic_out / (links.nic_bw_gb_s * to_us * eff1))
        if links.uplink_bw_gb_s > 0:
            t_in = np.maximum(t_in, loads.up_in / (links.uplink_bw_gb_s * to_us * eff1))
            t_out = np.maximum(t_out, loads.up_out / (links.uplink_bw_gb_s * to_us * eff1))
    t = np.maximum(t_in, t_out.max(axis=-1, keepdims=True))
    return np.where(t > 0, t + loads.latency_us, 0.0)

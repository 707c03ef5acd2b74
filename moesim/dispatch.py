"""Dispatch and combine all-to-all: who sends how many bytes where, and how long the busiest link takes.

Dimension legend: L MoE layers, E logical experts, k top-k, G GPUs, N nodes (g = node * gpn + local rank),
S slots per GPU, P = G*S physical slots, J = n_group expert groups (1 without group-limited routing).

1. Delivery probabilities (from per-expert counts only, no loop over tokens)
-------------------------------------------------------------------------------
Every GPU holds T tokens whose routing follows the layer's expert distribution ``p_e`` (fraction of all
assignments; modelling assumption: the source GPU does not change the distribution). A slot (physical expert)
of expert e with replica share ``a`` receives a fraction ``x = p_e * a`` of the assignments. A token includes
expert e with probability ``k * p_e`` exactly (an expert is chosen at most once).

The token reaches a bin (a GPU, or a node for the inter-node hop of the hierarchical scheme) unless none of
the bin's slots is chosen. Plain top-k, with ``n`` = the bin's share of experts::

    P_miss(bin) = prod_{slots in bin} (1 - min(1, k x)) * C_k(n)
    C_k(n)      = prod_{i<k} (1 - n / (E - i)) / (1 - k / E) ** n       # sampling without replacement
    u(bin)      = 1 - P_miss(bin)         # expected deliveries of one token to the bin, deduplicated

``C_k`` corrects the independence product for drawing k distinct experts: exact for uniform routing
(``P_miss = C(E-n, k) / C(E, k)``) and for a single expert under any skew (``P_miss = 1 - k p_e``); in between
an approximation, checked against exact top-k sampling in ``tests/moesim/test_dispatch.py``.

Group-limited routing (``topk_group < n_group``): group j is selected with probability ``s_j = min(1, c
m_j)``,
``sum_j s_j = topk_group`` (water-filling on the group masses ``m_j``). A selected group always gets one pick
(it was selected for its strongest experts), landing on a slot in proportion to ``w = x / m_j``; the other
``k - topk_group`` picks spread over the selected groups (``E_sel = E * topk_group / n_group`` experts) with
inclusion ``x * (k / s_j - 1 / m_j)``::

    M(bin, j)   = (1 - sum w) * prod (1 - x (k / s_j - 1 / m_j)) * C_{k - topk_group}(n)   # over E_sel - k_g
    P_miss(bin) = prod_j (1 - s_j + s_j * M(bin, j))                                   # groups independent

Exact for uniform routing. Without dedup ``u(bin) = k * sum x``: every assignment is sent separately.
All equations with their assumptions: ``docs/COSTMODEL.md``.

2. Bytes per link class (rank-1 traffic: every source sends ``T * u(d) * B`` bytes to destination d)
-------------------------------------------------------------------------------------------------------------
``B`` is bytes per token row: BF16 ``2H``; FP8 ``H + 4H/128`` (one FP32 scale per 128 channels, DeepEP's
format). Own-GPU deliveries use no link. ``U(b)`` = sum of u over the GPUs of node b, ``un(b)`` node delivery.

flat (NCCL-style: every GPU sends straight to every other GPU; inter-node pairs use the sender's NIC)::

    nvl_in(d)  = (gpn - 1) * T * u(d) * B             nvl_out(s) = T * (U(node s) - u(s)) * B
    nic_in(d)  = (G - gpn) * T * u(d) * B             nic_out(s) = T * (sum_b U(b) - U(node s)) * B

hierarchical (DeepEP's normal kernels: RDMA once per destination node to the GPU of the same local rank, then
NVLink forwarding deduplicated per GPU; one node: DeepEP's intranode kernel). DeepEP pushes every received
row,
the rank's own included, through its SM-driven NVLink buffers, so the NVLink-port class counts own rows too
(modelling assumption, see :class:`HierarchicalAllToAll`); the own node's rows never use the NIC::

    nic_out(s) = T * (sum_b un(b) - un(node s)) * B   nic_in(d)  = (N - 1) * T * un(node d) * B
    nvl_in(d)  = N * gpn * T * u(d) * B               nvl_out(f) = N * T * U(node f) * B

GPUs sharing a NIC add their NIC loads. A rail-optimised fat-tree with oversubscription r > 1 adds a leaf
uplink class: rail i's leaf switch (NIC i of every node) reaches the spine through ``N * nic_bw / r``, and only
traffic between different rails crosses it. Flat (the sender's NIC to the receiver's NIC), with ``R(i)`` the sum
of u over the GPUs on rail i and ``gpnic`` GPUs per NIC::

    up_out(leaf i) = gpnic * (N - 1) * T * (sum_g u(g) - R(i)) * B
    up_in(leaf j)  = (N - 1) * (gpn - gpnic) * T * R(j) * B

Hierarchical RDMA goes to the same local rank, i.e. the same rail: it never reaches the spine. PCIe nodes
(``cluster.pcie``) add a switch uplink class: traffic between GPUs under different PCIe switches crosses both
switches' uplinks, ``sw_out = gps * T * (U(node) - U(switch)) * B``, ``sw_in = (gpn - gps) * T * U(switch) * B``
(times N for the hierarchical forwarding).

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

DTYPES = ("fp8", "bf16")
_TINY = 1e-300


def bytes_per_token(hidden: int, dtype: str) -> float:
    """Bytes of one token row on the wire: BF16 ``2H``; FP8 ``H`` plus one FP32 scale per 128 channels."""
    if dtype == "bf16":
        return 2.0 * hidden
    if dtype == "fp8":
        return hidden * (1.0 + 4.0 / 128.0)
    raise field_error("options", "dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")


# --------------------------------------------------------------------------------------------- delivery
def group_selection(group_mass: np.ndarray, topk_group: int) -> np.ndarray:
    """``[L, J]`` probability that a token selects each group: ``s_j = min(1, c * m_j)``, ``sum_j s_j
    = topk_group``.

    ``group_mass``: ``[L, J]`` fraction of assignments in each group (rows sum to 1).
    """
    m = np.asarray(group_mass, dtype=np.float64)
    num_groups = m.shape[-1]
    if topk_group >= num_groups:
        return np.ones_like(m)
    capped = np.zeros(m.shape, dtype=bool)
    s = m
    for _ in range(num_groups):  # at most J rounds of capping; J is 8 for DeepSeek-V3
        free_mass = np.where(capped, 0.0, m).sum(axis=-1, keepdims=True)
        room = topk_group - capped.sum(axis=-1, keepdims=True)
        c = np.where(free_mass > 0, room / np.maximum(free_mass, _TINY), 0.0)
        s = np.where(capped, 1.0, np.minimum(1.0, c * m))
        newly = (s >= 1.0) & ~capped
        if not newly.any():
            break
        capped |= newly
    return s


def _log_correction(n: np.ndarray, top_k: int, e_sel: float) -> np.ndarray:
    """``log C(n)``: exact sampling without replacement over the independence product, for a uniform bin."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros(n.shape)
    for i in range(top_k):
        out += np.log(np.maximum(1.0 - n / (e_sel - i), 1e-12))
    base = np.log(max(1.0 - top_k / e_sel, 1e-12))
    return out - n * base


def delivery_per_token(
    slot_mass: np.ndarray,
    slot_share: np.ndarray,
    slot_bin: np.ndarray,
    slot_group: np.ndarray,
    num_bins: int,
    group_sel: np.ndarray,
    top_k: int,
    num_experts: int,
    topk_group: int,
    dedup: bool = True,
) -> np.ndarray:
    """Expected deliveries of one source token to each bin (GPU or node), ``[L, num_bins]``.

    Args:
        slot_mass: ``[L, P]`` fraction of the layer's assignments served by each slot (``p_e * share``), after
            drops (rows may sum to < 1).
        slot_share: ``[L, P]`` replica share of each slot (its count towards ``n``, the bin's experts).
        slot_bin: ``[P]`` or ``[L, P]`` bin of each slot.
        slot_group: ``[L, P]`` group of each slot's logical expert.
        group_sel: ``[L, J]`` from :func:`group_selection`.
    See the module docstring for the equations.
    """
    mass = np.asarray(slot_mass, dtype=np.float64)
    num_layers = mass.shape[0]
    num_groups = group_sel.shape[-1]
    if topk_group >= num_groups > 1:
        # every group may be selected: the limit is vacuous and routing is plain top-k
        return delivery_per_token(
            mass,
            slot_share,
            slot_bin,
            np.zeros_like(slot_group),
            num_bins,
            np.ones((num_layers, 1)),
            top_k,
            num_experts,
            1,
            dedup,
        )
    bins = np.broadcast_to(slot_bin, mass.shape)
    layer_off = np.arange(num_layers)[:, None]
    if not dedup:
        idx = (layer_off * num_bins + bins).ravel()
        out = np.bincount(idx, weights=mass.ravel(), minlength=num_layers * num_bins)
        return top_k * out.reshape(num_layers, num_bins)
    sel = np.take_along_axis(group_sel, slot_group, axis=1)  # [L, P]
    share = np.asarray(slot_share, dtype=np.float64)
    idx = ((layer_off * num_bins + bins) * num_groups + slot_group).ravel()
    size = num_layers * num_bins * num_groups
    n = np.bincount(idx, weights=share.ravel(), minlength=size)
    e_sel = num_experts * min(topk_group, num_groups) / num_groups
    if num_groups == 1:
        pi = np.minimum(1.0, top_k * mass)
        log_keep = np.log(np.maximum(1.0 - pi, 1e-12))
        log_m = np.bincount(idx, weights=log_keep.ravel(), minlength=size)
        miss_given_sel = np.exp(log_m + _log_correction(n, top_k, e_sel))
    else:
        # A group is selected for its strongest experts, so each selected group gets one pick for sure,
        # landing on a slot in proportion to the slot's share w of the group's mass; the remaining
        # k - topk_group picks spread over the selected groups with inclusion pi'' = x * (k / s_j - 1 / m_j)
        # (the expected picks k * x minus the sure pick's s_j * x / m_j, given selection). Exact for uniform
        # routing.
        gidx = (layer_off * num_groups + slot_group).ravel()
        m_group = np.bincount(gidx, weights=mass.ravel(), minlength=num_layers * num_groups)
        m_slot = m_group.reshape(num_layers, num_groups)[layer_off, slot_group]
        w = mass / np.maximum(m_slot, _TINY)
        first = np.bincount(idx, weights=w.ravel(), minlength=size)
        rest_k = max(top_k - min(topk_group, num_groups), 0)
        pi = np.clip(mass * (top_k / np.maximum(sel, _TINY) - 1.0 / np.maximum(m_slot, _TINY)), 0.0, 1.0)
        log_keep = np.log(np.maximum(1.0 - pi, 1e-12))
        log_m = np.bincount(idx, weights=log_keep.ravel(), minlength=size)
        log_first = np.log(np.maximum(1.0 - first, 1e-12))
        rest = log_m + _log_correction(n, rest_k, e_sel - min(topk_group, num_groups)) if rest_k else 0.0
        miss_given_sel = np.exp(log_first + rest)
    miss_given_sel = np.clip(miss_given_sel, 0.0, 1.0).reshape(num_layers, num_bins, num_groups)
    s = group_sel[:, None, :]
    p_miss = np.prod(1.0 - s + s * miss_given_sel, axis=-1)
    return 1.0 - p_miss


# --------------------------------------------------------------------------------------------- links
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


# --------------------------------------------------------------------------------------------- strategies
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
        return replace(
            self, **{f.name: getattr(self, f.name) * factor for f in fields(self) if f.name != "latency_us"}
        )

    @property
    def nvlink_bytes(self) -> np.ndarray:
        """``[L]`` bytes over intra-node links, all GPUs (own rows excluded)."""
        return (self.nvl_in - self.nvl_own).sum(axis=-1)

    @property
    def network_bytes(self) -> np.ndarray:
        """``[L]`` bytes over the inter-node network, all GPUs."""
        return self.nic_in.sum(axis=-1)


class AllToAll:
    """Strategy interface: per-GPU link loads of one all-to-all from the delivery probabilities.

    ``loads`` takes deliveries every source shares (``u [L, G]``, rank-1 traffic); ``loads_by_source`` takes
    each source's own (``u [L, S, G]``, an engine rule that sends a rank's tokens to its nearest replica) and
    equals ``loads`` when every source's row is the same (``tests/moesim/test_dispatch.py``).
    """

    name = ""

    def loads(
        self,
        links: LinkClasses,
        u_gpu: np.ndarray,
        u_node: np.ndarray,
        tokens_per_gpu: float,
        row_bytes: float,
    ) -> LinkLoads:
        raise NotImplementedError

    def loads_by_source(
        self,
        links: LinkClasses,
        u_src: np.ndarray,
        un_src: np.ndarray,
        tokens_per_gpu: float,
        row_bytes: float,
    ) -> LinkLoads:
        raise NotImplementedError


def _pair_masks(links: LinkClasses) -> tuple[np.ndarray, np.ndarray]:
    """``[S, D]`` masks: different GPUs of one node, and GPUs of different nodes."""
    node = np.arange(links.num_gpus) // links.gpus_per_node
    same = node[:, None] == node[None, :]
    return same & ~np.eye(links.num_gpus, dtype=bool), ~same


def _node_sum(links: LinkClasses, x: np.ndarray) -> np.ndarray:
    """``[L, G] -> [L, N]`` sum over each node's GPUs."""
    return x.reshape(x.shape[0], links.num_nodes, links.gpus_per_node).sum(axis=-1)


def _per_gpu(links: LinkClasses, x_node: np.ndarray) -> np.ndarray:
    """``[L, N] -> [L, G]`` broadcast a node value to its GPUs."""
    return np.repeat(x_node, links.gpus_per_node, axis=-1)


def _switch_loads(links: LinkClasses, u_gpu: np.ndarray, per_pair: float) -> tuple[np.ndarray, np.ndarray]:
    """PCIe switch uplink bytes (per GPU: its switch's) when every GPU of a node sends ``per_pair * u(d)``
    bytes to every other GPU d of the node: traffic between GPUs under different switches crosses both
    switches' uplinks. ``sw_out(s) = gps * per_pair * (U(node) - U(s)); sw_in(s) = (gpn - gps) * per_pair
    * U(s)``.
    """
    gps = links.gpus_per_switch
    if not gps:
        return np.zeros_like(u_gpu), np.zeros_like(u_gpu)
    num_layers = u_gpu.shape[0]
    u_switch = u_gpu.reshape(num_layers, -1, gps).sum(axis=-1)
    u_switch = np.repeat(u_switch, gps, axis=-1)
    node_u = _per_gpu(links, _node_sum(links, u_gpu))
    sw_out = gps * per_pair * (node_u - u_switch)
    sw_in = (links.gpus_per_node - gps) * per_pair * u_switch
    return sw_in, sw_out


def _leaf_loads(links: LinkClasses, u_gpu: np.ndarray, tb: float) -> tuple[np.ndarray, np.ndarray]:
    """Leaf (rail) uplink bytes of the flat all-to-all (per GPU: its leaf's), when every GPU sends ``tb * u(d)``
    bytes to every GPU d of another node from its own NIC to d's NIC: traffic between different rails crosses
    the spine. ``up_out(i) = gpnic (N-1) tb (sum u - R(i))``, ``up_in(j) = (N-1) (gpn - gpnic) tb R(j)`` with
    ``R(i)`` the sum of u over the GPUs on rail (NIC index) i.
    """
    num_layers = u_gpu.shape[0]
    gpnic, gpn, num_nodes = links.gpus_per_nic, links.gpus_per_node, links.num_nodes
    rail = u_gpu.reshape(num_layers, num_nodes, gpn // gpnic, gpnic).sum(axis=(1, 3))  # [L, R]
    leaf_out = gpnic * (num_nodes - 1) * tb * (u_gpu.sum(axis=-1, keepdims=True) - rail)
    leaf_in = (num_nodes - 1) * (gpn - gpnic) * tb * rail

    def per_gpu(x: np.ndarray) -> np.ndarray:
        return np.tile(np.repeat(x, gpnic, axis=-1), (1, num_nodes))

    return per_gpu(leaf_in), per_gpu(leaf_out)


class FlatAllToAll(AllToAll):
    """Every GPU sends straight to every other GPU (NCCL ``alltoall``, DeepEP intranode)."""

    name = "flat"

    def loads(
        self,
        links: LinkClasses,
        u_gpu: np.ndarray,
        u_node: np.ndarray,
        tokens_per_gpu: float,
        row_bytes: float,
    ) -> LinkLoads:
        tb = tokens_per_gpu * row_bytes
        gpn, num_gpus = links.gpus_per_node, links.num_gpus
        node_u = _per_gpu(links, _node_sum(links, u_gpu))  # U(node of g), [L, G]
        pair = tb * u_gpu  # bytes each source sends to d
        nvl_in = (gpn - 1) * pair
        nvl_out = tb * (node_u - u_gpu)
        if links.multi_node:
            nic_in = (num_gpus - gpn) * pair
            nic_out = tb * (u_gpu.sum(axis=-1, keepdims=True) - node_u)
            latency = links.nic_latency_us
        else:
            nic_in = nic_out = np.zeros_like(u_gpu)
            latency = links.nvl_latency_us
        sw_in, sw_out = _switch_loads(links, u_gpu, tb)
        up_in: np.ndarray | float = 0.0
        up_out: np.ndarray | float = 0.0
        if links.multi_node and links.uplink_bw_gb_s > 0:
            up_in, up_out = _leaf_loads(links, u_gpu, tb)
        return LinkLoads(
            nvl_in, nvl_out, nic_in, nic_out, pair, pair, latency, 0.0, sw_in, sw_out, up_in, up_out
        )

    def loads_by_source(
        self,
        links: LinkClasses,
        u_src: np.ndarray,
        un_src: np.ndarray,
        tokens_per_gpu: float,
        row_bytes: float,
    ) -> LinkLoads:
        """Source ``s`` sends ``T u[s, d] B`` to ``d``: ``nvl_in(d)`` / ``nic_in(d)`` sum that over the sources
        of d's node / other nodes, ``nvl_out(s)`` / ``nic_out(s)`` over the destinations; the per-peer message
        is the mean over sources. PCIe switch and leaf uplink classes use the sources' mean deliveries."""
        tb = tokens_per_gpu * row_bytes
        pair = tb * u_src  # [L, S, D]
        intra, inter = _pair_masks(links)
        nvl_in = (pair * intra).sum(axis=1)
        nvl_out = (pair * intra).sum(axis=2)
        u_mean = u_src.mean(axis=1)
        msg = pair.mean(axis=1)
        if links.multi_node:
            nic_in = (pair * inter).sum(axis=1)
            nic_out = (pair * inter).sum(axis=2)
            latency = links.nic_latency_us
        else:
            nic_in = nic_out = np.zeros_like(u_mean)
            latency = links.nvl_latency_us
        sw_in, sw_out = _switch_loads(links, u_mean, tb)
        up_in: np.ndarray | float = 0.0
        up_out: np.ndarray | float = 0.0
        if links.multi_node and links.uplink_bw_gb_s > 0:
            up_in, up_out = _leaf_loads(links, u_mean, tb)
        return LinkLoads(nvl_in, nvl_out, nic_in, nic_out, msg, msg, latency, 0.0, sw_in, sw_out, up_in, up_out)


class HierarchicalAllToAll(AllToAll):
    """DeepEP's normal kernels: RDMA once per destination node to the same-rank GPU, then NVLink forwarding,
    deduplicated per GPU; inside one node, DeepEP's intranode kernel.

    The RDMA goes to the same local rank, i.e. the same rail: it never crosses a leaf's uplink to the spine.
    DeepEP moves every received row, the rank's own included, through the same SM-driven NVLink buffers
    (sender warps write a per-(source, destination) ring buffer, receiver warps copy it out; the own rank's
    buffer costs the same SM time). So the NVLink-port class carries the own rows too (modelling assumption;
    DeepEP's own bandwidth metric and its "~160 GB/s NVLink maximum" count them the same way). The own node's
    rows never touch the NIC.
    """

    name = "hierarchical"

    def loads(
        self,
        links: LinkClasses,
        u_gpu: np.ndarray,
        u_node: np.ndarray,
        tokens_per_gpu: float,
        row_bytes: float,
    ) -> LinkLoads:
        tb = tokens_per_gpu * row_bytes
        gpn, num_nodes = links.gpus_per_node, links.num_nodes
        node_u = _per_gpu(links, _node_sum(links, u_gpu))
        nvl_in = num_nodes * gpn * tb * u_gpu
        nvl_out = num_nodes * tb * node_u
        own = num_nodes * tb * u_gpu  # rows a GPU forwards to itself: in the pipeline, not on a link
        if links.multi_node:
            un = _per_gpu(links, u_node)  # un(node of g)
            nic_out = tb * (u_node.sum(axis=-1, keepdims=True) - un)
            nic_in = (num_nodes - 1) * tb * un
            latency = links.nic_latency_us + links.nvl_latency_us
            nic_msg = tb * un
        else:
            nic_in = nic_out = nic_msg = np.zeros_like(u_gpu)
            latency = links.nvl_latency_us
        # per-peer messages: the forwarder sends to d what all N source nodes routed there
        sw_in, sw_out = _switch_loads(links, u_gpu, num_nodes * tb)
        return LinkLoads(
            nvl_in, nvl_out, nic_in, nic_out, num_nodes * tb * u_gpu, nic_msg, latency, own, sw_in, sw_out
        )

    def loads_by_source(
        self,
        links: LinkClasses,
        u_src: np.ndarray,
        un_src: np.ndarray,
        tokens_per_gpu: float,
        row_bytes: float,
    ) -> LinkLoads:
        """Source ``s`` sends its rows for node b once over RDMA to b's GPU of s's local rank (the forwarder),
        which forwards them over NVLink (own node: s forwards its own). With ``r(g)`` the local rank::

            nvl_in(d)  = sum_s T u[s, d] B                     own(d) = sum_{s: r(s) = r(d)} T u[s, d] B
            nvl_out(f) = sum_{s: r(s) = r(f)} sum_{d in node(f)} T u[s, d] B
            nic_out(s) = T B sum_{b != node(s)} un[s, b]
            nic_in(d)  = T B sum_{s: r(s) = r(d), node(s) != node(d)} un[s, node(d)]
        """
        tb = tokens_per_gpu * row_bytes
        gpn, num_nodes, num_gpus = links.gpus_per_node, links.num_nodes, links.num_gpus
        pair = tb * u_src  # [L, S, D]
        local = np.arange(num_gpus) % gpn
        node = np.arange(num_gpus) // gpn
        rail = local[:, None] == local[None, :]  # [S, F]: s's forwarder on every node has s's local rank
        same_node = node[:, None] == node[None, :]  # [F, D]
        nvl_in = pair.sum(axis=1)
        own = (pair * rail).sum(axis=1)
        into_node = np.einsum("lsd,fd->lsf", pair, same_node.astype(np.float64))  # s's rows for f's node
        nvl_out = (into_node * rail).sum(axis=1)
        nvl_msg = nvl_in / gpn  # each of the node's gpn forwarders sends d its share
        if links.multi_node:
            un_d = un_src[:, :, node]  # [L, S, D] un[s, node(d)]
            remote = rail & ~same_node
            nic_in = tb * (un_d * remote).sum(axis=1)
            nic_out = tb * (un_src.sum(axis=-1) - np.take_along_axis(un_src, node[None, :, None], axis=2)[..., 0])
            nic_msg = nic_in / (num_nodes - 1)
            latency = links.nic_latency_us + links.nvl_latency_us
        else:
            nic_in = nic_out = nic_msg = np.zeros_like(nvl_in)
            latency = links.nvl_latency_us
        sw_in, sw_out = _switch_loads(links, u_src.mean(axis=1), num_nodes * tb)
        return LinkLoads(nvl_in, nvl_out, nic_in, nic_out, nvl_msg, nic_msg, latency, own, sw_in, sw_out)


ALLTOALL = {"flat": FlatAllToAll, "hierarchical": HierarchicalAllToAll}


def make_alltoall(name: str) -> AllToAll:
    """Pick the all-to-all strategy once, by name (``flat`` | ``hierarchical``)."""
    try:
        return ALLTOALL[name]()
    except KeyError:
        raise field_error(
            "options", "alltoall", f"must be one of {', '.join(ALLTOALL)}, got {name!r}"
        ) from None


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

"""The hierarchical all-to-all: DeepEP's normal kernels (RDMA once per destination node, then NVLink
forwarding); the equations are in :mod:`moesim.dispatch.base`."""

from __future__ import annotations

import numpy as np

from moesim.dispatch.base import AllToAll, node_sum, switch_loads, to_gpus
from moesim.dispatch.links import LinkClasses, LinkLoads

__all__ = ["HierarchicalAllToAll"]


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
        node_u = to_gpus(links, node_sum(links, u_gpu))
        nvl_in = num_nodes * gpn * tb * u_gpu
        nvl_out = num_nodes * tb * node_u
        own = num_nodes * tb * u_gpu  # rows a GPU forwards to itself: in the pipeline, not on a link
        if links.multi_node:
            un = to_gpus(links, u_node)  # un(node of g)
            nic_out = tb * (u_node.sum(axis=-1, keepdims=True) - un)
            nic_in = (num_nodes - 1) * tb * un
            latency = links.nic_latency_us + links.nvl_latency_us
            nic_msg = tb * un
        else:
            nic_in = nic_out = nic_msg = np.zeros_like(u_gpu)
            latency = links.nvl_latency_us
        # per-peer messages: the forwarder sends to d what all N source nodes routed there
        sw_in, sw_out = switch_loads(links, u_gpu, num_nodes * tb)
        return LinkLoads(nvl_in, nvl_out, nic_in, nic_out, num_nodes * tb * u_gpu, nic_msg, latency, own, sw_in, sw_out)

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
        sw_in, sw_out = switch_loads(links, u_src.mean(axis=1), num_nodes * tb)
        return LinkLoads(nvl_in, nvl_out, nic_in, nic_out, nvl_msg, nic_msg, latency, own, sw_in, sw_out)

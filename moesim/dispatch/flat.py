"""The flat all-to-all: every GPU sends straight to every other GPU (NCCL ``alltoall``, DeepEP intranode);
the equations are in :mod:`moesim.dispatch.base`."""

from __future__ import annotations

import numpy as np

from moesim.dispatch.base import AllToAll, leaf_loads, node_sum, pair_masks, switch_loads, to_gpus
from moesim.dispatch.links import LinkClasses, LinkLoads

__all__ = ["FlatAllToAll"]


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
        node_u = to_gpus(links, node_sum(links, u_gpu))  # U(node of g), [L, G]
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
        sw_in, sw_out = switch_loads(links, u_gpu, tb)
        up_in, up_out = leaf_loads(links, u_gpu, tb)
        return LinkLoads(nvl_in, nvl_out, nic_in, nic_out, pair, pair, latency, 0.0, sw_in, sw_out, up_in, up_out)

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
        intra, inter = pair_masks(links)
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
        sw_in, sw_out = switch_loads(links, u_mean, tb)
        up_in, up_out = leaf_loads(links, u_mean, tb)
        return LinkLoads(nvl_in, nvl_out, nic_in, nic_out, msg, msg, latency, 0.0, sw_in, sw_out, up_in, up_out)

"""The all-to-all family's protocol and the load arithmetic its members share.

Dimension legend: L MoE layers, E logical experts, k top-k, G GPUs, N nodes (g = node * gpn + local rank),
S slots per GPU, P = G*S physical slots, J = n_group expert groups (1 without group-limited routing).

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
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from moesim.dispatch.links import LinkClasses, LinkLoads

__all__ = ["AllToAll", "leaf_loads", "node_sum", "pair_masks", "switch_loads", "to_gpus"]


@runtime_checkable
class AllToAll(Protocol):
    """Strategy interface: per-GPU link loads of one all-to-all from the delivery probabilities.

    ``loads`` takes deliveries every source shares (``u [L, G]``, rank-1 traffic); ``loads_by_source`` takes
    each source's own (``u [L, S, G]``, an engine rule that sends a rank's tokens to its nearest replica) and
    equals ``loads`` when every source's row is the same (``tests/moesim/test_dispatch.py``).
    """

    name: str  # the registry key (moesim.dispatch.ALLTOALL)

    def loads(
        self,
        links: LinkClasses,
        u_gpu: np.ndarray,
        u_node: np.ndarray,
        tokens_per_gpu: float,
        row_bytes: float,
    ) -> LinkLoads: ...

    def loads_by_source(
        self,
        links: LinkClasses,
        u_src: np.ndarray,
        un_src: np.ndarray,
        tokens_per_gpu: float,
        row_bytes: float,
    ) -> LinkLoads: ...


def pair_masks(links: LinkClasses) -> tuple[np.ndarray, np.ndarray]:
    """``[S, D]`` masks: different GPUs of one node, and GPUs of different nodes."""
    node = np.arange(links.num_gpus) // links.gpus_per_node
    same = node[:, None] == node[None, :]
    return same & ~np.eye(links.num_gpus, dtype=bool), ~same


def node_sum(links: LinkClasses, x: np.ndarray) -> np.ndarray:
    """``[L, G] -> [L, N]`` sum over each node's GPUs."""
    return x.reshape(x.shape[0], links.num_nodes, links.gpus_per_node).sum(axis=-1)


def to_gpus(links: LinkClasses, x_node: np.ndarray) -> np.ndarray:
    """``[L, N] -> [L, G]`` broadcast a node value to its GPUs."""
    return np.repeat(x_node, links.gpus_per_node, axis=-1)


def switch_loads(links: LinkClasses, u_gpu: np.ndarray, per_pair: float) -> tuple[np.ndarray, np.ndarray]:
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
    node_u = to_gpus(links, node_sum(links, u_gpu))
    sw_out = gps * per_pair * (node_u - u_switch)
    sw_in = (links.gpus_per_node - gps) * per_pair * u_switch
    return sw_in, sw_out


def leaf_loads(links: LinkClasses, u_gpu: np.ndarray, tb: float) -> tuple[np.ndarray, np.ndarray] | tuple[float, float]:
    """Leaf (rail) uplink bytes of the flat all-to-all (per GPU: its leaf's), when every GPU sends ``tb * u(d)``
    bytes to every GPU d of another node from its own NIC to d's NIC: traffic between different rails crosses
    the spine. ``up_out(i) = gpnic (N-1) tb (sum u - R(i))``, ``up_in(j) = (N-1) (gpn - gpnic) tb R(j)`` with
    ``R(i)`` the sum of u over the GPUs on rail (NIC index) i. ``(0.0, 0.0)`` on one node or with no leaf
    uplink class (``uplink_bw_gb_s`` 0).
    """
    if not (links.multi_node and links.uplink_bw_gb_s > 0):
        return 0.0, 0.0
    num_layers = u_gpu.shape[0]
    gpnic, gpn, num_nodes = links.gpus_per_nic, links.gpus_per_node, links.num_nodes
    rail = u_gpu.reshape(num_layers, num_nodes, gpn // gpnic, gpnic).sum(axis=(1, 3))  # [L, R]
    leaf_out = gpnic * (num_nodes - 1) * tb * (u_gpu.sum(axis=-1, keepdims=True) - rail)
    leaf_in = (num_nodes - 1) * (gpn - gpnic) * tb * rail

    def per_gpu(x: np.ndarray) -> np.ndarray:
        return np.tile(np.repeat(x, gpnic, axis=-1), (1, num_nodes))

    return per_gpu(leaf_in), per_gpu(leaf_out)

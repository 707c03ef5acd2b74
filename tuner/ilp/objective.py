"""The MILP's objective, evaluated on whole placements: the linear prices (:class:`CostModel`), each NIC's and
node's network assignments under nearest-replica rules, the crossings of transitions, and moved replicas.

Dimension legend: L layers, E logical experts, G GPUs, N nodes, S slots per GPU, P = G*S slots, B bins.
The objective itself is the ``tuner.ilp`` package docstring's ``t_l``; :func:`predicted_terms` sums it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.placement import Placement


@dataclass(frozen=True)
class CostModel:
    """Linear cost coefficients, all in microseconds per unit."""

    us_per_token: float  # c_tok: per token-expert assignment on the busiest GPU
    us_per_gpu_token: float  # c_gpu: per transition crossing GPUs
    us_per_node_token: float  # c_node: per transition crossing nodes (on top of c_gpu)
    us_per_moved_replica: float = 0.0  # c_move: per replica loaded onto a GPU that did not hold it
    bytes_per_token: float = 0.0  # for reporting bytes
    # c_nic: per assignment on the busiest NIC, in its busier direction (dispatch in or out; the combine sends the
    # same back the other way); priced under nearest-replica rules (see :func:`nic_traffic`)
    us_per_nic_assignment: float = 0.0
    gpus_per_nic: int = 1  # GPUs sharing one NIC (rail layout: 1)

    @property
    def nic_ratio(self) -> float:
        """``c_nic / c_tok``: the busiest NIC's price in units of the busiest GPU's (0 when c_tok is 0)."""
        return self.us_per_nic_assignment / self.us_per_token if self.us_per_token > 0 else 0.0


def nic_inbound(
    phy2log: np.ndarray, counts: np.ndarray, num_experts: int, num_gpus: int, gpus_per_node: int, gpus_per_nic: int = 1
) -> np.ndarray:
    """``[L, G / gpus_per_nic]`` assignments each NIC's GPUs receive from ranks of other nodes under a
    nearest-replica rule (SGLang's: a rank uses a replica on its own node if there is one, else one of all
    ``r_e`` replicas, drawn fairly), every rank routing alike::

        inbound(d) = sum_{slots of d} c_e * (N - n_e) / N / r_e

    with ``n_e`` the nodes holding expert e and ``r_e`` its replicas: the ranks of the ``n_e`` nodes holding it
    send nothing over the network, the others split ``c_e (N - n_e) / N`` over all replicas. The simulator's
    flat all-to-all waits for the busiest NIC (``moesim.dispatch``), so that is what the objective prices.
    """
    phy = np.atleast_2d(np.asarray(phy2log, dtype=np.int64))
    counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    L, P = phy.shape
    N = max(1, num_gpus // gpus_per_node)
    node = np.arange(P) // (P // num_gpus) // gpus_per_node
    y = np.zeros((L, num_experts, N))
    np.add.at(y, (np.arange(L)[:, None], phy, np.broadcast_to(node, phy.shape)), 1.0)
    r = y.sum(axis=2)  # [L, E]
    n_e = (y > 0).sum(axis=2)
    w = counts * (N - n_e) / N / np.maximum(r, 1.0)  # [L, E] per replica
    per_slot = np.take_along_axis(w, phy, axis=1)  # [L, P]
    return per_slot.reshape(L, num_gpus // gpus_per_nic, -1).sum(axis=2)


def nic_outbound(
    phy2log: np.ndarray, counts: np.ndarray, num_experts: int, num_gpus: int, gpus_per_node: int, gpus_per_nic: int = 1
) -> np.ndarray:
    """``[L, G / gpus_per_nic]`` assignments each NIC's GPUs send to other nodes under a nearest-replica rule,
    every rank routing alike (``1/G`` of each expert's ``c_e``): a rank sends all of an expert's tokens away when
    its node holds no replica, so ``outbound(d) = gpus_per_nic * (sum_e c_e - sum_{e on node(d)} c_e) / G``."""
    phy = np.atleast_2d(np.asarray(phy2log, dtype=np.int64))
    counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    L, P = phy.shape
    N = max(1, num_gpus // gpus_per_node)
    node = np.arange(P) // (P // num_gpus) // gpus_per_node
    on = np.zeros((L, num_experts, N), dtype=bool)
    on[np.arange(L)[:, None], phy, np.broadcast_to(node, phy.shape)] = True
    local = np.einsum("le,len->ln", counts, on)  # [L, N]
    per_gpu = (counts.sum(axis=1, keepdims=True) - local) / num_gpus
    return np.repeat(per_gpu * gpus_per_nic, gpus_per_node // gpus_per_nic, axis=1)


def nic_traffic(
    phy2log: np.ndarray, counts: np.ndarray, num_experts: int, num_gpus: int, gpus_per_node: int, gpus_per_nic: int = 1
) -> np.ndarray:
    """``[L, G / gpus_per_nic]`` each NIC's assignments in its busier direction, ``max(inbound, outbound)``
    (:func:`nic_inbound`, :func:`nic_outbound`): the simulator's all-to-all waits for every receiver's inbound
    and for the busiest sender's outbound (``moesim.dispatch.link_times_us``)."""
    args = (phy2log, counts, num_experts, num_gpus, gpus_per_node, gpus_per_nic)
    return np.maximum(nic_inbound(*args), nic_outbound(*args))


def node_inbound(
    phy2log: np.ndarray, counts: np.ndarray, num_experts: int, num_gpus: int, gpus_per_node: int
) -> np.ndarray:
    """``[L, N]`` assignments each node receives from ranks of other nodes (:func:`nic_inbound` summed over
    the node's GPUs): ``inbound(n) = sum_e c_e * (N - n_e) / N * y_en / r_e`` with ``y_en`` e's replicas on n."""
    return nic_inbound(phy2log, counts, num_experts, num_gpus, gpus_per_node, gpus_per_node)


def share_matrix(
    phy2log_row: np.ndarray, shares_row: np.ndarray, num_experts: int, num_bins: int, slots_per_bin: int
) -> np.ndarray:
    """[E, B] share of each expert's tokens in each bin (GPU, or node with ``slots_per_bin = S * G/N``)."""
    out = np.zeros((num_experts, num_bins))
    np.add.at(out, (np.asarray(phy2log_row), np.arange(len(phy2log_row)) // slots_per_bin), shares_row)
    return out


def crossings(T: np.ndarray, a: np.ndarray, b: np.ndarray, num_nodes: int) -> tuple[float, float]:
    """Transitions ``T [E, E]`` from shares ``a [E, G]`` (one layer) to ``b [E, G]`` (the next) whose two experts
    sit on different GPUs, and on different nodes: ``sum_ij T_ij (1 - sum_g a_ig b_jg)``, and the same per node."""
    tot = float(T.sum())
    E = a.shape[0]
    an, bn = (m.reshape(E, num_nodes, -1).sum(-1) for m in (a, b))
    # sum_ij T_ij (a b^T)_ij as ((T b) * a).sum(): two GEMM-shaped products, not a 3-operand einsum (40x faster)
    co_gpu = float(((T @ b) * a).sum())
    co_node = float(((T @ bn) * an).sum())
    return max(0.0, tot - co_gpu), max(0.0, tot - co_node)  # rounding can leave -1e-9 on one node


def predicted_terms(
    placement: Placement,
    counts: np.ndarray,
    transitions: np.ndarray | None,
    gpus_per_node: int,
    cost: CostModel,
    current: Placement | None = None,
    network: bool = False,
) -> dict[str, float]:
    """The objective's terms for a whole placement: compute, cross-GPU/node tokens, moved replicas, total us;
    with ``network`` also the busiest NIC's assignments per layer (:func:`nic_traffic`, summed)."""
    counts = np.asarray(counts, dtype=np.float64)
    num_layers = counts.shape[0]
    N = max(1, placement.num_gpus // gpus_per_node)
    loads = placement.gpu_loads(counts)
    compute = float(cost.us_per_token * loads.max(axis=1).sum())
    gpu_tok = node_tok = 0.0
    if transitions is not None and num_layers > 1:
        A = placement.expert_gpu_share()  # [L, E, G]
        for l in range(num_layers - 1):
            g_tok, n_tok = crossings(np.asarray(transitions[l], dtype=np.float64), A[l], A[l + 1], N)
            gpu_tok += g_tok
            node_tok += n_tok
    moved = 0.0
    if current is not None:
        moved = float(moved_replicas(placement, current).sum())
    inbound = 0.0
    if network and N > 1:
        inbound = float(
            nic_traffic(
                placement.phy2log, counts, placement.num_experts, placement.num_gpus, gpus_per_node, cost.gpus_per_nic
            )
            .max(axis=1)
            .sum()
        )
    total = (
        compute
        + cost.us_per_gpu_token * gpu_tok
        + cost.us_per_node_token * node_tok
        + cost.us_per_moved_replica * moved
        + cost.us_per_nic_assignment * inbound
    )
    return {
        "compute_us": compute,
        "cross_gpu_tokens": gpu_tok,
        "cross_node_tokens": node_tok,
        "moved_replicas": moved,
        "nic_traffic": inbound,
        "objective_us": total,
    }


def held_matrix(placement: Placement, row: int) -> np.ndarray:
    """[E, G] 1 where GPU g holds a replica of expert e in placement row ``row``."""
    h = np.zeros((placement.num_experts, placement.num_gpus))
    h[placement.phy2log[row], placement.gpu_of_slot()] = 1.0
    return h


def moved_replicas(placement: Placement, current: Placement) -> np.ndarray:
    """[L] replicas per layer that must be loaded onto a GPU not holding that expert in ``current``."""
    out = np.zeros(placement.num_layers)
    for l in range(placement.num_layers):
        held = held_matrix(current, min(l, current.num_layers - 1))
        out[l] = float((1.0 - held[placement.phy2log[l], placement.gpu_of_slot()]).sum())
    return out

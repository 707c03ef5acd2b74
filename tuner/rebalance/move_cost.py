"""What a rebalance costs: the expert weights it moves, over which links, and how long serving stops for them.

Dimension legend: L layers (rows of both placements), G GPUs, S slots per GPU, P = G*S slots.

A *move* is one expert loaded onto a GPU that did not hold it (``tuner.ilp.moved_replicas``); a slot whose new
expert is already elsewhere on its GPU is a local copy (SGLang 0.5.14 ``srt/eplb/expert_location_updater.py``:
cases "unchanged", "same-gpu" and "free-rider" send nothing; "same-node" and "cross-node" receive from a rank
holding the expert in the old map, spread over those ranks). So every move's bytes come from a GPU holding the
expert before the rebalance: one on the receiver's node when there is one (the intra-node class: NVLink, or
PCIe on PCIe nodes), else any holder over the network; among the candidates, the one that has sent least.

Time (synchronous, every layer at once, each class on its own links)::

    t_intra = max_g max(recv_intra[g], send_intra[g]) / (B_intra * eff_intra(expert_bytes))
    t_net   = max_nic max(recv_net[nic], send_net[nic]) / (B_nic * eff_net(expert_bytes))
    transfer_s = max(t_intra, t_net)
    stall_s = transfer_s + host_overhead_s          (engines that stop serving for it; else 0)
    payoff_steps = stall_s / step_gain_s            (steps after which the gain has repaid the stall)

with the cluster's per-direction port bandwidths and efficiency curves (the spec's levels). The engines' facts
(synchronous or not, host overhead, default cadence) are data: ``profiles/reference/engine_rebalance.yaml``, read by
:mod:`tuner.engine_facts`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tuner.engine_facts import facts_for
from tuner.rebalance import DEFAULT_ENGINE

if TYPE_CHECKING:
    from moesim.specs import ClusterSpec


@dataclass(frozen=True)
class MoveCost:
    """The weights a rebalance moves and how long they take (module docstring)."""

    moves: int  # experts loaded onto a GPU that did not hold them
    moves_per_layer: tuple[int, ...]
    local_copies: int  # slots refilled from the same GPU (no link)
    bytes_intra: float  # over NVLink (or PCIe on PCIe nodes)
    bytes_network: float
    transfer_s: float
    stall_s: float

    @property
    def bytes_total(self) -> float:
        return self.bytes_intra + self.bytes_network


def transfer_seconds(recv: np.ndarray, send: np.ndarray, port_gb_s: float, efficiency: float, ports: int = 1) -> float:
    """``max_port max(recv, send) / (port_gb_s * 1e9 * efficiency)`` in seconds, with ``ports`` consecutive GPUs
    sharing one port (a NIC serving several GPUs); 0 when nothing moves. ``recv``/``send`` [G] bytes."""
    if not recv.any() and not send.any():
        return 0.0
    if port_gb_s <= 0 or efficiency <= 0:
        return math.inf
    r = recv.reshape(-1, ports).sum(axis=1)
    s = send.reshape(-1, ports).sum(axis=1)
    return float(np.maximum(r, s).max() / (port_gb_s * 1e9 * efficiency))


def move_cost(
    current: np.ndarray,
    new: np.ndarray,
    slots_per_gpu: int,
    cluster: ClusterSpec,
    expert_bytes: float,
    engine: str = DEFAULT_ENGINE,
    synchronous: bool | None = None,
) -> MoveCost:
    """The :class:`MoveCost` of going from ``current`` to ``new`` (``[L, P]`` maps, same shape); serving stops
    for it when ``synchronous`` (None: as ``engine``'s rebalancer does, :func:`facts_for`)."""
    from moesim.dispatch import link_classes

    current = np.atleast_2d(np.asarray(current, dtype=np.int64))
    new = np.atleast_2d(np.asarray(new, dtype=np.int64))
    L, P = new.shape
    S = int(slots_per_gpu)
    G = P // S
    gpn = int(cluster.gpus_per_node)
    recv_i, send_i, recv_n, send_n = (np.zeros(G) for _ in range(4))
    per_layer, local = [], 0
    for l in range(L):
        cur_sets = [set(current[l, g * S : (g + 1) * S].tolist()) for g in range(G)]
        holders: dict[int, list[int]] = {}
        for g, held in enumerate(cur_sets):
            for e in held:
                holders.setdefault(e, []).append(g)
        moved = 0
        for g in range(G):
            fresh = set(new[l, g * S : (g + 1) * S].tolist()) - cur_sets[g]
            old_row = current[l, g * S : (g + 1) * S]
            new_row = new[l, g * S : (g + 1) * S]
            # slots that change but whose expert this GPU already held: copied locally
            local += int(((old_row != new_row) & np.isin(new_row, old_row)).sum())
            for e in sorted(fresh):
                src = holders.get(e, [])
                if not src:
                    continue  # an expert no GPU held (cannot happen for maps that hold every expert)
                near = [s for s in src if s // gpn == g // gpn]
                if near:
                    s = min(near, key=lambda x: send_i[x])
                    send_i[s] += expert_bytes
                    recv_i[g] += expert_bytes
                else:
                    s = min(src, key=lambda x: send_n[x])
                    send_n[s] += expert_bytes
                    recv_n[g] += expert_bytes
                moved += 1
        per_layer.append(moved)
    links = link_classes(cluster)
    t_intra = transfer_seconds(recv_i, send_i, links.nvl_bw_gb_s, float(cluster.efficiency(0, expert_bytes)))
    t_net = 0.0
    if links.multi_node:
        t_net = transfer_seconds(
            recv_n, send_n, links.nic_bw_gb_s, float(cluster.efficiency(1, expert_bytes)), links.gpus_per_nic
        )
    transfer = max(t_intra, t_net)
    facts = facts_for(engine)
    sync = facts.synchronous if synchronous is None else synchronous
    stall = (transfer + facts.host_overhead_s) if sync and sum(per_layer) else 0.0
    return MoveCost(
        moves=int(sum(per_layer)),
        moves_per_layer=tuple(per_layer),
        local_copies=local,
        bytes_intra=float(recv_i.sum()),
        bytes_network=float(recv_n.sum()),
        transfer_s=transfer,
        stall_s=stall,
    )


def payoff_steps(stall_s: float, step_gain_s: float) -> float:
    """``stall_s / step_gain_s``: steps until the per-step gain repays the stall (0 without a stall, inf when
    nothing is gained)."""
    if stall_s <= 0:
        return 0.0
    if step_gain_s <= 0:
        return math.inf
    return stall_s / step_gain_s


def as_dict(cost: MoveCost) -> dict[str, Any]:
    """JSON-ready fields of a :class:`MoveCost`."""
    return {
        "moves": cost.moves,
        "moves_per_layer": list(cost.moves_per_layer),
        "local_copies": cost.local_copies,
        "bytes_intra": cost.bytes_intra,
        "bytes_network": cost.bytes_network,
        "transfer_s": cost.transfer_s,
        "stall_s": cost.stall_s,
    }

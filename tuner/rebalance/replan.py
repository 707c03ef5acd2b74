"""The reference replan a rebalance is measured against: a placement from scratch, relabelled to keep what it can.

Dimension legend: L the trace's recorded MoE layers, E logical experts, G GPUs, N nodes, S slots per GPU, P = G*S.

The replan is what the engines run online (``"eplb"``, SGLang's and vLLM's EPLB) or ``moesim plan``'s MILP
(``"ilp"``), choices in :data:`tuner.rebalance.REPLANS`. A placement from scratch numbers its GPUs freely, so
each layer's row is relabelled (:func:`align_to`) to keep as much of the deployed map as possible: nodes matched,
then GPUs within nodes, by the experts they keep (two Hungarian assignments); its moves are then counted
(:func:`replan_moves`) against the deployed rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from moesim.placement import Placement, even_shares
from tuner.ilp import moved_replicas

if TYPE_CHECKING:
    from moesim.compute import EfficiencyModel
    from moesim.specs import ClusterSpec, ModelSpec
    from moesim.traces.trace import RoutingTrace


def align_to(current: np.ndarray, new: np.ndarray, num_gpus: int, gpus_per_node: int) -> np.ndarray:
    """``new [P]`` with its nodes, then its GPUs within each node, relabelled to keep the most experts where
    ``current [P]`` has them (two assignment problems), and each GPU's slots ordered so a kept expert stays in
    its slot."""
    from scipy.optimize import linear_sum_assignment

    P = new.shape[0]
    G, gpn = int(num_gpus), int(gpus_per_node)
    S, N = P // G, G // gpn
    cur_sets = [set(current[g * S : (g + 1) * S].tolist()) for g in range(G)]
    new_sets = [set(new[g * S : (g + 1) * S].tolist()) for g in range(G)]
    keep = np.array([[len(a & b) for b in cur_sets] for a in new_sets], dtype=np.float64)  # [new g, cur g]
    by_node = keep.reshape(N, gpn, N, gpn).sum(axis=(1, 3))
    node_new, node_cur = linear_sum_assignment(-by_node)
    target = np.empty(G, dtype=np.int64)  # new GPU -> the GPU it becomes
    for a, b in zip(node_new, node_cur):
        block = keep[a * gpn : (a + 1) * gpn, b * gpn : (b + 1) * gpn]
        gi, gj = linear_sum_assignment(-block)
        target[a * gpn + gi] = b * gpn + gj
    out = np.empty_like(new)
    for g in range(G):
        dst = int(target[g])
        old = current[dst * S : (dst + 1) * S]
        experts = new[g * S : (g + 1) * S].tolist()
        slot = [-1] * S
        for i, e in enumerate(old.tolist()):
            if e in experts:
                slot[i] = e
                experts.remove(e)
        rest = iter(experts)
        out[dst * S : (dst + 1) * S] = [e if e >= 0 else next(rest) for e in slot]
    return out


def full_replan(
    replan: str,
    model: ModelSpec,
    cluster: ClusterSpec,
    trace: RoutingTrace,
    redundant: int,
    engine: str,
    tokens_per_gpu: int,
    time_limit_s: float,
    solver: str,
    calibration: EfficiencyModel | None,
) -> np.ndarray:
    """The ``[L, P]`` rows of the replan from scratch (``"eplb"`` or ``"ilp"``, the latter within
    ``time_limit_s``) for ``trace`` with ``redundant`` extra slots, before relabelling."""
    from tuner.plan import place, plan

    if replan == "eplb":
        return place(
            "eplb", model, cluster, trace, redundant_experts=redundant, engine=engine, tokens_per_gpu=tokens_per_gpu
        ).phy2log
    res = plan(
        model,
        cluster,
        trace,
        redundant_experts=redundant,
        solver=solver,
        time_limit_s=time_limit_s,
        tokens_per_gpu=tokens_per_gpu,
        engine=engine,
        calibration=calibration,
    )
    return res.best.phy2log


def replan_moves(full: np.ndarray, deployed: np.ndarray, num_gpus: int, num_experts: int) -> list[int]:
    """``[L]`` moves of each layer from ``deployed [L, P]`` to ``full [L, P]`` (:func:`tuner.ilp.moved_replicas`)."""
    return [
        int(m)
        for m in moved_replicas(
            as_placement(full, num_gpus, num_experts), as_placement(deployed, num_gpus, num_experts)
        )
    ]


def as_placement(rows: np.ndarray, num_gpus: int, num_experts: int) -> Placement:
    """Bare ``[L, P]`` maps as a :class:`Placement` (even shares)."""
    return Placement(num_gpus, rows.shape[1] // num_gpus, num_experts, rows, even_shares(rows, num_experts))

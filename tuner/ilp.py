"""MILP expert placement with replication (MoETuner-style), solved with PuLP (CBC or HiGHS).

Dimension legend: L MoE layers (the trace's recorded layers), E logical experts, G GPUs, N nodes, S slots per
GPU, P = G*S slots, B bins of a subproblem (GPUs or nodes), n items of a subproblem (logical experts).

Predicted time of MoE layer l (microseconds), the quantity minimised::

    t_l = c_tok * max_g load_l(g)                                  # expert compute of the busiest GPU
        + c_gpu  * cross_gpu_tokens(l-1 -> l)                      # transitions whose two experts sit on
        + c_node * cross_node_tokens(l-1 -> l)                     #   different GPUs / nodes
        + c_move * replicas_loaded(l)                              # optional: weights moved from --current

    load_l(g)            = sum_e w_le * x_leg                      # x_leg: share of expert e's tokens on GPU g
    cross_gpu_tokens     = sum_ij T_ij * (1 - sum_g x_(l-1)ig * x_ljg)
    cross_node_tokens    = sum_ij T_ij * (1 - sum_n X_(l-1)in * X_ljn)   # X: share per node

``c_tok`` (us per token-expert assignment) is the slope of ``moesim.compute.fused_moe_us`` at the mean load;
``c_gpu = bytes_per_token / (G * nvlink_bw)`` and ``c_node = bytes_per_token / (G * nic_bw)`` spread a
crossing over all GPUs' links (dispatch + combine, bf16); ``c_move = expert_bytes / slowest_bw / amortise``.
See ``tuner.plan.cost_model``.

Decomposition (used for every size; exact per subproblem). The product ``x_(l-1)ig * x_ljg`` couples
consecutive layers, so layers are solved in sequence, each given its neighbours' current placement: then the
co-location terms are linear in layer l's variables (``Cin[e,g] = sum_i T_(l-1)[i,e] x_(l-1)ig`` and
``Cout[e,g] = sum_j T_l[e,j] x_(l+1)jg``), and every subproblem is a MILP (sweeps: forward, then again while
time is left). With ``hierarchical`` (automatic when ``E * G`` exceeds :data:`FLAT_LIMIT` on several nodes)
each layer is solved in two stages as in EPLB: experts (with replica counts and shares) to nodes, balancing
nodes and minimising network crossings; then, per node, its experts to its GPUs (one small MILP per node).
The time limit is shared out over the layers left (:data:`HIER_NODE_SHARE` of a layer's share to the node
stage, the rest to its GPU stages); layers it does not reach keep the warm start. Every layer's busiest GPU is
capped at the warm start's (``M_warm(l)``): a flat solve carries it as a constraint and no solution above it is
accepted.

Node stage (flat solves on several nodes, :func:`_cluster_start`): coordinate descent leaves experts on their
node when two layers would have to move together, so before the sweeps replicas are clustered onto nodes by
transitions, all layers at once (:mod:`tuner.node_cluster`, minimising the cross-node term under a node load cap),
packed onto each node's GPUs under ``M_warm(l)``, and the result replaces the warm start only if the whole
plan's predicted time (the objective above) is lower. The sweeps then refine it.

Subproblem MILP (bins b, items e)::

    min  c_tok * M  - sum_eb benefit_eb * x_eb  + sum_eb move_eb * y_eb  + const
    s.t. sum_b y_eb >= 1  (continuous)  |  sum_b y_eb = k_e, x_eb = y_eb / k_e  (even)
         sum_e y_eb  = slots_b                  # every GPU has S slots
         eps * y_eb <= x_eb <= y_eb,  sum_b x_eb = 1
         sum_e w_e x_eb <= M  (<= M_warm on flat solves: never worse balance than the warm start)
         M >= packing_bound(replica weights)      # even split: a valid cut the LP relaxation misses
         y_eb in {0..ub_e} integer (binary unless an expert has more replicas than bins), x_eb >= 0

Replica shares: ``split="even"`` (default) fixes the replica counts to those of the warm start (EPLB's rule:
extra replicas to the highest load per replica) and splits tokens evenly, as SGLang and vLLM dispatch, so an
exported plan behaves as predicted; ``split="continuous"`` lets the MILP choose which experts to replicate and
each replica's share (``moesim.placement`` stores any shares).

Gap: every subproblem reports the solver's objective and best bound. The reported ``gap`` is
``(sum obj_s - sum bound_s) / sum obj_s`` over the last solve of each subproblem (each with its constant),
i.e. the gap of the decomposed problem *given* the neighbouring layers (and, hierarchically, the node
assignment). It is not a bound on the joint problem over all layers; ``max_sub_gap`` is the worst subproblem.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moesim.placement import Placement, slots_per_gpu

SOLVERS = ("cbc", "highs")
SPLITS = ("continuous", "even")

# Search and time-budget constants. None of them is measured or taken from a source: they are tuning choices
# (assumptions), kept because with them the benchmark's goals hold (docs/PLACEMENT.md, "Results"); the
# reason for each value is beside it.
FLAT_LIMIT = 4096  # E*G above which a multi-node instance is decomposed hierarchically: OLMoE on 16 GPUs
#                    (64 * 16 = 1024) stays flat, DeepSeek-V3 on 32 GPUs (256 * 32 = 8192) is split
MIN_SHARE = 0.01  # smallest share a slot may hold (a slot with no tokens would waste memory)
NODE_CANDIDATES = 3  # hierarchical: nodes an expert may move to besides where it is (keeps the node MILP small)
HOT_EXPERT_FACTOR = 2.0  # hierarchical: an expert above this many mean slot loads may go to any node (it will
#                          be replicated, and its replicas should be free to spread)
HIER_NODE_SHARE = 0.15  # hierarchical: share of a layer's time for its one node MILP; the rest for its N GPU MILPs
SWEEP_SHARE = 0.95  # share of (time left / layers left) a layer's solve may use; the rest covers the Python work
MIN_SOLVE_S = 0.2  # no subproblem (nor the node stage) is started with less time left than this


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


def nic_inbound(phy2log: np.ndarray, counts: np.ndarray, num_experts: int, num_gpus: int, gpus_per_node: int,
                gpus_per_nic: int = 1) -> np.ndarray:
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


def nic_outbound(phy2log: np.ndarray, counts: np.ndarray, num_experts: int, num_gpus: int, gpus_per_node: int,
                 gpus_per_nic: int = 1) -> np.ndarray:
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


def nic_traffic(phy2log: np.ndarray, counts: np.ndarray, num_experts: int, num_gpus: int, gpus_per_node: int,
                gpus_per_nic: int = 1) -> np.ndarray:
    """``[L, G / gpus_per_nic]`` each NIC's assignments in its busier direction, ``max(inbound, outbound)``
    (:func:`nic_inbound`, :func:`nic_outbound`): the simulator's all-to-all waits for every receiver's inbound
    and for the busiest sender's outbound (``moesim.dispatch.link_times_us``)."""
    args = (phy2log, counts, num_experts, num_gpus, gpus_per_node, gpus_per_nic)
    return np.maximum(nic_inbound(*args), nic_outbound(*args))


def node_inbound(phy2log: np.ndarray, counts: np.ndarray, num_experts: int, num_gpus: int,
                 gpus_per_node: int) -> np.ndarray:
    """``[L, N]`` assignments each node receives from ranks of other nodes (:func:`nic_inbound` summed over
    the node's GPUs): ``inbound(n) = sum_e c_e * (N - n_e) / N * y_en / r_e`` with ``y_en`` e's replicas on n."""
    return nic_inbound(phy2log, counts, num_experts, num_gpus, gpus_per_node, gpus_per_node)


@dataclass
class SubResult:
    """One subproblem solve."""

    layer: int  # row in the placement
    stage: str  # "flat" | "nodes" | "gpus"
    status: str
    objective: float
    bound: float
    solve_s: float
    size: int  # integer variables

    @property
    def gap(self) -> float:
        return _gap(self.objective, self.bound)


@dataclass
class ILPResult:
    placement: Placement
    objective_us: float  # predicted sum over layers of t_l, evaluated on the final placement
    gap: float  # decomposed gap (see module docstring); nan when nothing was solved
    max_sub_gap: float
    solve_s: float
    status: str  # "optimal" | "time-limit" | "partial" | "warm-start"
    solver: str
    hierarchical: bool
    subproblems: list[SubResult] = field(default_factory=list)
    clustered: bool = False  # the node-clustering start (tuner.node_cluster) was adopted


def _gap(obj: float, bound: float) -> float:
    if not (math.isfinite(obj) and math.isfinite(bound)):
        return float("nan")
    return max(0.0, obj - bound) / max(abs(obj), 1e-12)


# --------------------------------------------------------------------------------------------- evaluation
def share_matrix(phy2log_row: np.ndarray, shares_row: np.ndarray, num_experts: int, num_bins: int,
                 slots_per_bin: int) -> np.ndarray:
    """[E, B] share of each expert's tokens in each bin (GPU, or node with ``slots_per_bin = S * G/N``)."""
    out = np.zeros((num_experts, num_bins))
    np.add.at(out, (np.asarray(phy2log_row), np.arange(len(phy2log_row)) // slots_per_bin), shares_row)
    return out


def _crossings(T: np.ndarray, a: np.ndarray, b: np.ndarray, num_nodes: int) -> tuple[float, float]:
    """Transitions ``T [E, E]`` from shares ``a [E, G]`` (one layer) to ``b [E, G]`` (the next) whose two experts
    sit on different GPUs, and on different nodes: ``sum_ij T_ij (1 - sum_g a_ig b_jg)``, and the same per node."""
    tot = float(T.sum())
    E = a.shape[0]
    an, bn = (m.reshape(E, num_nodes, -1).sum(-1) for m in (a, b))
    # sum_ij T_ij (a b^T)_ij as ((T b) * a).sum(): two GEMM-shaped products, not a 3-operand einsum (40x faster)
    co_gpu = float(((T @ b) * a).sum())
    co_node = float(((T @ bn) * an).sum())
    return max(0.0, tot - co_gpu), max(0.0, tot - co_node)  # rounding can leave -1e-9 on one node


def predicted_terms(placement: Placement, counts: np.ndarray, transitions: np.ndarray | None,
                    gpus_per_node: int, cost: CostModel, current: Placement | None = None,
                    network: bool = False) -> dict[str, float]:
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
            g_tok, n_tok = _crossings(np.asarray(transitions[l], dtype=np.float64), A[l], A[l + 1], N)
            gpu_tok += g_tok
            node_tok += n_tok
    moved = 0.0
    if current is not None:
        moved = float(moved_replicas(placement, current).sum())
    inbound = 0.0
    if network and N > 1:
        inbound = float(nic_traffic(placement.phy2log, counts, placement.num_experts, placement.num_gpus,
                                    gpus_per_node, cost.gpus_per_nic).max(axis=1).sum())
    total = (compute + cost.us_per_gpu_token * gpu_tok + cost.us_per_node_token * node_tok
             + cost.us_per_moved_replica * moved + cost.us_per_nic_assignment * inbound)
    return {"compute_us": compute, "cross_gpu_tokens": gpu_tok, "cross_node_tokens": node_tok,
            "moved_replicas": moved, "nic_traffic": inbound, "objective_us": total}


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


# --------------------------------------------------------------------------------------------- subproblem
@dataclass
class _Sub:
    """Items (experts) into bins. ``w`` [n] tokens; ``benefit``/``ycost`` [n, B]; blocks: bins per block."""

    w: np.ndarray
    slots: np.ndarray  # [B]
    max_per_bin: int
    counts: np.ndarray | None  # [n] fixed replica counts (even split) or None (continuous)
    benefit: np.ndarray
    ycost: np.ndarray
    c_tok: float
    const: float
    blocks: list[np.ndarray]  # bins of each block, each block has its own max-load variable
    allowed: np.ndarray  # [n, B] bool: item may go to bin
    load_cap: float | None = None
    warm: tuple[np.ndarray, np.ndarray] | None = None  # (y [n, B], x [n, B])
    min_share: float = MIN_SHARE  # x >= min_share * y (0 in the node stage; fixed after the solve)
    ub: np.ndarray | None = None  # [n] replicas of an item one bin may hold (default max_per_bin)
    # (bin_group [B], group_ub [n]): replicas of item i over the bins of one group (a node) at most group_ub[i]
    group_ub: tuple[np.ndarray, np.ndarray] | None = None
    # network term: c_net * Mnet with Mnet >= sum_i net_w[i] x_ib summed over the bins of each group (a NIC, a node)
    net_w: np.ndarray | None = None
    net_group: np.ndarray | None = None  # [B] group of each bin; None: every bin its own
    c_net: float = 0.0
    # the same Mnet also >= out_const - sum_i out_w[i] y_ib summed over the bins of each out group (a node: what
    # its ranks send away, less the tokens of the experts it holds); out_w None: Mnet >= out_const
    out_w: np.ndarray | None = None
    out_group: np.ndarray | None = None
    out_const: float = 0.0
    gpu_target: float | None = None  # node stage: mean GPU load; the objective then prices a GPU-level max
    gpus_per_bin: int = 1


def _solve_sub(sub: _Sub, solver: str, time_limit_s: float, gap_rel: float, threads: int
               ) -> tuple[np.ndarray | None, np.ndarray | None, str, float, float]:
    """Solve one subproblem. Returns ``(y, x, status, objective, bound)``; y is None without an incumbent."""
    import warnings

    import pulp

    warnings.filterwarnings("ignore", category=DeprecationWarning, module="pulp")  # PuLP 4.0 API notices
    n, B = sub.allowed.shape
    even = sub.counts is not None
    prob = pulp.LpProblem("placement", pulp.LpMinimize)
    cells = [(i, b) for i in range(n) for b in range(B) if sub.allowed[i, b]]
    ub = np.full(n, sub.max_per_bin, dtype=np.int64) if sub.ub is None else np.minimum(sub.ub, sub.max_per_bin)
    y = {c: pulp.LpVariable(f"y_{c[0]}_{c[1]}", 0, int(ub[c[0]]),
                            pulp.LpBinary if ub[c[0]] == 1 else pulp.LpInteger) for c in cells}
    # x as (variable, coefficient) terms: a variable of its own (continuous) or y / k (even split)
    if even:
        xt = {c: (y[c], 1.0 / float(sub.counts[c[0]])) for c in cells}
    else:
        xt = {c: (pulp.LpVariable(f"x_{c[0]}_{c[1]}", 0, 1), 1.0) for c in cells}
    Ms = [pulp.LpVariable(f"M_{k}", 0) for k in range(len(sub.blocks))]
    by_item: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    by_bin: list[list[tuple[int, int]]] = [[] for _ in range(B)]
    for c in cells:
        by_item[c[0]].append(c)
        by_bin[c[1]].append(c)
    Aff, Con = pulp.LpAffineExpression, pulp.LpConstraint
    LE, GE, EQ = pulp.LpConstraintLE, pulp.LpConstraintGE, pulp.LpConstraintEQ
    obj_terms: dict[Any, float] = {}

    def add(var: Any, coef: float) -> None:
        obj_terms[var] = obj_terms.get(var, 0.0) + coef

    mg_var: list[Any] = []
    if sub.gpu_target is None:
        for M in Ms:
            add(M, sub.c_tok)
    else:
        # node stage: Mg estimates the busiest GPU, >= its node's mean GPU load and >= the load of one replica
        # (linear and conservative: for a replica count y >= 2 it charges w*x - (y-1)*target >= w*x/y)
        Mg = pulp.LpVariable("Mg", 0)
        mg_var.append(Mg)
        add(Mg, sub.c_tok)
        for M in Ms:
            prob += Con(Aff([(M, 1.0), (Mg, -float(sub.gpus_per_bin))]), LE, rhs=0.0)
        for c in cells:
            xv, xc = xt[c]
            terms = [(Mg, 1.0), (xv, -float(sub.w[c[0]]) * xc)]
            if xv is not y[c]:
                terms.append((y[c], sub.gpu_target))
            else:
                terms[1] = (xv, -float(sub.w[c[0]]) * xc + sub.gpu_target)
            prob += Con(Aff(terms), GE, rhs=sub.gpu_target)
    for c in cells:
        if sub.benefit[c] != 0.0:
            add(xt[c][0], -float(sub.benefit[c]) * xt[c][1])
        if sub.ycost[c] != 0.0:
            add(y[c], float(sub.ycost[c]))
    prob += Aff(list(obj_terms.items()), constant=sub.const)
    for i in range(n):
        if even:
            prob += Con(Aff([(y[c], 1.0) for c in by_item[i]]), EQ, rhs=int(sub.counts[i]))
        else:
            prob += Con(Aff([(y[c], 1.0) for c in by_item[i]]), GE, rhs=1)
            prob += Con(Aff([(xt[c][0], 1.0) for c in by_item[i]]), EQ, rhs=1)
            for c in by_item[i]:
                prob += Con(Aff([(xt[c][0], 1.0), (y[c], -1.0)]), LE, rhs=0)
                if sub.min_share > 0:
                    prob += Con(Aff([(xt[c][0], 1.0), (y[c], -sub.min_share)]), GE, rhs=0)
    for b in range(B):
        prob += Con(Aff([(y[c], 1.0) for c in by_bin[b]]), EQ, rhs=int(sub.slots[b]))
    net_var = None
    if sub.net_w is not None and sub.c_net > 0:
        net_var = pulp.LpVariable("Mnet", 0)
        obj_terms[net_var] = sub.c_net
        net_group = np.arange(B) if sub.net_group is None else sub.net_group
        for grp in np.unique(net_group):
            terms = {}
            for b in np.nonzero(net_group == grp)[0]:
                for c in by_bin[b]:
                    xv, xc = xt[c]
                    terms[xv] = terms.get(xv, 0.0) + float(sub.net_w[c[0]]) * xc
            terms[net_var] = -1.0
            prob += Con(Aff(list(terms.items())), LE, rhs=0)
        if sub.out_const > 0 and sub.out_w is None:
            prob += Con(Aff([(net_var, 1.0)]), GE, rhs=sub.out_const)
        elif sub.out_const > 0:
            out_group = np.arange(B) if sub.out_group is None else sub.out_group
            for grp in np.unique(out_group):
                terms = {net_var: 1.0}
                for b in np.nonzero(out_group == grp)[0]:
                    for c in by_bin[b]:
                        terms[y[c]] = terms.get(y[c], 0.0) + float(sub.out_w[c[0]])
                prob += Con(Aff(list(terms.items())), GE, rhs=sub.out_const)
        prob.setObjective(Aff(list(obj_terms.items()), constant=sub.const))
    if sub.group_ub is not None:
        bin_group, group_ub = sub.group_ub
        for i in range(n):
            for grp in np.unique(bin_group):
                cs = [c for c in by_item[i] if bin_group[c[1]] == grp]
                if len(cs) > group_ub[i]:
                    prob += Con(Aff([(y[c], 1.0) for c in cs]), LE, rhs=int(group_ub[i]))
    for k, bins in enumerate(sub.blocks):
        for b in bins:
            terms = {}
            for c in by_bin[b]:
                xv, xc = xt[c]
                terms[xv] = terms.get(xv, 0.0) + float(sub.w[c[0]]) * xc
            terms[Ms[k]] = -1.0
            prob += Con(Aff(list(terms.items())), LE, rhs=0)
        if sub.load_cap is not None:
            prob += Con(Aff([(Ms[k], 1.0)]), LE, rhs=sub.load_cap)
        if sub.gpu_target is None:
            # valid bounds that the LP relaxation does not see: a bin is at least as loaded as the mean of its
            # block and, with fixed replica counts, as the heaviest replica it could hold
            block_items = sorted({c[0] for b in bins for c in by_bin[b]})
            lb = float(sum(sub.w[i] for i in block_items)) / max(1, len(bins)) if len(sub.blocks) == 1 else 0.0
            if even and block_items and len(sub.blocks) == 1:
                reps = np.repeat([float(sub.w[i]) / float(sub.counts[i]) for i in block_items],
                                 [int(sub.counts[i]) for i in block_items])
                lb = max(lb, packing_bound(reps, len(bins), int(sub.slots[bins[0]])))
            if lb > 0:
                prob += Con(Aff([(Ms[k], 1.0)]), GE, rhs=lb)
    if sub.warm is not None:
        wy, wx = sub.warm
        for c in cells:
            y[c].setInitialValue(min(int(ub[c[0]]), round(wy[c])))
            if not even:
                xt[c][0].setInitialValue(min(1.0, max(0.0, float(wx[c]))))
        for k, bins in enumerate(sub.blocks):
            Ms[k].setInitialValue(float(max((sub.w * wx[:, b]).sum() for b in bins)))
        if sub.gpu_target is not None:
            mg = max(max(float(Ms[k].varValue) for k in range(len(Ms))) / sub.gpus_per_bin,
                     float((sub.w[:, None] * wx - sub.gpu_target * (wy - 1)).max()))
            mg_var[0].setInitialValue(mg)
        if net_var is not None:
            per_bin_net = sub.net_w @ wx  # [B]
            grp = np.arange(B) if sub.net_group is None else sub.net_group
            start = float(np.bincount(grp, weights=per_bin_net).max())
            if sub.out_const > 0 and sub.out_w is None:
                start = max(start, sub.out_const)
            elif sub.out_const > 0:
                og = np.arange(B) if sub.out_group is None else sub.out_group
                held = np.bincount(og, weights=sub.out_w @ np.round(wy))
                start = max(start, float((sub.out_const - held).max()))
            net_var.setInitialValue(start)

    if solver == "highs":
        status, objective, bound = _run_highs(prob, time_limit_s, gap_rel, threads, sub.warm is not None)
    else:
        status, objective, bound = _run_cbc(prob, time_limit_s, gap_rel, threads, sub.warm is not None)
    if status in ("none", "fault"):
        return None, None, status, float("nan"), bound
    ys = np.zeros((n, B))
    xs = np.zeros((n, B))
    for c in cells:
        ys[c] = round(y[c].value() or 0.0)
        xs[c] = float(xt[c][0].value() or 0.0) * xt[c][1]
    if not even:
        xs = np.where(ys > 0, np.maximum(xs, 0.0), 0.0)
        xs = xs / np.maximum(xs.sum(axis=1, keepdims=True), 1e-12)
    return ys, xs, status, objective, bound


def _timed_solve(sub: _Sub, layer: int, stage: str, size: int, solver: str, time_limit_s: float, gap_rel: float,
                 threads: int, subs: list[SubResult]) -> tuple[np.ndarray | None, np.ndarray | None, SubResult]:
    """:func:`_solve_sub`, timed and recorded in ``subs`` as a :class:`SubResult` of ``layer`` and ``stage``."""
    ts = time.perf_counter()
    y, x, status, obj, bound = _solve_sub(sub, solver, time_limit_s, gap_rel, threads)
    r = SubResult(layer, stage, status, obj, bound, time.perf_counter() - ts, size)
    subs.append(r)
    return y, x, r


_CBC_BOUND = re.compile(r"^Lower bound:\s*([-+0-9.eE]+)", re.MULTILINE)
_CBC_POSSIBLE = re.compile(r"best possible ([-+0-9.eE]+)")
_CBC_ROOT = re.compile(r"Cuts at root node changed objective from [-+0-9.eE]+ to ([-+0-9.eE]+)")
_CBC_LP = re.compile(r"Continuous objective value is ([-+0-9.eE]+)")


def _cbc_bound(text: str) -> float:
    """The best valid lower bound CBC's log shows (without the objective's constant), or nan.

    In order: the final ``Lower bound:`` (printed when stopped early), the last ``best possible`` of the
    branch-and-bound progress lines, the root bound after cuts, the LP relaxation."""
    for pattern in (_CBC_BOUND, _CBC_POSSIBLE, _CBC_ROOT, _CBC_LP):
        found = [float(v) for v in pattern.findall(text) if abs(float(v)) < 1e20]  # CBC prints 1e50 for "none"
        if found:
            return found[-1]
    return float("nan")


def _run_cbc(prob: Any, time_limit_s: float, gap_rel: float, threads: int, warm: bool) -> tuple[str, float, float]:
    """CBC through PuLP; the best bound is read from CBC's log (PuLP does not return it)."""
    import pulp

    fd, log = tempfile.mkstemp(prefix="moesim_cbc_", suffix=".log")
    os.close(fd)
    try:
        cmd = pulp.PULP_CBC_CMD(msg=False, timeLimit=round(max(0.1, time_limit_s), 2), gapRel=gap_rel,
                                warmStart=warm, threads=threads, logPath=log)
        try:
            prob.solve(cmd)
        except pulp.PulpSolverError:
            # CBC died (it can crash on tiny time limits) or left no solution file: no incumbent from this
            # subproblem, so its layer keeps its row
            return "fault", float("nan"), float("nan")
        with open(log, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    finally:
        try:
            os.unlink(log)
        except OSError:
            pass
    has_solution = prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible)
    if not has_solution:
        return "none", float("nan"), float("nan")
    objective = float(pulp.value(prob.objective))
    optimal = "Optimal solution found" in text
    bound = _cbc_bound(text) + float(prob.objective.constant)  # CBC works without the objective's constant
    if "Search completed" in text and "best possible" not in text and _CBC_BOUND.search(text) is None \
            and "ratioGap" not in text:
        bound = objective  # proved optimal with no gap tolerance in force
    status = "optimal" if optimal else "time-limit"
    return status, objective, min(bound, objective) if math.isfinite(bound) else bound


@contextlib.contextmanager
def _c_stdout_to_stderr() -> Any:
    """Point file descriptor 1 at stderr for the block, so a library's C-level prints never reach stdout (the
    command's own output, e.g. ``--json``)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _run_highs(prob: Any, time_limit_s: float, gap_rel: float, threads: int, warm: bool) -> tuple[str, float, float]:
    """HiGHS in-process through ``pulp.HiGHS`` (highspy), with the warm start passed as a MIP start."""
    import highspy
    import pulp

    class _HiGHSWarm(pulp.HiGHS):  # PuLP's HiGHS class has no warm start; hand HiGHS the initial values
        def callSolver(self, lp: Any) -> None:
            if warm:
                sol = highspy.HighsSolution()
                sol.col_value = [float(v.varValue) if v.varValue is not None else 0.0 for v in lp.variables()]
                sol.value_valid = True
                lp.solverModel.setSolution(sol)
            lp.solverModel.run()

    cmd = _HiGHSWarm(msg=False, timeLimit=max(0.05, float(time_limit_s)), gapRel=gap_rel, threads=threads)
    with _c_stdout_to_stderr():  # HiGHS prints its banner from C on creation, before msg=False applies
        prob.solve(cmd)
    h = prob.solverModel
    info = h.getInfo()
    model_status = h.getModelStatus()
    if info.primal_solution_status != 2:  # kSolutionStatusFeasible
        return "none", float("nan"), float("nan")
    objective = float(pulp.value(prob.objective))
    bound = float(info.mip_dual_bound) + float(prob.objective.constant)  # PuLP does not pass the constant
    status = "optimal" if model_status == highspy.HighsModelStatus.kOptimal else "time-limit"
    if not math.isfinite(bound):
        bound = float("nan")
    return status, objective, min(bound, objective) if math.isfinite(bound) else bound


def packing_bound(replica_w: np.ndarray, bins: int, slots: int) -> float:
    """Lower bound on the busiest bin when replicas of weights ``replica_w`` fill ``bins`` bins of exactly
    ``slots`` slots each. Pigeonhole: of the ``(j-1)*bins + 1`` heaviest replicas some bin holds ``j``, at least
    the ``j`` lightest of them, and its other ``slots - j`` slots hold at least the lightest replicas left::

        M >= max_j  sum(r[(j-1)B+1-j .. (j-1)B]) + sum(smallest slots-j of the rest)     (r sorted descending)
    """
    r = np.sort(np.asarray(replica_w, dtype=np.float64))[::-1]
    n = len(r)
    best = float(r.sum()) / max(1, bins)
    for j in range(1, slots + 1):
        top = (j - 1) * bins + 1
        if top > n:
            break
        heavy = r[top - j:top]  # the j lightest of the top `top`
        rest = r[top:]
        light = np.sort(rest)[: max(0, slots - j)]
        best = max(best, float(heavy.sum() + light.sum()))
    return best


# --------------------------------------------------------------------------------------------- heuristics
def greedy_bins(w: np.ndarray, counts: np.ndarray, slots: np.ndarray, allowed: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """LPT packing of replicas (``counts[e]`` of weight ``w[e]/counts[e]``) into bins with ``slots``, at most one
    replica of an expert per bin. Returns ``(y [n, B], x [n, B])`` or None if it gets stuck."""
    n, B = len(w), len(slots)
    y = np.zeros((n, B))
    load = np.zeros(B)
    free = np.asarray(slots, dtype=np.int64).copy()
    reps = [(w[e] / counts[e], e) for e in range(n) for _ in range(int(counts[e]))]
    reps.sort(key=lambda t: (-t[0], t[1]))
    for wr, e in reps:
        ok = (free > 0) & (y[e] == 0)
        if allowed is not None:
            ok &= allowed[e]
        if not ok.any():  # more replicas than bins: a second replica on one GPU (its share doubles)
            ok = free > 0
            if allowed is not None:
                ok &= allowed[e]
        if not ok.any():
            return None
        b = int(np.argmin(np.where(ok, load, np.inf)))
        y[e, b] += 1
        load[b] += wr
        free[b] -= 1
    x = y / np.maximum(y.sum(axis=1, keepdims=True), 1)
    return y, x


def improve_bins(w: np.ndarray, counts: np.ndarray, y: np.ndarray, max_rounds: int = 2000
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Even out a packing ``y [n, B]`` (replicas of weight ``w[e] / counts[e]``) by swapping two replicas in
    different bins: first the swap that most lowers the sum of squared bin loads (a swap of weights ``a`` in bin
    i and ``b`` in bin j changes it by ``2d (load_i - load_j) + 2d^2``, ``d = b - a``), until none does; then
    swaps out of the busiest bin that lower it. On the shipped OLMoE traces (EPLB's node sets on 2 x 8 GPUs: 40
    replicas into 8 bins of 5, every layer and node) LPT leaves the busiest bin 0.3-4.9% above the mean, this
    search 0.03-2.3%. A swap never puts two replicas of an expert in one bin unless ``counts[e]`` exceeds the bins.
    Returns ``(y, x)`` as :func:`greedy_bins`."""
    y = np.array(y, dtype=np.float64, copy=True)
    n, B = y.shape
    wr = np.asarray(w, dtype=np.float64) / np.asarray(counts, dtype=np.float64)  # [n] weight of one replica
    per_bin = np.maximum(1, -(-np.asarray(counts, dtype=np.int64) // B))  # [n] replicas of e one bin may hold
    scale = max(float(wr.max()), 1e-12) ** 2
    for phase in ("squares", "max"):
        for _ in range(max_rounds):
            load = wr @ y
            r_item, r_bin = np.nonzero(y > 0.5)  # one entry per (expert, bin) held; swaps move one replica
            d = wr[r_item][None, :] - wr[r_item][:, None]  # [r, q]: weight in minus weight out for r's bin
            li, lq = load[r_bin][:, None], load[r_bin][None, :]
            ok = (r_bin[:, None] != r_bin[None, :]) & (r_item[:, None] != r_item[None, :])
            ok &= y[r_item[:, None], r_bin[None, :]] + 1 <= per_bin[r_item][:, None]  # r's expert into q's bin
            ok &= y[r_item[None, :], r_bin[:, None]] + 1 <= per_bin[r_item][None, :]  # q's expert into r's bin
            if phase == "squares":
                delta = np.where(ok, 2 * d * (li - lq) + 2 * d * d, np.inf)
                j = int(np.argmin(delta))
                if delta.flat[j] >= -1e-9 * scale:
                    break
            else:
                top = int(np.argmax(load))
                worse = np.where(ok & (r_bin[:, None] == top), np.maximum(li + d, lq - d), np.inf)
                j = int(np.argmin(worse))
                if not worse.flat[j] < load[top] * (1 - 1e-12):
                    break
            r, q = divmod(j, len(r_item))
            e, f, bi, bq = r_item[r], r_item[q], r_bin[r], r_bin[q]
            y[e, bi] -= 1
            y[e, bq] += 1
            y[f, bq] -= 1
            y[f, bi] += 1
    return y, y / np.maximum(y.sum(axis=1, keepdims=True), 1)


# --------------------------------------------------------------------------------------------- driver
def _layer_rows(y: np.ndarray, x: np.ndarray, share_scale: np.ndarray, experts: np.ndarray, slots: int
                ) -> list[list[tuple[int, float]]]:
    """Per GPU (bin) the slot list ``[(expert, share)]`` from a GPU-level solution."""
    out = []
    for b in range(y.shape[1]):
        items = []
        for i in np.nonzero(y[:, b] > 0.5)[0]:
            reps = round(y[i, b])  # even split may put two replicas of an expert on one GPU
            items += [(int(experts[i]), float(x[i, b] * share_scale[i]) / reps)] * reps
        items.sort()
        if len(items) != slots:
            return []
        out.append(items)
    return out


def _rows_to_arrays(rows: list[list[tuple[int, float]]], num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """A layer's ``phy2log [P]`` and ``shares [P]`` from per-GPU slot lists, each expert's shares rescaled to sum
    to 1."""
    phy = np.array([e for gpu in rows for e, _ in gpu], dtype=np.int64)
    sh = np.array([s for gpu in rows for _, s in gpu], dtype=np.float64)
    return phy, sh / np.bincount(phy, weights=sh, minlength=num_experts)[phy]


def _row_max_load(w: np.ndarray, phy: np.ndarray, sh: np.ndarray, slots: int) -> float:
    """Busiest GPU's tokens in one layer: ``w [E]`` tokens per expert, ``phy``/``sh [P]`` the layer's row."""
    return float((w[phy] * sh).reshape(-1, slots).sum(axis=1).max())


def _node_gpu_sub(iw: np.ndarray, k_items: np.ndarray, gpn: int, S: int, per_bin: int, even: bool, c_tok: float,
                  *, benefit: np.ndarray | None = None, ycost: np.ndarray | None = None, const: float = 0.0,
                  load_cap: float | None = None, net_w: np.ndarray | None = None, net_group: np.ndarray | None = None,
                  c_net: float = 0.0, out_const: float = 0.0) -> _Sub:
    """One node's replicas onto its ``gpn`` GPUs of ``S`` slots: items ``iw [n]`` (the node's tokens of each of its
    experts) with ``k_items [n]`` replicas there, at most ``ceil(k / gpn)`` of one expert on a GPU. The warm start
    is LPT (:func:`greedy_bins`) when it keeps to those bounds. ``net_w [n]``: network inbound per unit of an
    item, priced at ``c_net`` on the busiest of the GPU groups ``net_group [gpn]`` (the node's NICs), which also
    carries at least ``out_const`` (what the node sends away)."""
    n = len(iw)
    ub = -(-k_items // gpn)
    g = greedy_bins(iw, k_items, np.full(gpn, S))
    warm = g if g is not None and np.all(g[0] <= np.minimum(per_bin, ub)[:, None]) else None
    return _Sub(w=iw, slots=np.full(gpn, S), max_per_bin=per_bin, counts=k_items if even else None, ub=ub,
                benefit=np.zeros((n, gpn)) if benefit is None else benefit,
                ycost=np.zeros((n, gpn)) if ycost is None else ycost, c_tok=c_tok, const=const,
                blocks=[np.arange(gpn)], allowed=np.ones((n, gpn), bool), load_cap=load_cap, warm=warm,
                net_w=net_w, net_group=net_group, c_net=c_net, out_const=out_const)


def _placement_objective(phy: np.ndarray, sh: np.ndarray, counts: np.ndarray, T: np.ndarray | None, gpn: int,
                         cost: CostModel, current: Placement | None, G: int, S: int, E: int) -> float:
    p = Placement(num_gpus=G, slots_per_gpu=S, num_experts=E, phy2log=phy, shares=sh, meta={})
    return float(predicted_terms(p, counts, T, gpn, cost, current)["objective_us"])


# Node stage (:func:`_cluster_start`), tuning choices like the constants above (assumptions, not measured):
# share of the warm start's GPU-level headroom (busiest GPU minus mean) a node's mean GPU load may use. Half leaves
# the other half to the packing of the node's replicas onto its GPUs; a layer that then does not pack under its cap
# steps down to a quarter, then to none (node loads as even as the warm start's busiest GPU allows).
CLUSTER_HEADROOM = (0.5, 0.25, 0.0)
CLUSTER_RESTARTS = 4  # annealing runs (seeds 0..3); the one with the fewest crossings is kept
CLUSTER_STEPS = 1000  # swaps proposed per slot and layer (each slot gets about 2000 chances to move)
CLUSTER_PACK_S = 1.0  # most seconds for one node's packing MILP
CLUSTER_SHARE = 0.2  # share of the time limit for clustering and packing (and again, at most, for the repairs);
#                      the sweeps, which refine every layer with the full objective, keep the rest


def _cluster_start(counts: np.ndarray, T: np.ndarray, phy: np.ndarray, sh: np.ndarray, G: int, gpn: int, S: int,
                   cost: CostModel, warm_max: list[float], solver: str, gap_rel: float, threads: int,
                   limit_s: float, subs: list[SubResult],
                   objective: Callable[[np.ndarray, np.ndarray], float]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """MoETuner's first stage as a start for the flat sweeps: replicas to nodes by transitions, every layer at
    once (:func:`tuner.node_cluster.cluster_nodes`), then per layer and node one small MILP packing the node's
    replicas onto its GPUs under the layer's load cap ``warm_max[l]``: LPT, then :func:`improve_bins`, and only
    if that misses the cap a small MILP (min busiest GPU, even shares).

    Node loads are capped at ``gpn * (mean + h_l * (warm_max - mean))`` (``mean``: mean GPU load), leaving the
    rest of the warm start's headroom to the packing; ``h_l`` starts at ``CLUSTER_HEADROOM[0]`` and steps down the
    tuple for the layers that did not pack, and the clustering is run again, until every layer packs. A layer
    whose packing misses the cap keeps its current row (the caller re-solves it given its clustered neighbours).
    Returns the attempt with the most packed layers, then the lowest ``objective(phy2log, shares)``, as
    ``(phy2log [L, P], shares [L, P], packed [L] bool)``, or None if no layer packed. Replica counts are ``phy``'s.
    """
    from tuner.node_cluster import cluster_nodes, cross_node_tokens

    t0 = time.perf_counter()
    L, E = counts.shape
    N = G // gpn
    P = G * S
    slot_node = np.tile(np.arange(P) // (S * gpn), (L, 1))
    mean = counts.sum(axis=1) / G
    best_cand, best_key = None, (0, math.inf)
    step = np.zeros(L, dtype=np.int64)  # [L] index into CLUSTER_HEADROOM of each layer
    for _ in CLUSTER_HEADROOM:
        left = limit_s - (time.perf_counter() - t0)
        if left <= 0:
            break
        h = np.asarray(CLUSTER_HEADROOM)[step]
        node_cap = gpn * (mean + h * (np.asarray(warm_max) - mean))
        nodes, nodes_cross = None, math.inf
        for seed in range(CLUSTER_RESTARTS):
            cand = cluster_nodes(counts, T, phy, slot_node, N, node_cap, steps=CLUSTER_STEPS * L * P, seed=seed,
                                 time_limit_s=0.5 * left / CLUSTER_RESTARTS)
            cross = cross_node_tokens(phy, cand, T, E, N)
            if cross < nodes_cross:
                nodes, nodes_cross = cand, cross
        p_out, s_out = phy.copy(), sh.copy()
        packed = np.zeros(L, dtype=bool)
        for l in range(L):
            k = np.bincount(phy[l], minlength=E)
            rows_all: list[list[tuple[int, float]]] = []
            for n in range(N):
                experts_n, kn = np.unique(phy[l][nodes[l] == n], return_counts=True)
                iw = counts[l, experts_n] * kn / k[experts_n]  # the node's tokens of each of its experts
                sub = _node_gpu_sub(iw, kn, gpn, S, S, True, cost.us_per_token, load_cap=warm_max[l] * (1 + 1e-9))
                if sub.warm is not None:
                    sub.warm = improve_bins(iw, kn, sub.warm[0])
                    if float((iw @ sub.warm[1]).max()) <= warm_max[l]:
                        # the local search already meets the cap: no MILP needed (the sweeps refine the layer)
                        rows_all += _layer_rows(sub.warm[0], sub.warm[1], kn / k[experts_n], experts_n, S)
                        continue
                pack_left = limit_s - (time.perf_counter() - t0)
                pack_s = min(CLUSTER_PACK_S, max(0.1, pack_left / max(1, (L - l) * N - n)))
                y, x, _ = _timed_solve(sub, l, f"cluster[{n}]", len(experts_n) * gpn, solver, pack_s, gap_rel, threads,
                                       subs)
                rows = [] if y is None else _layer_rows(y, x, kn / k[experts_n], experts_n, S)
                if not rows:
                    rows_all = []
                    break
                rows_all += rows
            if not rows_all:
                continue
            p_new, s_new = _rows_to_arrays(rows_all, E)
            if _row_max_load(counts[l], p_new, s_new, S) <= warm_max[l] * (1 + 1e-6):
                p_out[l], s_out[l] = p_new, s_new
                packed[l] = True
        if packed.any():
            # the most packed layers first (a layer left unpacked keeps a row clustered for other neighbours),
            # then the lowest predicted time
            key = (-int(packed.sum()), objective(p_out, s_out))
            if key < best_key:
                best_cand, best_key = (p_out, s_out, packed), key
        if packed.all():
            break
        # a layer that did not pack gets less node headroom in the next attempt (the others keep theirs)
        step = np.where(packed, step, np.minimum(step + 1, len(CLUSTER_HEADROOM) - 1))
    return best_cand


def solve_ilp(counts: np.ndarray, transitions: np.ndarray | None, num_gpus: int, gpus_per_node: int,
              redundant_experts: int, cost: CostModel, *, warm_start: Placement, solver: str = "cbc",
              time_limit_s: float = 60.0, split: str = "even", hierarchical: bool | None = None,
              current: Placement | None = None, sweeps: int = 2, gap_rel: float = 0.02, threads: int = 1,
              cluster: bool | None = None, spread: bool = False,
              progress: Callable[[int, int, str], None] | None = None) -> ILPResult:
    """Place experts for every layer of ``counts [L, E]`` (transitions ``[L-1, E, E]`` between consecutive rows).

    Args:
        warm_start: a valid placement with ``E + redundant_experts`` slots (the best heuristic); layers the time
            limit leaves unsolved keep it, so a valid plan always comes back.
        hierarchical: nodes then GPUs; None = automatic (``E * G > FLAT_LIMIT`` and more than one node).
        cluster: start the flat sweeps from a joint node clustering (:func:`_cluster_start`); None = automatic
            (flat, more than one node, transitions given).
        current: placement now deployed; its replicas cost ``cost.us_per_moved_replica`` to move.
        spread: every expert's replicas on distinct nodes (as many as it has, up to N; ``split="even"`` only), the
            layout under which SGLang's nearest-replica rule splits evenly (``tuner.placers.node_spread``).
        progress: called as ``progress(done, total, text)`` after every subproblem.
    Raises:
        PlacementError (slot counts), SpecError (bad solver/split).
    """
    from moesim.errors import SpecError

    t0 = time.perf_counter()
    if solver not in SOLVERS:
        raise SpecError(f"ilp: solver: must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if split not in SPLITS:
        raise SpecError(f"ilp: split: must be one of {', '.join(SPLITS)}, got {split!r}")
    counts = np.asarray(counts, dtype=np.float64)
    L, E = counts.shape
    G = int(num_gpus)
    S = slots_per_gpu(E, redundant_experts, G, origin="ilp")
    gpn = min(int(gpus_per_node), G)
    N = G // gpn
    if hierarchical is None:
        hierarchical = N > 1 and E * G > FLAT_LIMIT
    hierarchical = bool(hierarchical and N > 1)
    if warm_start.num_physical != G * S or warm_start.num_layers != L:
        raise SpecError(f"ilp: warm_start: {warm_start.num_layers} x {warm_start.num_physical} slots, expected "
                        f"{L} x {G * S}")
    phy = warm_start.phy2log.astype(np.int64).copy()
    sh = warm_start.shares.astype(np.float64).copy()
    T = None if transitions is None else np.asarray(transitions, dtype=np.float64)
    node_of_gpu = np.arange(G) // gpn
    per_layer_subs = 2 if hierarchical else 1
    total = max(1, sweeps) * L * per_layer_subs
    done = 0
    last: dict[tuple[int, str], SubResult] = {}
    subs: list[SubResult] = []
    c_tok = cost.us_per_token
    held_cur = None
    if current is not None:
        held_cur = [held_matrix(current, min(l, current.num_layers - 1)) for l in range(L)]

    # busiest GPU of every layer in the warm start: the load cap of every later solve of that layer
    warm_max = [_row_max_load(counts[l], phy[l], sh[l], S) for l in range(L)]

    def budget_left() -> float:
        return time_limit_s - (time.perf_counter() - t0)

    # under spread (nearest-replica rules), the busiest NIC's network inbound is priced too
    net = spread and N > 1 and split == "even" and cost.us_per_nic_assignment > 0
    gpnic = max(1, min(int(cost.gpus_per_nic), gpn))
    nic_of_gpu = np.arange(G) // gpnic

    def layer_cost(l: int, prow: np.ndarray, srow: np.ndarray) -> float:
        """t_l with the neighbours' current rows: compute + crossings to both neighbours + moves (+ network)."""
        a = share_matrix(prow, srow, E, G, S)
        t = c_tok * float((counts[l] @ a).max())
        if net:
            t += cost.us_per_nic_assignment * float(nic_traffic(prow, counts[l], E, G, gpn, gpnic).max())
        if T is not None:
            for nb, tr in ((l - 1, T[l - 1].T if l > 0 else None), (l + 1, T[l] if l < L - 1 else None)):
                if tr is not None:
                    g_tok, n_tok = _crossings(tr, a, share_matrix(phy[nb], sh[nb], E, G, S), N)
                    t += cost.us_per_gpu_token * g_tok + cost.us_per_node_token * n_tok
        if held_cur is not None:
            t += cost.us_per_moved_replica * float((1.0 - held_cur[l][prow, np.arange(G * S) // S]).sum())
        return t

    def accept(l: int, p_new: np.ndarray, s_new: np.ndarray) -> bool:
        """Coordinate descent never makes a layer worse than its current row (e.g. the warm start), neither
        in predicted time nor in its busiest GPU's load."""
        if _row_max_load(counts[l], p_new, s_new, S) > warm_max[l] * (1 + 1e-6):
            return False
        if layer_cost(l, p_new, s_new) <= layer_cost(l, phy[l], sh[l]) * (1 + 1e-9):
            phy[l], sh[l] = p_new, s_new
            return True
        return False

    def layer_inputs(l: int) -> tuple[np.ndarray, ...]:
        """Layer l's subproblem data given the neighbours' current rows: ``cin [E, G]`` (co-location benefit of
        expert e's share on GPU g: transitions from the previous layer's experts on g and into the next layer's
        experts on g), ``tr_mass [E]`` (transitions into and out of each expert; their sum is the objective's
        constant), the current row as ``warm_a``/``warm_y`` ``[E, G]`` (shares, replicas), the replica counts
        (even split) and the move cost ``ycost [E, G]``."""
        cin, tr_mass = np.zeros((E, G)), np.zeros(E)
        if T is not None and l > 0:
            cin += T[l - 1].T @ share_matrix(phy[l - 1], sh[l - 1], E, G, S)
            tr_mass += T[l - 1].sum(axis=0)
        if T is not None and l < L - 1:
            cin += T[l] @ share_matrix(phy[l + 1], sh[l + 1], E, G, S)
            tr_mass += T[l].sum(axis=1)
        warm_a = share_matrix(phy[l], sh[l], E, G, S)
        warm_y = share_matrix(phy[l], np.ones(G * S), E, G, S)
        kcounts = np.bincount(phy[l], minlength=E) if split == "even" else None
        ycost = np.zeros((E, G)) if held_cur is None else cost.us_per_moved_replica * (1.0 - held_cur[l])
        return cin, tr_mass, warm_a, warm_y, kcounts, ycost

    def spread_ub(kcounts: np.ndarray | None) -> np.ndarray | None:
        """Replicas an expert may have on one node under ``spread``: 1 while it has at most N."""
        return None if not spread or kcounts is None else np.maximum(1, -(-kcounts // N))

    def net_weights(l: int, kcounts: np.ndarray | None) -> np.ndarray | None:
        """``[E]`` network inbound per unit share of expert e (:func:`nic_inbound` with its replicas spread)."""
        if not net or kcounts is None:
            return None
        return counts[l] * np.maximum(0, N - kcounts) / N

    def out_weights(l: int, kcounts: np.ndarray | None) -> tuple[np.ndarray | None, float]:
        """``(out_w [E], out_const)``: a NIC sends ``out_const - sum_e out_w[e] y_en`` (:func:`nic_outbound`,
        ``y_en`` e's replicas on its node, one under the spread; an expert with more replicas than nodes counts
        ``1 / ceil(k / N)`` per replica)."""
        if not net or kcounts is None:
            return None, 0.0
        scale = gpnic / G
        return counts[l] * scale / np.maximum(1, -(-kcounts // N)), float(counts[l].sum()) * scale

    def flat_step(l: int, sub_limit: float, label: str) -> SubResult:
        """One flat MILP for layer l given its neighbours; its solution replaces the row if :func:`accept`."""
        nonlocal done
        cin, tr_mass, warm_a, warm_y, kcounts, ycost = layer_inputs(l)
        node_ub = spread_ub(kcounts)
        out_w, out_c = out_weights(l, kcounts)
        # a warm start that breaks the spread is no MIP start
        spread_ok = node_ub is None or N == 1 or not (warm_y.reshape(E, N, gpn).sum(-1) > node_ub[:, None]).any()
        cin_node = cin.reshape(E, N, gpn).sum(-1)
        benefit = cost.us_per_gpu_token * cin + cost.us_per_node_token * cin_node[:, node_of_gpu]
        per_bin = S if split == "even" else 1
        warm_ok = spread_ok and warm_y.max() <= per_bin
        sub = _Sub(w=counts[l], slots=np.full(G, S), max_per_bin=per_bin, counts=kcounts, benefit=benefit,
                   # EPLB's packing may put two replicas of one expert on a GPU: allow what the warm
                   # start has, so that it stays feasible
                   ub=None if kcounts is None else np.maximum(-(-kcounts // G), warm_y.max(axis=1).astype(np.int64)),
                   ycost=ycost, c_tok=c_tok,
                   const=(cost.us_per_gpu_token + cost.us_per_node_token) * float(tr_mass.sum()),
                   blocks=[np.arange(G)], allowed=np.ones((E, G), bool), load_cap=warm_max[l] * (1 + 1e-9),
                   warm=(warm_y, warm_a) if warm_ok else None,
                   group_ub=None if node_ub is None or N == 1 else (node_of_gpu, node_ub),
                   net_w=net_weights(l, kcounts), net_group=nic_of_gpu, c_net=cost.us_per_nic_assignment,
                   out_w=out_w, out_group=node_of_gpu, out_const=out_c)
        y, x, r = _timed_solve(sub, l, "flat", E * G, solver, sub_limit, gap_rel, threads, subs)
        done += 1
        if progress:
            progress(done, total, f"layer {l + 1}/{L} {label}: {r.status}, gap {r.gap:.2%}")
        rows = [] if y is None else _layer_rows(y, x, np.ones(E), np.arange(E), S)
        if rows:
            accept(l, *_rows_to_arrays(rows, E))
            last[(l, "flat")] = r
        return r

    def hier_step(l: int, sub_limit: float, label: str) -> None:
        """Layer l in two stages given its neighbours: experts to nodes (one MILP), then per node its experts to
        its GPUs (one small MILP each); the result replaces the row if :func:`accept`."""
        nonlocal done
        cin, tr_mass, warm_a, warm_y, kcounts, ycost = layer_inputs(l)
        cin_node = cin.reshape(E, N, gpn).sum(-1)
        # ---- stage 1, experts -> nodes
        warm_yn = warm_y.reshape(E, N, gpn).sum(-1)
        warm_an = warm_a.reshape(E, N, gpn).sum(-1)
        held_node = None if held_cur is None else np.minimum(1.0, held_cur[l].reshape(E, N, gpn).sum(-1))
        ycost_n = np.zeros((E, N)) if held_node is None else cost.us_per_moved_replica * (1.0 - held_node)
        node_per_bin = gpn * S if split == "even" else gpn
        # candidate nodes per expert (keeps the MILP small): where the warm start has it, the NODE_CANDIDATES
        # nodes with the most co-location benefit, and every node for experts hot enough to need replicas
        allowed_n = warm_yn > 0
        top = np.argsort(-cin_node, axis=1, kind="stable")[:, :NODE_CANDIDATES]
        allowed_n[np.arange(E)[:, None], top] = True
        allowed_n[counts[l] > HOT_EXPERT_FACTOR * counts[l].sum() / (G * S)] = True
        node_ub = spread_ub(kcounts)
        nw = net_weights(l, kcounts)
        out_w, out_c = out_weights(l, kcounts)
        spread_ok = node_ub is None or not (warm_yn > node_ub[:, None]).any()  # else no MIP start
        sub_n = _Sub(w=counts[l], slots=np.full(N, S * gpn), max_per_bin=node_per_bin, counts=kcounts, ub=node_ub,
                     benefit=cost.us_per_node_token * cin_node, ycost=ycost_n, c_tok=c_tok,
                     gpu_target=float(counts[l].sum()) / G, gpus_per_bin=gpn,
                     const=cost.us_per_node_token * float(tr_mass.sum()), blocks=[np.arange(N)],
                     allowed=allowed_n, load_cap=float((counts[l] @ warm_an).max()) * (1 + 1e-9),
                     warm=(warm_yn, warm_an) if spread_ok and warm_yn.max() <= node_per_bin else None, min_share=0.0,
                     # a node's inbound over its gpn / gpnic NICs: the busiest NIC takes at least the mean
                     net_w=None if nw is None else nw * gpnic / gpn, c_net=cost.us_per_nic_assignment,
                     out_w=out_w, out_const=out_c)
        yn, xn, rn = _timed_solve(sub_n, l, "nodes", int(allowed_n.sum()), solver, HIER_NODE_SHARE * sub_limit,
                                  gap_rel, threads, subs)
        done += 1
        if progress:
            progress(done, total, f"layer {l + 1}/{L} {label} nodes: {rn.status}, gap {rn.gap:.2%}")
        if yn is None:
            return
        # a replica the node stage gave (almost) no tokens still occupies a slot: give it MIN_SHARE
        xn = np.where(yn > 0.5, np.maximum(xn, MIN_SHARE * yn), 0.0)
        xn /= xn.sum(axis=1, keepdims=True)
        # ---- stage 2, per node: its experts -> its GPUs
        rows_all: list[list[tuple[int, float]]] = []
        node_results: list[SubResult] = []
        for n in range(N):
            experts_n = np.nonzero(yn[:, n] > 0.5)[0]
            gs = np.arange(n * gpn, (n + 1) * gpn)
            xs = xn[experts_n, n]  # [n_items] the node's share of each of its experts
            # what the node's NICs send away is fixed by the node stage: a floor under the busiest NIC
            out_floor = 0.0 if out_w is None else out_c - float(out_w[experts_n] @ yn[experts_n, n])
            sub_g = _node_gpu_sub(counts[l, experts_n] * xs, yn[experts_n, n].astype(np.int64), gpn, S,
                                  S if split == "even" else 1, split == "even", c_tok,
                                  benefit=cost.us_per_gpu_token * cin[np.ix_(experts_n, gs)] * xs[:, None],
                                  ycost=ycost[np.ix_(experts_n, gs)],
                                  const=cost.us_per_gpu_token * float(tr_mass[experts_n] @ xs),
                                  net_w=None if nw is None else nw[experts_n] * xs,
                                  net_group=nic_of_gpu[gs] - nic_of_gpu[gs[0]], c_net=cost.us_per_nic_assignment,
                                  out_const=out_floor)
            node_limit = max(0.05, min((1 - HIER_NODE_SHARE) * sub_limit / N, budget_left() - 0.1))
            yg, xg, rg = _timed_solve(sub_g, l, f"gpus[{n}]", len(experts_n) * gpn, solver, node_limit, gap_rel,
                                      threads, subs)
            node_results.append(rg)
            rows = [] if yg is None else _layer_rows(yg, xg, xs, experts_n, S)
            if not rows:
                rows_all = []
                break
            rows_all += rows
        done += 1
        if progress:
            worst = max((r.gap for r in node_results), default=float("nan"))
            progress(done, total, f"layer {l + 1}/{L} {label} GPUs: worst node gap {worst:.2%}")
        if not rows_all:
            return
        accept(l, *_rows_to_arrays(rows_all, E))
        last[(l, "nodes")] = rn
        for n, rg in enumerate(node_results):
            last[(l, f"gpus[{n}]")] = rg

    if cluster is None:
        cluster = not hierarchical and N > 1 and T is not None and L > 1
    clustered = False
    if cluster and not hierarchical and T is not None and N > 1 and L > 1 and CLUSTER_SHARE * time_limit_s >= \
            MIN_SOLVE_S:
        def whole(p_: np.ndarray, s_: np.ndarray) -> float:
            return _placement_objective(p_, s_, counts, T, gpn, cost, current, G, S, E)

        cand = _cluster_start(counts, T, phy, sh, G, gpn, S, cost, warm_max, solver, gap_rel, threads,
                              CLUSTER_SHARE * time_limit_s, subs, whole)
        if cand is not None:
            backup = phy.copy(), sh.copy(), dict(last)
            obj_warm = whole(phy, sh)
            p_c, s_c, packed = cand
            phy[:], sh[:] = p_c, s_c
            # a layer that did not pack under its cap kept its row: re-solve it given its clustered neighbours
            repair = [l for l in range(L) if not packed[l]]
            total += len(repair)
            for i, l in enumerate(repair):
                if budget_left() < MIN_SOLVE_S:
                    break
                flat_step(l, max(0.1, min(0.5 * budget_left(), CLUSTER_SHARE * time_limit_s) / (len(repair) - i)),
                          "node-clustering repair")
            if whole(phy, sh) < obj_warm:  # adopted only if the whole plan's predicted time is lower
                clustered = True
            else:
                phy[:], sh[:] = backup[0], backup[1]
                last.clear()
                last.update(backup[2])
        if progress:
            progress(done, total, f"node clustering: {'adopted' if clustered else 'kept the warm start'}")

    stopped = False
    for sweep in range(max(1, sweeps)):
        for l in range(L):
            left = budget_left()
            if left < MIN_SOLVE_S:
                stopped = True
                break
            # the time left shared by the layers left in this sweep; a later sweep only uses what remains
            sub_limit = max(0.1, SWEEP_SHARE * left / (L - l))
            (hier_step if hierarchical else flat_step)(l, sub_limit, f"sweep {sweep + 1}")
        if stopped:
            break

    solved = list(last.values())
    meta = {"method": "ilp", "solver": solver, "split": split, "hierarchical": hierarchical}
    placement = Placement(num_gpus=G, slots_per_gpu=S, num_experts=E, phy2log=phy, shares=sh, meta=meta)
    placement.validate("ilp")
    terms = predicted_terms(placement, counts, T, gpn, cost, current, network=net)
    if solved:
        objs = np.array([r.objective for r in solved])
        bounds = np.array([r.bound for r in solved])
        gap = _gap(float(objs.sum()), float(bounds.sum())) if np.all(np.isfinite(bounds)) else float("nan")
        max_gap = max((r.gap for r in solved), default=float("nan"))
        n_rows = len({r.layer for r in solved})
        if n_rows < L:
            status = "partial"
        elif all(r.status == "optimal" for r in solved):
            status = "optimal"
        else:
            status = "time-limit"
    else:
        gap = max_gap = float("nan")
        status = "partial" if clustered else "warm-start"  # clustered: the node stage's packing, no MILP left
    return ILPResult(placement=placement, objective_us=terms["objective_us"], gap=gap, max_sub_gap=max_gap,
                     solve_s=time.perf_counter() - t0, status=status, solver=solver, hierarchical=hierarchical,
                     subproblems=subs, clustered=clustered)

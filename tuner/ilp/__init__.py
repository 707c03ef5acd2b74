"""MILP expert placement with replication (MoETuner-style), solved with PuLP (CBC or HiGHS: ``backends``).

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
See ``tuner.placers.ilp.cost_model``.

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

Node stage (flat solves on several nodes, :func:`tuner.ilp.node_start.cluster_start`): coordinate descent leaves
experts on their node when two layers would have to move together, so before the sweeps replicas are clustered onto
nodes by transitions, all layers at once (:mod:`tuner.node_cluster`, minimising the cross-node term under a node
load cap), packed onto each node's GPUs under ``M_warm(l)``, and the result replaces the warm start only if the
whole plan's predicted time (the objective above) is lower. The sweeps then refine it.

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


The package, a module per concern: ``objective`` (the prices and the objective of a whole placement), ``model``
(one subproblem as a MILP), ``backends`` (the solvers: a registry, one file each), ``packing`` (LPT and swap
packing, a layer's rows), ``node_start`` (the node-clustering start), ``search`` (the layer search,
:func:`solve_ilp`) and ``outcome`` (what a solve reports).
"""

from tuner.ilp.backends import BACKENDS, SOLVERS
from tuner.ilp.model import MIN_SHARE, Subproblem, packing_bound, solve_sub
from tuner.ilp.objective import (
    CostModel,
    held_matrix,
    moved_replicas,
    nic_inbound,
    nic_outbound,
    nic_traffic,
    node_inbound,
    predicted_terms,
    share_matrix,
)
from tuner.ilp.outcome import ILPResult, SubResult
from tuner.ilp.packing import greedy_bins, improve_bins
from tuner.ilp.search import FLAT_LIMIT, SPLITS, solve_ilp

__all__ = [
    "BACKENDS",
    "FLAT_LIMIT",
    "MIN_SHARE",
    "SOLVERS",
    "SPLITS",
    "CostModel",
    "ILPResult",
    "SubResult",
    "Subproblem",
    "greedy_bins",
    "held_matrix",
    "improve_bins",
    "moved_replicas",
    "nic_inbound",
    "nic_outbound",
    "nic_traffic",
    "node_inbound",
    "packing_bound",
    "predicted_terms",
    "share_matrix",
    "solve_ilp",
    "solve_sub",
]

"""The MILP placement (``tuner.ilp``): warm-started from the best baseline under the engine's rule, then refined
under SGLang's replica choice (``tuner.engine_refine``) when that is the engine. Its registry entry's ``place``
(the baselines of the registry, then :func:`solve`) lives with the registry, in ``tuner/placers/__init__.py``:
this file does not import the registry, so the family has no import cycle.

The objective's prices (:func:`cost_model`) come from the simulator's own compute model and the cluster's links.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from moesim.engine_dispatch import apply_engine
from moesim.errors import InfeasibleError, PlacementError
from moesim.placement import Placement, PlacementMethod, even_shares, slots_per_gpu
from tuner.bounds import network_load_bound
from tuner.engine_refine import refine
from tuner.ilp import CostModel, ILPResult, predicted_terms, solve_ilp
from tuner.nic_balance import balance, balance_cost
from tuner.placers.base import DEFAULT_AMORTISE_STEPS, Budget, recorded_layers
from tuner.placers.node_spread import spread_row

if TYPE_CHECKING:
    from moesim.specs import ClusterSpec, ModelSpec

# Share of the method's time spent refining under SGLang's replica choice (tuner.engine_refine, tuner.nic_balance),
# split over the MILP's plan, the warm start and the other spread candidate (static keeps a fifth of it for
# settling on its draw); the MILP gets the rest. 0.4, up from 0.2 once the NIC balancing came: on DeepSeek-V3 64
# GPUs the MILP kept the warm start on most layers within its time, and the balancing gave most of the objective's
# gain. A tuning choice
REFINE_SHARE = 0.4
# of each plan's refinement time, the share for the load alone (tuner.engine_refine) where the NICs are priced; the
# rest balances the load and the busiest NIC together (tuner.nic_balance). None: a load-only descent first left the
# balancing in a worse local optimum (DeepSeek-V3 zipf 0.9, 64 GPUs: objective 1.07e6 us after 0.3, 0.99e6 after 0)
LOAD_REFINE_SHARE = 0.0
# the warm-start candidate built like node-spread but with the replica counts of the joint load-and-network bound
# (tuner.bounds.network_load_bound)
NETWORK_REPLICAS = "node-spread, network replicas"
# the spread candidates refined under SGLang's rules besides the MILP's plan
SPREAD_CANDIDATES = (PlacementMethod.NODE_SPREAD.value, NETWORK_REPLICAS)


def bytes_per_token(model: ModelSpec, dtype_bytes: float = 2.0) -> float:
    """Hidden state sent and returned (dispatch + combine) per token crossing: ``2 * hidden * dtype_bytes``."""
    return 2.0 * model.hidden_size * dtype_bytes


def cost_model(
    model: ModelSpec,
    cluster: ClusterSpec,
    tokens_per_gpu: int,
    slots: int,
    amortise_steps: int = DEFAULT_AMORTISE_STEPS,
    weight_dtype_bytes: float = 2.0,
) -> CostModel:
    """Linear coefficients of the MILP objective (see ``tuner.ilp``), in microseconds.

    - ``us_per_token`` = d fused_moe_us / d tokens, a central difference at the mean GPU load
      ``T * k`` spread over ``S`` slots (``moesim.compute.fused_moe_us``, the simulator's own model). The step,
      +-10% of the mean, is a choice (an assumption): the roofline is piecewise (``BLOCK_SIZE_M`` padding, the
      compute/memory kink), and at the default 4096 tokens per GPU 10% of a slot's load (hundreds of tokens)
      spans several 64-token padding steps, so the slope is the trend, not one step's jump;
    - ``us_per_gpu_token`` = ``2 * hidden * 2 B / (G * intra_bw)``: one crossing's bytes over the aggregate
      intra-node bandwidth (``levels[0].bw_gb_s`` per GPU);
    - ``us_per_node_token`` = the same over the network (``levels[1].bw_gb_s`` per GPU), 0 on one node;
    - ``us_per_moved_replica`` = expert bytes over the slowest link, amortised over ``amortise_steps``;
    - ``us_per_nic_assignment`` = ``2 * hidden * 2 B / NIC bw``: one assignment the busiest NIC receives from other
      nodes (dispatch) and sends back (combine), 0 on one node; the NIC's bandwidth and the GPUs sharing it are
      the simulator's (``moesim.dispatch.link_classes``).
    """
    from moesim.compute import fused_moe_us
    from moesim.dispatch import link_classes

    gpu = cluster.gpu
    G = int(cluster.num_gpus)
    mean = float(tokens_per_gpu * model.top_k)
    hi = np.full(slots, 1.1 * mean / slots)
    lo = np.full(slots, 0.9 * mean / slots)
    args = (model.hidden_size, model.moe_intermediate_size, model.top_k, weight_dtype_bytes)
    slope = float((np.asarray(fused_moe_us(gpu, hi, *args)) - np.asarray(fused_moe_us(gpu, lo, *args))) / (0.2 * mean))
    bpt = bytes_per_token(model)
    intra = float(cluster.levels[0].bw_gb_s) * 1e3  # bytes per us per GPU
    c_gpu = bpt / (G * intra)
    c_node = 0.0
    if len(cluster.levels) > 1 and cluster.num_nodes > 1:
        c_node = bpt / (G * float(cluster.levels[1].bw_gb_s) * 1e3)
    slowest = min(float(lv.bw_gb_s) for lv in cluster.levels) * 1e3
    c_move = float(model.expert_weight_bytes(weight_dtype_bytes)) / slowest / max(1, amortise_steps)
    links = link_classes(cluster)
    c_nic = bpt / (links.nic_bw_gb_s * 1e3) if links.multi_node and links.nic_bw_gb_s > 0 else 0.0
    return CostModel(
        us_per_token=max(slope, 1e-9),
        us_per_gpu_token=c_gpu,
        us_per_node_token=c_node,
        us_per_moved_replica=c_move,
        bytes_per_token=bpt,
        us_per_nic_assignment=c_nic,
        gpus_per_nic=int(links.gpus_per_nic),
    )


@dataclass(frozen=True)
class IlpOutcome:
    """What the MILP method produced: ``placement`` (the MILP's plan, refined under the engine's rule),
    ``result`` (the MILP's own report: status, gaps, subproblems), the baseline it was warm-started from, and the
    refined candidates (``extra``: for a per-layer choice, not plans of their own); ``left_s``: refinement time the
    descents left unspent, which ``sglang-static``'s settling on the chosen plan's draw takes over; ``load_caps``:
    the refinement's per-layer load caps (:func:`eplb_load_caps`; None where it had none)."""

    placement: Placement
    result: ILPResult
    warm_name: str
    cost: CostModel
    solve_s: float
    refine_s: float
    extra: dict[str, Placement] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    left_s: float = 0.0
    load_caps: np.ndarray | None = None


def solve(
    counts: np.ndarray,
    transitions: np.ndarray | None,
    model: ModelSpec,
    cluster: ClusterSpec,
    redundant_experts: int,
    engine: str,
    budget: Budget,
    candidates: dict[str, Placement],
    *,
    layers: Sequence[int] | None = None,
) -> IlpOutcome:
    """The MILP warm-started from the candidate (a baseline with ``E + redundant_experts`` slots) with the
    lowest objective under ``engine``'s rule, then, under SGLang's rules, :data:`REFINE_SHARE` of the time
    refining both the MILP's plan and the warm start under the rule.

    Raises ``PlacementError`` (no candidate with the right slot count, ``current`` of another shape),
    ``InfeasibleError`` (no MILP incumbent within the limit).
    """
    counts = np.asarray(counts, dtype=np.float64)
    lay = recorded_layers(model, counts, layers)
    L, E = counts.shape
    G, gpn = int(cluster.num_gpus), int(cluster.gpus_per_node)
    S = slots_per_gpu(E, redundant_experts, G, origin="plan")
    current = budget.current
    if current is not None:
        if (current.num_gpus, current.slots_per_gpu, current.num_experts) != (G, S, E):
            raise PlacementError(
                f"--current: {current.num_gpus} GPUs x {current.slots_per_gpu} slots of "
                f"{current.num_experts} experts, but this plan has {G} x {S} of {E}"
            )
        if current.num_layers not in (1, L):
            raise PlacementError(f"--current: {current.num_layers} layer rows, the trace has {L}")
    cost = cost_model(model, cluster, budget.tokens_per_gpu, S, budget.amortise_steps)
    pool = {k: p for k, p in candidates.items() if p.slots_per_gpu == S}
    if not pool:
        raise PlacementError(f"plan: no baseline with {S} slots per GPU to warm-start the MILP from")

    priced = transitions if budget.dependency == "transitions" else None
    sglang = engine.startswith("sglang")  # nearest-replica rules: replica locality decides the network inbound

    def predicted_us(name: str) -> float:
        scored = apply_engine(pool[name], engine, gpn, model, lay)
        return predicted_terms(scored, counts, priced, gpn, cost, current, network=sglang)["objective_us"]

    # under SGLang's nearest-replica rule, replicas on distinct nodes split evenly and are local to more ranks
    spread = sglang and budget.split == "even"
    if spread and PlacementMethod.NODE_SPREAD.value in pool:
        # made for this rule (scoring the others would cost draws); its spread shares are even, so the objective
        # of the raw placement is the rule's. It takes EPLB's replica counts, which balance the load only: the
        # counts that reach the joint load-and-network bound are the other candidate
        warm_name = PlacementMethod.NODE_SPREAD.value
        if G > gpn and cost.us_per_nic_assignment > 0:
            *_, reps = network_load_bound(
                counts, G, gpn, S, cost.us_per_token, cost.us_per_nic_assignment, cost.gpus_per_nic
            )
            phy = np.stack([spread_row(counts[l], reps[l], G, gpn, S) for l in range(L)])
            name = NETWORK_REPLICAS
            pool[name] = Placement(G, S, E, phy, even_shares(phy, E), {"method": name})
            warm_name = min(
                (PlacementMethod.NODE_SPREAD.value, name),
                key=lambda n: predicted_terms(pool[n], counts, priced, gpn, cost, current, network=True)[
                    "objective_us"
                ],
            )
    else:
        warm_name = min(pool, key=predicted_us)
    # SGLang's rule splits replicas unevenly where the MILP assumes even shares: keep a share of the time to
    # refine the plan under the rule itself (tuner.engine_refine)
    refine_s = REFINE_SHARE * budget.time_limit_s if sglang else 0.0
    t0 = time.perf_counter()
    result = solve_ilp(
        counts,
        priced,
        G,
        gpn,
        redundant_experts,
        cost,
        warm_start=pool[warm_name],
        solver=budget.solver,
        time_limit_s=budget.time_limit_s - refine_s,
        split=budget.split,
        hierarchical=budget.hierarchical,
        current=current,
        sweeps=budget.sweeps,
        spread=spread,
        progress=budget.progress,
    )
    if result.status == "warm-start":
        raise InfeasibleError(
            f"ilp: no incumbent from {budget.solver} within --time-limit {budget.time_limit_s:g} s "
            f"(0 of {L} layers solved); raise the time limit"
        )
    notes: list[str] = []
    if result.status == "partial":
        notes.append(f"time limit reached: some layers keep the {warm_name} warm start")
    placement, extra, caps = result.placement, {}, None
    if refine_s > 0:
        if budget.progress is not None:
            budget.progress(0, 1, f"refining under {engine}")
        # the MILP's plan, its warm start, and the spread candidate it was not warm-started from: the raw
        # objective that chose the warm start says little of where the balancing ends (DeepSeek-V3 dirichlet:
        # the two spread candidates start 0.01% apart and end 4.5% apart)
        todo = [("ilp", result.placement), (warm_name, pool[warm_name])]
        todo += [(n, pool[n]) for n in SPREAD_CANDIDATES if spread and n in pool and n != warm_name]
        # static keeps a fifth for settling on its draw
        whole = (0.8 if engine == "sglang-static" else 1.0) * refine_s
        share = 1.0 / len(todo)
        # the load first, then (where the objective prices the NICs) the load and the busiest NIC together: a
        # descent on each candidate (it stops at a local optimum, mostly well inside its share), then the time
        # left on an iterated local search: of the candidate that ended lowest, or, for static, of the plan
        # chosen from them (the settling in tuner.plan)
        ratio = cost.nic_ratio if sglang else 0.0
        t_load = share * whole * (LOAD_REFINE_SHARE if ratio > 0 else 1.0)
        t_nic = share * whole - t_load
        caps = eplb_load_caps(pool, engine, gpn, model, lay, counts) if ratio > 0 else None
        t_refine = time.perf_counter()
        done: dict[str, tuple[Placement, int]] = {}
        for key, p in todo:
            p, n = refine(p, counts, gpn, t_load, spread=spread)
            p, m = balance(p, counts, gpn, ratio, cost.gpus_per_nic, time_limit_s=t_nic, load_caps=caps)
            done[key] = (p, n + m)
        left = max(0.0, whole - (time.perf_counter() - t_refine))
        # static: the settling searches the chosen plan itself (tuner.plan), against its draw
        if engine != "sglang-static" and ratio > 0 and G > gpn and left > 0:
            lowest = min(done, key=lambda k: balance_cost(done[k][0], counts, gpn, ratio, cost.gpus_per_nic, caps))
            p, m = balance(
                done[lowest][0], counts, gpn, ratio, cost.gpus_per_nic, time_limit_s=left, load_caps=caps, kicks=None
            )
            done[lowest] = (p, done[lowest][1] + m)
            notes.append(f"iterated local search on {'the MILP' if lowest == 'ilp' else lowest}'s for {left:.1f} s")
            left = 0.0
        swaps = []
        for key, (p, n) in done.items():
            swaps.append(f"{n} on {'the MILP' if key == 'ilp' else key}'s")
            if key == "ilp":
                placement = p
            else:
                extra[f"{key} refined"] = p
        notes.append(f"refined under {engine}'s replica choice: slot swaps {', '.join(swaps)}")
    return IlpOutcome(
        placement=placement,
        result=result,
        warm_name=warm_name,
        cost=cost,
        solve_s=time.perf_counter() - t0,
        refine_s=refine_s,
        extra=extra,
        notes=tuple(notes),
        left_s=left if refine_s > 0 else 0.0,
        load_caps=caps,
    )


def eplb_load_caps(
    pool: dict[str, Placement],
    engine: str,
    gpus_per_node: int,
    model: ModelSpec,
    layers: Sequence[int] | None,
    counts: np.ndarray,
) -> np.ndarray | None:
    """``[L]`` the least busiest-GPU load of the EPLB candidates in ``pool`` under ``engine``'s rule, layer by
    layer (None without one): the load the balancing may not exceed, so the plan's busiest GPU stays at or below
    the best EPLB's in every layer while it trades load for NIC traffic."""
    names = [n for n in pool if n.startswith(PlacementMethod.EPLB.value)]
    if not names:
        return None
    loads = [apply_engine(pool[n], engine, gpus_per_node, model, layers).gpu_loads(counts).max(axis=1) for n in names]
    return np.min(loads, axis=0)

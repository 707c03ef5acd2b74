"""Plan expert placement: baselines and the MILP, each evaluated with moesim's simulator and traffic accounting.

Dimension legend: L recorded MoE layers (the trace's), E logical experts, k top-k, G GPUs, S slots per GPU.

Counts are rescaled to one simulated step: every GPU holds ``T = tokens_per_gpu`` tokens, so a layer has
``T * G * k`` token-expert assignments (as in ``moesim.simulate``), and transitions ``[L-1, E, E]`` are scaled by
the same factor (each is one token choice going from expert i in layer l to expert j in layer l+1).

Rows compared (``PlanResult.rows``): ``method``, ``max_mean_load`` (busiest GPU's assignments / mean, the worst
layer), ``cross_gpu_bytes`` / ``cross_node_bytes`` (per step, over the recorded layer pairs: a transition whose
two experts sit on different GPUs / nodes moves the token's hidden state, dispatch plus combine, bf16),
``layer_latency_us`` (mean over the recorded layers of the simulated MoE-layer latency of the tail GPU),
``solve_s`` and ``gap`` (ILP only). Rows also carry ``predicted_us`` (the MILP objective of the placement) and
``mean_gpu_latency_us`` (the same mean over layers of the *mean* GPU's simulated latency, what the placement would
take with its work spread perfectly evenly; the benchmark's balanced floor), so no caller simulates a plan again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from moesim.placement import Placement, check_memory, contiguous, slots_per_gpu
from tuner.baselines import round_robin
from tuner.eplb import eplb_placement
from tuner.ilp import CostModel, ILPResult, predicted_terms, solve_ilp

if TYPE_CHECKING:
    from moesim.specs import ClusterSpec, ModelSpec
    from moesim.trace import RoutingTrace

ROW_KEYS = ("method", "max_mean_load", "cross_gpu_bytes", "cross_node_bytes", "layer_latency_us", "solve_s", "gap")

# Replica moves are a one-off cost; spread it over this many steps to compare with per-step time. SGLang's
# dynamic EPLB rebalances every ``--eplb-rebalance-num-iterations`` forward passes, default 1000
# (``ServerArgs.eplb_rebalance_num_iterations``, python/sglang/srt/server_args.py), so a placement is assumed to
# stay deployed that long; a longer-lived plan makes moves cheaper (pass ``amortise_steps``).
DEFAULT_AMORTISE_STEPS = 1000


def bytes_per_token(model: ModelSpec, dtype_bytes: float = 2.0) -> float:
    """Hidden state sent and returned (dispatch + combine) per token crossing: ``2 * hidden * dtype_bytes``."""
    return 2.0 * model.hidden_size * dtype_bytes


def scaled_routing(trace: RoutingTrace, num_gpus: int, tokens_per_gpu: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``counts [L, E]`` and ``transitions [L-1, E, E]`` rescaled to ``tokens_per_gpu * G * k`` per layer."""
    counts = np.asarray(trace.counts, dtype=np.float64)
    scale = tokens_per_gpu * num_gpus * trace.top_k / counts.sum(axis=1)  # [L]
    scaled = counts * scale[:, None]
    tr = None
    if trace.transitions is not None and counts.shape[0] > 1:
        tr = np.asarray(trace.transitions, dtype=np.float64) * scale[:-1, None, None]
    return scaled, tr


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
    - ``us_per_moved_replica`` = expert bytes over the slowest link, amortised over ``amortise_steps``.
    """
    from moesim.compute import fused_moe_us

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
    return CostModel(
        us_per_token=max(slope, 1e-9),
        us_per_gpu_token=c_gpu,
        us_per_node_token=c_node,
        us_per_moved_replica=c_move,
        bytes_per_token=bpt,
    )


def _eplb(model: ModelSpec, cluster: ClusterSpec, counts: np.ndarray, redundant_experts: int, origin: str) -> Placement:
    """The EPLB-equivalent placement with the model's expert groups and the cluster's nodes (as SGLang calls
    EPLB), checked against GPU memory (``PlacementError``)."""
    p = eplb_placement(
        counts,
        int(cluster.num_gpus),
        redundant_experts,
        num_groups=max(1, int(model.n_group)),
        num_nodes=int(cluster.num_nodes),
    )
    check_memory(p, model, cluster.gpu, origin=origin)
    return p


@dataclass
class PlanResult:
    rows: list[dict[str, Any]]
    placements: dict[str, Placement]
    ilp: ILPResult | None
    best: Placement  # the ILP's plan, with meta filled for the file header
    cost: CostModel
    notes: list[str] = field(default_factory=list)


def evaluate(
    placement: Placement,
    model: ModelSpec,
    cluster: ClusterSpec,
    trace: RoutingTrace,
    counts: np.ndarray,
    transitions: np.ndarray | None,
    cost: CostModel,
    tokens_per_gpu: int,
    method: str,
    solve_s: float = 0.0,
    gap: float | None = None,
    calibration: Any | None = None,
) -> dict[str, Any]:
    """One comparison row (see the module docstring), from one simulation of ``placement``."""
    from moesim.simulate import SimOptions, simulate

    loads = placement.gpu_loads(counts)
    terms = predicted_terms(placement, counts, transitions, int(cluster.gpus_per_node), cost)
    step = simulate(
        model,
        cluster,
        trace,
        placement,
        SimOptions(tokens_per_gpu=tokens_per_gpu, check_memory=False),
        calibration=calibration,
    )
    return {
        "method": method,
        "max_mean_load": float((loads.max(axis=1) / loads.mean(axis=1)).max()),
        "cross_gpu_bytes": terms["cross_gpu_tokens"] * cost.bytes_per_token,
        "cross_node_bytes": terms["cross_node_tokens"] * cost.bytes_per_token,
        "layer_latency_us": float(np.mean([la.latency_us for la in step.layers])),
        "solve_s": float(solve_s),
        "gap": None if gap is None or not np.isfinite(gap) else float(gap),
        "predicted_us": terms["objective_us"],
        "mean_gpu_latency_us": float(np.mean([np.mean(la.gpu_latency_us) for la in step.layers])),
    }


def plan(
    model: ModelSpec,
    cluster: ClusterSpec,
    trace: RoutingTrace,
    *,
    redundant_experts: int = 0,
    solver: str = "cbc",
    time_limit_s: float = 60.0,
    current: Placement | None = None,
    hierarchical: bool | None = None,
    split: str = "even",
    tokens_per_gpu: int = 4096,
    trace_name: str = "",
    sweeps: int = 2,
    amortise_steps: int = DEFAULT_AMORTISE_STEPS,
    progress: Callable[[int, int, str], None] | None = None,
    calibration: Any | None = None,
) -> PlanResult:
    """Run contiguous, round-robin, EPLB-equivalent and the MILP; evaluate each (simulated with
    ``calibration``, a :class:`moesim.calibration.Calibration` or None).

    Raises:
        TraceError (trace of another model), PlacementError (slots do not divide, more experts than slots,
        memory exceeded, ``current`` of another shape), InfeasibleError (no ILP incumbent within the limit).
    """
    from moesim.errors import InfeasibleError, PlacementError

    trace.check_model(model, trace_name or getattr(trace, "source", "") or "trace")
    G = int(cluster.num_gpus)
    E = int(model.num_experts)
    L = len(trace.layers)
    S = slots_per_gpu(E, redundant_experts, G, origin="plan")
    counts, transitions = scaled_routing(trace, G, tokens_per_gpu)
    cost = cost_model(model, cluster, tokens_per_gpu, S, amortise_steps)
    notes: list[str] = []

    placements: dict[str, Placement] = {}
    base_ok = E % G == 0
    if base_ok:
        placements["contiguous"] = contiguous(E, G, L)
        placements["round-robin"] = round_robin(E, G, L)
    else:
        notes.append(f"contiguous and round-robin need E % G == 0 ({E} experts, {G} GPUs): skipped")
    placements["eplb"] = _eplb(model, cluster, counts, redundant_experts, "plan")

    if current is not None:
        if current.num_physical != G * S or current.num_experts != E:
            raise PlacementError(
                f"--current: {current.num_gpus} GPUs x {current.slots_per_gpu} slots of "
                f"{current.num_experts} experts, but this plan has {G} x {S} of {E}"
            )
        if current.num_layers not in (1, L):
            raise PlacementError(f"--current: {current.num_layers} layer rows, the trace has {L}")

    # warm start: the heuristic with the right slot count and the lowest predicted objective
    candidates = {k: p for k, p in placements.items() if p.slots_per_gpu == S}
    gpn = int(cluster.gpus_per_node)

    def predicted_us(name: str) -> float:
        return predicted_terms(candidates[name], counts, transitions, gpn, cost, current)["objective_us"]

    warm_name = min(candidates, key=predicted_us)
    t0 = time.perf_counter()
    result = solve_ilp(
        counts,
        transitions,
        G,
        gpn,
        redundant_experts,
        cost,
        warm_start=candidates[warm_name],
        solver=solver,
        time_limit_s=time_limit_s,
        split=split,
        hierarchical=hierarchical,
        current=current,
        sweeps=sweeps,
        progress=progress,
    )
    solve_s = time.perf_counter() - t0
    if result.status == "warm-start":
        raise InfeasibleError(
            f"ilp: no incumbent from {solver} within --time-limit {time_limit_s:g} s "
            f"(0 of {L} layers solved); raise the time limit"
        )
    if result.status == "partial":
        notes.append(f"time limit reached: some layers keep the {warm_name} warm start")
    placements["ilp"] = result.placement

    rows = [
        evaluate(
            p,
            model,
            cluster,
            trace,
            counts,
            transitions,
            cost,
            tokens_per_gpu,
            name,
            *((solve_s, result.gap) if name == "ilp" else (0.0, None)),
            calibration=calibration,
        )
        for name, p in placements.items()
    ]
    ilp_row = rows[-1]
    predicted = {k: ilp_row[k] for k in ROW_KEYS if k != "method"}
    predicted.update(
        {
            "objective_us": result.objective_us,
            "status": result.status,
            "max_sub_gap": None if not np.isfinite(result.max_sub_gap) else result.max_sub_gap,
            "warm_start": warm_name,
        }
    )
    best = result.placement.with_meta(
        model=model.slug,
        cluster=cluster.slug,
        trace=trace_name or trace.source,
        method=f"ilp ({solver}, {split} shares{', hierarchical' if result.hierarchical else ''})",
        layers=[int(x) for x in trace.layers],
        predicted=predicted,
        redundant_experts=int(redundant_experts),
    )
    return PlanResult(rows=rows, placements=placements, ilp=result, best=best, cost=cost, notes=notes)


def place(
    method: str,
    model: ModelSpec,
    cluster: ClusterSpec,
    trace: RoutingTrace,
    *,
    redundant_experts: int = 0,
    solver: str = "cbc",
    time_limit_s: float = 60.0,
    split: str = "even",
    hierarchical: bool | None = None,
    tokens_per_gpu: int = 4096,
) -> Placement:
    """One placement over the trace's layers, without the comparison: ``method`` is ``contiguous``,
    ``round_robin``, ``eplb`` or ``ilp`` (for ``moesim whatif`` and scripts).

    Raises:
        SpecError (unknown method, replicas asked of a baseline that has none), PlacementError, TraceError,
        InfeasibleError as :func:`plan`.
    """
    from moesim.errors import InfeasibleError, SpecError

    G, E, L = int(cluster.num_gpus), int(model.num_experts), len(trace.layers)
    if method in ("contiguous", "round_robin", "round-robin"):
        if redundant_experts:
            raise SpecError(f"placement: redundant_experts: {method} has no replicas; use eplb or ilp")
        return contiguous(E, G, L) if method == "contiguous" else round_robin(E, G, L)
    if method not in ("eplb", "ilp"):
        raise SpecError(f"placement: method: must be contiguous, round_robin, eplb or ilp, got {method!r}")
    trace.check_model(model, getattr(trace, "source", "") or "trace")
    S = slots_per_gpu(E, redundant_experts, G, origin="placement")
    counts, transitions = scaled_routing(trace, G, tokens_per_gpu)
    eplb = _eplb(model, cluster, counts, redundant_experts, "placement")
    if method == "eplb":
        return eplb
    cost = cost_model(model, cluster, tokens_per_gpu, S)
    res = solve_ilp(
        counts,
        transitions,
        G,
        int(cluster.gpus_per_node),
        redundant_experts,
        cost,
        warm_start=eplb,
        solver=solver,
        time_limit_s=time_limit_s,
        split=split,
        hierarchical=hierarchical,
    )
    if res.status == "warm-start":
        raise InfeasibleError(f"ilp: no incumbent from {solver} within {time_limit_s:g} s; raise the time limit")
    return res.placement.with_meta(
        gap=None if not np.isfinite(res.gap) else res.gap,
        solve_s=res.solve_s,
        status=res.status,
        layers=[int(x) for x in trace.layers],
    )

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
take with its work spread perfectly evenly; the benchmark's balanced floor), ``layer_latencies_us`` and
``layer_max_mean`` (per recorded layer), so no caller simulates a plan again. Every row is scored under one engine
dispatch rule (:mod:`moesim.engine_dispatch`): the shares it gives the placement set the loads, the crossings and
the simulation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from moesim.engine_dispatch import apply_engine
from moesim.placement import Placement, check_memory, contiguous, slots_per_gpu
from tuner.baselines import round_robin
from tuner.engine_refine import refine, settle_static
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
# Share of the time limit spent refining under SGLang's replica choice (tuner.engine_refine), half on the MILP's
# plan and half on the warm start's (each 3/5 on the expected shares, 2/5 on static's draw); the MILP gets the
# rest.
REFINE_SHARE = 0.2


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


def _eplb(
    model: ModelSpec,
    cluster: ClusterSpec,
    counts: np.ndarray,
    redundant_experts: int,
    origin: str,
    hierarchical: bool | None = None,
) -> Placement:
    """The EPLB-equivalent placement with the model's expert groups and the cluster's nodes (as SGLang calls
    EPLB: hierarchical when the groups divide over the nodes; ``hierarchical=False`` forces the global policy),
    checked against GPU memory (``PlacementError``). ``meta["method"]`` says which policy ran."""
    p = eplb_placement(
        counts,
        int(cluster.num_gpus),
        redundant_experts,
        num_groups=max(1, int(model.n_group)),
        num_nodes=int(cluster.num_nodes),
        hierarchical=hierarchical,
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
    engine: str = "placement",
) -> dict[str, Any]:
    """One comparison row (see the module docstring), from one simulation of ``placement`` under ``engine``'s
    dispatch rule (its shares set the loads and crossings; the simulator also sends each rank's tokens by the
    rule's per-rank split)."""
    from moesim.simulate import SimOptions, simulate

    gpn = int(cluster.gpus_per_node)
    scored = apply_engine(placement, engine, gpn, model, trace.layers)
    loads = scored.gpu_loads(counts)
    terms = predicted_terms(scored, counts, transitions, gpn, cost)
    step = simulate(
        model,
        cluster,
        trace,
        placement,
        SimOptions(tokens_per_gpu=tokens_per_gpu, check_memory=False, engine=engine),
        calibration=calibration,
    )
    return {
        "method": method,
        "max_mean_load": float((loads.max(axis=1) / loads.mean(axis=1)).max()),
        "layer_max_mean": [float(x) for x in loads.max(axis=1) / loads.mean(axis=1)],
        "cross_gpu_bytes": terms["cross_gpu_tokens"] * cost.bytes_per_token,
        "cross_node_bytes": terms["cross_node_tokens"] * cost.bytes_per_token,
        "layer_latency_us": float(np.mean([la.latency_us for la in step.layers])),
        "solve_s": float(solve_s),
        "gap": None if gap is None or not np.isfinite(gap) else float(gap),
        "predicted_us": terms["objective_us"],
        "mean_gpu_latency_us": float(np.mean([np.mean(la.gpu_latency_us) for la in step.layers])),
        "layer_latencies_us": [float(la.latency_us) for la in step.layers],
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
    engine: str = "placement",
) -> PlanResult:
    """Run contiguous, round-robin, EPLB (hierarchical where it applies, and global) and the MILP; evaluate
    each (simulated with ``calibration``, a :class:`moesim.calibration.Calibration` or None) with the replica
    shares ``engine``'s dispatch rule gives it (:mod:`moesim.engine_dispatch`).

    The plan is never worse than a baseline: the warm start is the baseline with the lowest objective under
    the rule, and each layer of the MILP's plan whose simulated latency is above a baseline's takes that
    baseline's layer instead (without ``current``, where moves would make layers depend on each other).

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
    eplb = _eplb(model, cluster, counts, redundant_experts, "plan")
    placements[eplb.meta["method"]] = eplb
    if eplb.meta["method"] != "eplb-global":
        placements["eplb-global"] = _eplb(model, cluster, counts, redundant_experts, "plan", hierarchical=False)

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
        scored = apply_engine(candidates[name], engine, gpn, model, trace.layers)
        return predicted_terms(scored, counts, transitions, gpn, cost, current)["objective_us"]

    warm_name = min(candidates, key=predicted_us)
    # SGLang's rule splits replicas unevenly where the MILP assumes even shares: keep a share of the time to
    # refine the plan under the rule itself (tuner.engine_refine)
    refine_s = REFINE_SHARE * time_limit_s if engine.startswith("sglang") else 0.0
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
        time_limit_s=time_limit_s - refine_s,
        split=split,
        hierarchical=hierarchical,
        current=current,
        sweeps=sweeps,
        progress=progress,
    )
    if result.status == "warm-start":
        raise InfeasibleError(
            f"ilp: no incumbent from {solver} within --time-limit {time_limit_s:g} s "
            f"(0 of {L} layers solved); raise the time limit"
        )
    if result.status == "partial":
        notes.append(f"time limit reached: some layers keep the {warm_name} warm start")
    placements["ilp"] = result.placement
    extra: dict[str, Placement] = {}  # candidates for the per-layer choice that are not rows of their own
    static = engine == "sglang-static"
    if refine_s > 0:
        if progress is not None:
            progress(0, 1, f"refining under {engine}")
        swaps = []
        share = 0.4 if static else 0.5  # static keeps a fifth for settling on its draw (below)
        for name, start in (("ilp", result.placement), (f"{warm_name} refined", candidates[warm_name])):
            refined, n = refine(start, counts, gpn, share * refine_s)
            (placements if name == "ilp" else extra)[name] = refined
            swaps.append(n)
        notes.append(
            f"refined under {engine}'s replica choice: {swaps[0]} slot swaps on the MILP's plan, "
            f"{swaps[1]} on {warm_name}'s"
        )
    solve_s = time.perf_counter() - t0

    def row(p: Placement, name: str) -> dict[str, Any]:
        timing = (solve_s, result.gap) if name == "ilp" else (0.0, None)
        return evaluate(
            p,
            model,
            cluster,
            trace,
            counts,
            transitions,
            cost,
            tokens_per_gpu,
            name,
            *timing,
            calibration=calibration,
            engine=engine,
        )

    rows = [row(p, name) for name, p in placements.items()]
    if current is None:
        pool = dict(placements)
        pool.update(extra)
        pool_rows = rows + [row(p, name) for name, p in extra.items()]
        kept = _keep_better_layers(pool, pool_rows, S)
        if kept or (static and refine_s > 0):
            t1 = time.perf_counter()
            mixed = _layerwise(pool, kept, result.placement.meta) if kept else placements["ilp"]
            if static and refine_s > 0:
                # static's draw runs over the whole map, so mixing layers redraws them: settle on the mix's
                # own draw (swaps that change no draw), then keep it only if it beats every whole candidate
                mixed, m = settle_static(mixed, counts, gpn, model, trace.layers, time_limit_s=0.2 * refine_s)
                notes.append(f"settled on SGLang's static draw: {m} swaps of single-replica experts")
            solve_s += time.perf_counter() - t1
            mixed_row = row(mixed, "ilp")
            same_slots = [r for r in pool_rows if pool[r["method"]].slots_per_gpu == S]
            best_row = min(same_slots, key=lambda r: r["layer_latency_us"])
            if mixed_row["layer_latency_us"] <= best_row["layer_latency_us"]:
                placements["ilp"], rows[-1] = mixed, mixed_row
                if kept:
                    took = ", ".join(f"{n} layers from {m}" for m, n in sorted(_tally(kept).items()))
                    notes.append(f"under {engine}, some layers of the MILP's plan lost to another's: {took}")
            elif best_row["method"] != "ilp":
                placements["ilp"] = pool[best_row["method"]]
                rows[-1] = row(placements["ilp"], "ilp")
                notes.append(f"under {engine}, {best_row['method']} beat the MILP's plan: the plan is its placement")
    ilp_row = rows[-1]
    predicted = {k: ilp_row[k] for k in ROW_KEYS if k != "method"}
    predicted.update(
        {
            "objective_us": result.objective_us,
            "status": result.status,
            "max_sub_gap": None if not np.isfinite(result.max_sub_gap) else result.max_sub_gap,
            "warm_start": warm_name,
            "engine": engine,
        }
    )
    best = placements["ilp"].with_meta(
        model=model.slug,
        cluster=cluster.slug,
        trace=trace_name or trace.source,
        method=f"ilp ({solver}, {split} shares{', hierarchical' if result.hierarchical else ''})",
        layers=[int(x) for x in trace.layers],
        predicted=predicted,
        redundant_experts=int(redundant_experts),
    )
    return PlanResult(rows=rows, placements=placements, ilp=result, best=best, cost=cost, notes=notes)


def _keep_better_layers(placements: dict[str, Placement], rows: list[dict[str, Any]], slots: int) -> list[str]:
    """Per recorded layer, the method whose simulated layer latency is lowest among the MILP (listed last) and
    the baselines with the same slot count, the MILP winning ties; ``[]`` when the MILP wins every layer."""
    lat = {r["method"]: np.asarray(r["layer_latencies_us"]) for r in rows}
    names = ["ilp"] + [n for n, p in placements.items() if n != "ilp" and p.slots_per_gpu == slots]
    table = np.stack([lat[n] for n in names])  # [methods, L]
    pick = np.argmin(table, axis=0)  # first minimum: the MILP on ties
    return [] if not pick.any() else [names[i] for i in pick]


def _layerwise(placements: dict[str, Placement], pick: list[str], meta: dict[str, Any]) -> Placement:
    """One placement whose layer ``l`` is ``placements[pick[l]]``'s."""
    first = placements[pick[0]]
    phy = np.stack([placements[m].phy2log[layer] for layer, m in enumerate(pick)])
    shares = np.stack([placements[m].shares[layer] for layer, m in enumerate(pick)])
    return Placement(first.num_gpus, first.slots_per_gpu, first.num_experts, phy, shares, dict(meta or {}))


def _tally(pick: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in pick:
        if m != "ilp":
            out[m] = out.get(m, 0) + 1
    return out


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

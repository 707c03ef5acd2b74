"""Plan expert placement: baselines and the MILP, each evaluated with moesim's simulator and traffic accounting.

Dimension legend: L recorded MoE layers (the trace's), E logical experts, k top-k, G GPUs, S slots per GPU.

Counts are rescaled to one simulated step: every GPU holds ``T = tokens_per_gpu`` tokens, so a layer has
``T * G * k`` token-expert assignments (as in ``moesim.simulate``), and transitions ``[L-1, E, E]`` are scaled by
the same factor (each is one token choice going from expert i in layer l to expert j in layer l+1).

Rows compared (``PlanResult.rows``): ``method``, ``max_mean_load`` (busiest GPU's assignments / mean, the worst
layer), ``cross_gpu_bytes`` / ``cross_node_bytes`` (per step over the recorded layers, the simulator's dispatch
plus combine bytes that leave their GPU / cross nodes, each rank sending by the engine rule),
``transition_crossings`` (MoETuner's metric: transitions between consecutive recorded layers whose experts sit on
different GPUs / nodes; traffic only under ``dependency="transitions"``), ``layer_latency_us`` (mean over the
recorded layers of the simulated MoE-layer latency of the tail GPU),
``solve_s`` (ILP only) and ``gap``: ``(predicted_us - bound) / predicted_us`` with ``bound`` a lower bound on the
objective valid for every placement and replica split (``tuner.bounds``), so how far above optimal the row is,
at most (the MILP's subproblem gaps, given their neighbours, are ``sub_gap`` and ``max_sub_gap`` in the plan's
``predicted`` header). Rows also carry ``predicted_us`` (the MILP objective of the placement) and
``mean_gpu_latency_us`` (the same mean over layers of the *mean* GPU's simulated latency, what the placement would
take with its work spread perfectly evenly; the benchmark's balanced floor), ``layer_latencies_us`` and
``layer_max_mean`` (per recorded layer), so no caller simulates a plan again. Every row is scored under one engine
dispatch rule (:mod:`moesim.engine_dispatch`): the shares it gives the placement set the loads, the crossings and
the simulation.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from moesim.engine_dispatch import apply_engine
from moesim.placement import Placement, PlacementMethod, check_slots_memory, slots_per_gpu
from tuner.bounds import gap as bound_gap
from tuner.bounds import objective_bound
from tuner.engine_refine import settle_static
from tuner.ilp import CostModel, ILPResult, predicted_terms
from tuner.nic_balance import balance
from tuner.placers import Budget, compared
from tuner.placers import ilp as ilp_method
from tuner.placers import place as place_with
from tuner.placers.base import DEFAULT_AMORTISE_STEPS
from tuner.placers.ilp import REFINE_SHARE, bytes_per_token, cost_model

if TYPE_CHECKING:
    from moesim.compute import EfficiencyModel
    from moesim.specs import ClusterSpec, ModelSpec
    from moesim.traces.trace import RoutingTrace

# --time-limit covers the whole plan. After the MILP method come ROWS_AFTER simulations (its row, the two refined
# spread candidates', the per-layer mix's), each timed like a baseline's; the static rule's settling takes
# SETTLE_SHARE of the refinement time; the method never gets less than MIN_METHOD_SHARE of the limit (the plan then
# runs over, and says so). Tuning choices (assumptions), not measured elsewhere.
ROWS_AFTER = 4
SETTLE_SHARE = 0.2
MIN_METHOD_SHARE = 0.25

ROW_KEYS = ("method", "max_mean_load", "cross_gpu_bytes", "cross_node_bytes", "layer_latency_us", "solve_s", "gap")

# the objective's prices and constants live with the MILP method (tuner.placers.ilp); re-exported here
__all__ = [
    "DEFAULT_AMORTISE_STEPS",
    "REFINE_SHARE",
    "ROW_KEYS",
    "PlanResult",
    "bytes_per_token",
    "cost_model",
    "evaluate",
    "place",
    "plan",
    "scaled_routing",
]


def scaled_routing(trace: RoutingTrace, num_gpus: int, tokens_per_gpu: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``counts [L, E]`` and ``transitions [L-1, E, E]`` rescaled to ``tokens_per_gpu * G * k`` per layer."""
    counts = np.asarray(trace.counts, dtype=np.float64)
    scale = tokens_per_gpu * num_gpus * trace.top_k / counts.sum(axis=1)  # [L]
    scaled = counts * scale[:, None]
    tr = None
    if trace.transitions is not None and counts.shape[0] > 1:
        tr = np.asarray(trace.transitions, dtype=np.float64) * scale[:-1, None, None]
    return scaled, tr


@dataclass
class PlanResult:
    rows: list[dict[str, Any]]
    placements: dict[str, Placement]
    ilp: ILPResult | None
    best: Placement  # the ILP's plan, with meta filled for the file header
    cost: CostModel
    notes: list[str] = field(default_factory=list)
    bound: dict[str, Any] = field(default_factory=dict)  # tuner.bounds.objective_bound: valid for every plan


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
    calibration: EfficiencyModel | None = None,
    engine: str = "placement",
    dependency: str = "home",
) -> dict[str, Any]:
    """One comparison row (see the module docstring), from one simulation of ``placement`` under ``engine``'s
    dispatch rule (its shares set the loads and crossings; the simulator also sends each rank's tokens by the
    rule's per-rank split)."""
    from moesim.options import SimOptions
    from moesim.simulate import simulate

    gpn = int(cluster.gpus_per_node)
    scored = apply_engine(placement, engine, gpn, model, trace.layers)
    loads = scored.gpu_loads(counts)
    terms = predicted_terms(scored, counts, transitions, gpn, cost, network=engine.startswith("sglang"))
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
        # what the simulator sends: dispatch + combine bytes leaving their GPU / crossing nodes, per step
        "cross_gpu_bytes": float(sum(la.nvlink_bytes + la.network_bytes for la in step.layers)),
        "cross_node_bytes": float(sum(la.network_bytes for la in step.layers)),
        "transition_crossings": [terms["cross_gpu_tokens"], terms["cross_node_tokens"]],
        "layer_latency_us": float(np.mean([la.latency_us for la in step.layers])),
        "solve_s": float(solve_s),
        "gap": None if gap is None or not np.isfinite(gap) else float(gap),
        # the MILP's objective: compute, plus the transitions crossing GPUs and nodes where they are traffic
        "predicted_us": terms["objective_us"]
        if dependency == "transitions"
        else terms["compute_us"] + cost.us_per_nic_assignment * terms["nic_traffic"],
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
    calibration: EfficiencyModel | None = None,
    engine: str = "placement",
    dependency: str = "home",
    weight_bytes: float = 2.0,
) -> PlanResult:
    """Run contiguous, round-robin, EPLB (hierarchical where it applies, and global) and the MILP; evaluate
    each (simulated with ``calibration``, a :class:`moesim.calibration.model.Calibration` or None) with the replica
    shares ``engine``'s dispatch rule gives it (:mod:`moesim.engine_dispatch`).

    The plan is never worse than a baseline: the warm start is the baseline with the lowest objective under
    the rule, and each layer of the MILP's plan whose simulated latency is above a baseline's takes that
    baseline's layer instead (without ``current``, where moves would make layers depend on each other).

    Raises:
        TraceError (trace of another model), PlacementError (slots do not divide, more experts than slots,
        memory exceeded, ``current`` of another shape), InfeasibleError (no ILP incumbent within the limit).
    """
    trace.check_model(model, trace_name or getattr(trace, "source", "") or "trace")
    G = int(cluster.num_gpus)
    E = int(model.num_experts)
    S = slots_per_gpu(E, redundant_experts, G, origin="plan")
    # before any work, in the deployed weights' bytes per parameter (bf16: 2; whatif passes its scenario's)
    check_slots_memory(S, model, cluster.gpu, weight_bytes, origin="plan")
    t_start = time.perf_counter()
    counts, transitions = scaled_routing(trace, G, tokens_per_gpu)
    # the objective the MILP method prices (tuner.placers.ilp.solve builds the same from the same settings)
    cost = cost_model(model, cluster, tokens_per_gpu, S, amortise_steps)
    # the objective prices cross-layer transitions only where a token stays with its expert between layers
    priced = transitions if dependency == "transitions" else None
    notes: list[str] = []
    gpn = int(cluster.gpus_per_node)
    static = engine == "sglang-static"
    solve_s = 0.0

    budget = Budget(
        time_limit_s=time_limit_s,
        solver=solver,
        split=split,
        hierarchical=hierarchical,
        tokens_per_gpu=tokens_per_gpu,
        sweeps=sweeps,
        amortise_steps=amortise_steps,
        current=current,
        dependency=dependency,
        progress=progress,
    )
    placements, skipped = compared(
        counts, transitions, model, cluster, redundant_experts, engine, budget, layers=trace.layers
    )
    notes.extend(skipped)
    # valid for every placement and rule
    bound = objective_bound(counts, priced, G, gpn, S, cost, network=engine.startswith("sglang"))

    def row(p: Placement, name: str) -> dict[str, Any]:
        timing = (solve_s, None) if name == "ilp" else (0.0, None)
        r = evaluate(
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
            dependency=dependency,
        )
        r["gap"] = bound_gap(r["predicted_us"], bound["objective_us"])
        return r

    # the baselines are scored first, so the MILP's share of --time-limit can leave room for the ROWS_AFTER
    # simulations still to come
    rows, row_s = [], []
    for name, p in placements.items():
        t_row = time.perf_counter()
        rows.append(row(p, name))
        row_s.append(time.perf_counter() - t_row)
    per_row = float(np.mean(row_s)) if row_s else 0.0
    left = time_limit_s - (time.perf_counter() - t_start) - ROWS_AFTER * per_row
    # the static rule's settling takes SETTLE_SHARE of the refinement time on top of the method's budget
    fits = left / (1 + SETTLE_SHARE * REFINE_SHARE)
    milp_s = max(MIN_METHOD_SHARE * time_limit_s, fits)
    if milp_s > fits:
        notes.append(
            f"--time-limit {time_limit_s:g} s: the baselines and their simulations took "
            f"{time.perf_counter() - t_start:.1f} s, so the MILP still gets {milp_s:.1f} s and the plan runs over"
        )
    budget = dataclasses.replace(budget, time_limit_s=milp_s)

    # the MILP, warm-started from the baseline with the right slot count and the lowest objective under the rule
    out = ilp_method.solve(
        counts, transitions, model, cluster, redundant_experts, engine, budget, placements, layers=trace.layers
    )
    result, warm_name, refine_s = out.result, out.warm_name, out.refine_s
    notes.extend(out.notes)
    placements["ilp"] = out.placement
    extra = dict(out.extra)  # candidates for the per-layer choice that are not rows of their own
    solve_s = out.solve_s
    rows.append(row(placements["ilp"], "ilp"))
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
                ratio = cost.nic_ratio
                t_settle = SETTLE_SHARE * refine_s * (0.5 if ratio > 0 and G > gpn else 1.0)
                mixed, m = settle_static(mixed, counts, gpn, model, trace.layers, time_limit_s=t_settle)
                if ratio > 0 and G > gpn:
                    # then the load and the busiest NIC together, by swaps that keep the same draw, with the time
                    # the refinement's descents left
                    drawn = apply_engine(mixed, engine, gpn, model, trace.layers).shares
                    caps = out.load_caps
                    # the search runs to its time, so it stops short of --time-limit by the simulations still to
                    # come, each as slow as the slowest baseline's: the mix's, and a whole candidate's if it wins
                    t_search = min(
                        SETTLE_SHARE * refine_s - t_settle + out.left_s,
                        time_limit_s - (time.perf_counter() - t_start) - 2 * max(row_s, default=0.0),
                    )
                    mixed, m2 = balance(
                        mixed,
                        counts,
                        gpn,
                        ratio,
                        cost.gpus_per_nic,
                        shares=drawn,
                        keep_draw=True,
                        time_limit_s=max(0.0, t_search),
                        load_caps=caps,
                        kicks=None,
                    )
                    m += m2
                notes.append(f"settled on SGLang's static draw: {m} slot swaps that keep the draw")
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
            "lower_bound_us": bound["objective_us"],
            "sub_gap": None if not np.isfinite(result.gap) else result.gap,
            "max_sub_gap": None if not np.isfinite(result.max_sub_gap) else result.max_sub_gap,
            "warm_start": warm_name,
            "engine": engine,
            "dependency": dependency,
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
    return PlanResult(rows=rows, placements=placements, ilp=result, best=best, cost=cost, notes=notes, bound=bound)


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
    engine: str = "placement",
) -> Placement:
    """One placement over the trace's layers by ``method`` (a :class:`moesim.placement.PlacementMethod` name),
    without the comparison: :func:`tuner.placers.place` on the trace's counts scaled to one step.

    Raises:
        PlacementError (unknown method, replicas asked of a method that has none, slots, memory), TraceError,
        InfeasibleError as :func:`plan`.
    """
    method = PlacementMethod.parse(method)
    trace.check_model(model, getattr(trace, "source", "") or "trace")
    counts, transitions = scaled_routing(trace, int(cluster.num_gpus), tokens_per_gpu)
    budget = Budget(
        time_limit_s=time_limit_s, solver=solver, split=split, hierarchical=hierarchical, tokens_per_gpu=tokens_per_gpu
    )
    return place_with(
        method, counts, transitions, model, cluster, redundant_experts, engine, budget, layers=trace.layers
    )

"""The rebalance flow: which moves of a deployed placement are worth making for a newer load, and when they pay off.

Dimension legend: L the trace's recorded MoE layers, E logical experts, G GPUs, S slots per GPU, P = G*S.

From the deployed placement and a newer trace:

1. **The full replan**: the placement a rebalance from scratch gives (``replan="eplb"``, what SGLang and vLLM
   run online; or ``"ilp"``, ``moesim plan``'s MILP), its GPUs relabelled per layer to keep as much of the
   deployed map as possible (:mod:`tuner.rebalance.replan`; the relabelled plan is simulated again, so its
   figures are its own).
2. **The greedy search** per layer (:mod:`tuner.rebalance.search`): single moves from the deployed row, each the
   best drop of the MILP's per-layer objective per move, up to the replan's moves in that layer.
3. **The curve** (:mod:`tuner.rebalance.curve`): every layer's options (its greedy states and the replan's row)
   on their lower hulls, merged across layers in falling gain per move: the fewest moves for each predicted
   objective.
4. **Points**: some of the curve's states, simulated under the engine's dispatch rule
   (``tuner.plan.evaluate``), each with its :class:`tuner.rebalance.move_cost.MoveCost`, the step-time gain
   (summed over the recorded layers) and the steps after which it pays off.

Choice (:func:`choose`): ``max_moves``, ``max_move_gb`` or ``target_gain`` (a fraction of the replan's simulated
gain, the fewest moves reaching it); with none, the point with the largest net gain over the engine's default
rebalance interval (``interval * gain - stall``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from moesim.errors import PlacementError
from moesim.placement import Placement, even_shares
from tuner.engine_facts import facts_for
from tuner.engine_files.base import layer_rows, placement_layers
from tuner.rebalance import DEFAULT_ENGINE, DEFAULT_POINTS, DEFAULT_TIME_LIMIT_S, DEFAULT_WEIGHT_BYTES, REPLANS
from tuner.rebalance.curve import layer_options, merge_layers, spread
from tuner.rebalance.move_cost import MoveCost, move_cost, payoff_steps
from tuner.rebalance.replan import align_to, full_replan, replan_moves
from tuner.rebalance.search import LayerSearch, layer_prices, search_layers

if TYPE_CHECKING:
    from moesim.compute import EfficiencyModel
    from moesim.specs import ClusterSpec, ModelSpec
    from moesim.traces.trace import RoutingTrace


@dataclass(frozen=True)
class Point:
    """One simulated candidate: the deployed rows with some moves made."""

    label: str
    moves: int
    objective_us: float  # the search's objective, summed over the recorded layers
    latency_us: float  # simulated MoE layer latency (tail GPU), mean over the recorded layers
    layer_latencies_us: tuple[float, ...]
    cost: MoveCost
    step_gain_us: float  # per forward step: the recorded layers' latency drop, summed
    payoff_steps: float
    rows: np.ndarray  # [L, P] the trace layers' maps
    gain_fraction: float | None = None  # of the full replan's step gain


@dataclass
class RebalanceResult:
    current: Point
    replan: Point
    points: list[Point]  # simulated, by moves
    chosen: Point
    curve: list[tuple[int, float]]  # (moves, objective_us): every state of the merged curve
    placement: Placement  # the chosen plan: the deployed placement with the trace layers' rows replaced
    expert_bytes: float
    search_s: float
    notes: list[str] = field(default_factory=list)


def trace_rows(current: Placement, model: ModelSpec, trace: RoutingTrace, origin: str = "--current") -> list[int]:
    """The row of ``current`` holding each of the trace's layers (its ``meta["layers"]``, else one row per MoE
    layer in order, else one row per trace layer); ``PlacementError`` naming ``origin`` when a layer has none."""
    layers = current.meta.get("layers")
    indexed = layers is not None and len(layers) == current.num_layers
    if indexed or current.num_layers == model.num_moe_layers:
        layers = placement_layers(current, model, origin)
    elif current.num_layers == len(trace.layers):
        layers = [int(x) for x in trace.layers]
    else:
        raise PlacementError(
            f"{origin}: layers: {current.num_layers} rows without layer indices match neither the "
            f"{model.num_moe_layers} MoE layers of {model.slug} nor the trace's {len(trace.layers)}"
        )
    rows, missing = layer_rows(layers, trace.layers)
    if missing:
        raise PlacementError(f"{origin}: layers: the trace records layers {missing} the placement does not hold")
    return rows


def rebalance(
    model: ModelSpec,
    cluster: ClusterSpec,
    trace: RoutingTrace,
    current: Placement,
    *,
    engine: str = DEFAULT_ENGINE,
    replan: str = "eplb",
    tokens_per_gpu: int = 4096,
    calibration: EfficiencyModel | None = None,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    solver: str = "cbc",
    max_moves: int | None = None,
    max_move_gb: float | None = None,
    target_gain: float | None = None,
    points: int = DEFAULT_POINTS,
    weight_bytes: float = DEFAULT_WEIGHT_BYTES,
    synchronous: bool | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    origin: str = "--current",
) -> RebalanceResult:
    """The rebalance of ``current`` for ``trace``'s load (module docstring). ``time_limit_s`` bounds the greedy
    search (and the MILP replan); ``weight_bytes`` per parameter sizes a moved expert (bf16: 2); ``synchronous``:
    whether serving stops for the moves (None: as the engine's rebalancer does,
    :func:`tuner.engine_facts.facts_for`).

    Raises:
        PlacementError (a placement of another model or cluster, rows missing), TraceError (trace of another
        model), SpecError (a bad choice argument).
    """
    from tuner.placers.ilp import cost_model
    from tuner.plan import evaluate, scaled_routing

    trace.check_model(model, getattr(trace, "source", "") or "trace")
    if replan not in REPLANS:
        raise PlacementError(f"rebalance: --replan: must be one of {', '.join(REPLANS)}, got {replan!r}")
    G, gpn = int(cluster.num_gpus), int(cluster.gpus_per_node)
    if current.num_gpus != G:
        raise PlacementError(f"{origin}: num_gpus: the placement has {current.num_gpus} GPUs, {cluster.slug} has {G}")
    if current.num_experts != model.num_experts:
        raise PlacementError(f"{origin}: num_experts: {current.num_experts}, but {model.slug} has {model.num_experts}")
    S, E, P = current.slots_per_gpu, current.num_experts, current.num_physical
    rows = trace_rows(current, model, trace, origin)
    deployed = current.phy2log[rows].copy()  # [L, P]
    t0 = time.perf_counter()
    counts, _ = scaled_routing(trace, G, tokens_per_gpu)
    cost = cost_model(model, cluster, tokens_per_gpu, S, weight_dtype_bytes=weight_bytes)
    prices = layer_prices(cost, cluster, engine)
    notes: list[str] = []
    expert_bytes = model.expert_weight_bytes(weight_bytes)

    if progress:
        progress(0, 0, f"full replan ({replan})")
    raw = full_replan(replan, model, cluster, trace, P - E, engine, tokens_per_gpu, time_limit_s, solver, calibration)
    full = np.stack([align_to(deployed[l], raw[l], G, gpn) for l in range(len(rows))])

    caps = replan_moves(full, deployed, G, E)
    search_until = time.perf_counter() + time_limit_s
    searches, cut = search_layers(deployed, counts, G, prices, caps, time_limit_s, progress)
    if cut:
        notes.append(f"the move search stopped at its {time_limit_s:g} s limit in {cut} of {len(rows)} layers")

    # each layer's options (tuner.rebalance.curve): the walks and restarts get the search's time again, and what
    # the search left of its own
    full_obj = [LayerSearch(full[l], counts[l], G, prices, search=False).objective for l in range(len(rows))]
    walk_until = max(time.perf_counter(), search_until) + time_limit_s
    options, states = layer_options(searches, deployed, full, full_obj, counts, G, prices, caps, walk_until)
    curve = merge_layers(options)
    search_s = time.perf_counter() - t0

    def rows_of(pick: tuple[int, ...]) -> np.ndarray:
        return np.stack([states[l][i] for l, i in enumerate(pick)])

    sims: dict[bytes, tuple[float, tuple[float, ...]]] = {}

    def simulate(phy: np.ndarray) -> tuple[float, tuple[float, ...]]:
        key = phy.tobytes()
        if key not in sims:
            p = Placement(G, S, E, phy, even_shares(phy, E), {"layers": [int(x) for x in trace.layers]})
            r = evaluate(
                p,
                model,
                cluster,
                trace,
                counts,
                None,
                cost,
                tokens_per_gpu,
                "rebalance",
                calibration=calibration,
                engine=engine,
            )
            sims[key] = (float(r["layer_latency_us"]), tuple(float(x) for x in r["layer_latencies_us"]))
        return sims[key]

    _, base_layers = simulate(deployed)

    def point(label: str, phy: np.ndarray, objective: float) -> Point:
        lat, per_layer = simulate(phy)
        mc = move_cost(deployed, phy, S, cluster, expert_bytes, engine, synchronous)
        gain = float(np.sum(np.asarray(base_layers) - np.asarray(per_layer)))
        return Point(
            label or f"{mc.moves} move{'' if mc.moves == 1 else 's'}",
            mc.moves,
            objective,
            lat,
            per_layer,
            mc,
            gain,
            payoff_steps(mc.stall_s, gain * 1e-6),
            phy,
        )

    if progress:
        progress(0, 0, "simulating the curve")
    cur_point = point("deployed", deployed, curve[0][1])
    full_point = point(f"full replan ({replan})", full, float(sum(full_obj)))
    shown = spread([m for m, _, _ in curve], points)
    pts = [point("", rows_of(curve[i][2]), curve[i][1]) for i in shown]
    chosen = choose(
        curve,
        pts,
        full_point,
        expert_bytes,
        engine,
        max_moves=max_moves,
        max_move_gb=max_move_gb,
        target_gain=target_gain,
        simulate_at=lambda i: point("", rows_of(curve[i][2]), curve[i][1]),
        known=dict(zip(shown, pts)),
    )
    if all(p.moves != chosen.moves for p in pts):
        pts.append(chosen)
    pts.sort(key=lambda p: p.moves)
    ref = full_point.step_gain_us
    with_frac = [_with_fraction(p, ref) for p in [cur_point, full_point, *pts]]
    cur_point, full_point, pts = with_frac[0], with_frac[1], with_frac[2:]
    chosen = next(p for p in pts if p.moves == chosen.moves and p.label == chosen.label)
    if ref <= 0:
        notes.append(f"the full replan ({replan}) is no faster than the deployed placement under {engine}")

    out_rows = current.phy2log.copy()
    out_rows[rows] = chosen.rows
    meta = dict(current.meta)
    meta.update(
        {
            "method": f"rebalance ({chosen.moves} moves from {origin})",
            "trace": trace.source,
            "predicted": {
                "layer_latency_us": chosen.latency_us,
                "moves": chosen.moves,
                "stall_s": chosen.cost.stall_s,
                "engine": engine,
            },
        }
    )
    placement = Placement(G, S, E, out_rows, even_shares(out_rows, E), meta)
    return RebalanceResult(
        cur_point, full_point, pts, chosen, [(m, o) for m, o, _ in curve], placement, expert_bytes, search_s, notes
    )


def _with_fraction(p: Point, ref: float) -> Point:
    from dataclasses import replace

    return replace(p, gain_fraction=(p.step_gain_us / ref) if ref > 0 else None)


def choose(
    curve: list[tuple[int, float, tuple[int, ...]]],
    shown: list[Point],
    full: Point,
    expert_bytes: float,
    engine: str,
    *,
    max_moves: int | None,
    max_move_gb: float | None,
    target_gain: float | None,
    simulate_at: Callable[[int], Point],
    known: dict[int, Point] | None = None,
) -> Point:
    """The chosen point (module docstring): the curve's last state within ``max_moves`` / ``max_move_gb``; the
    fewest moves whose simulated gain reaches ``target_gain`` of the replan's (a bisection on the curve,
    simulating as it goes, from the bracket the already simulated ``known`` curve states give); else the largest
    net gain over the engine's interval among ``shown``."""
    cap = math.inf
    if max_moves is not None:
        cap = min(cap, max_moves)
    if max_move_gb is not None:
        cap = min(cap, math.floor(max_move_gb * 1e9 / expert_bytes))
    within = [i for i, (m, _, _) in enumerate(curve) if m <= cap]
    if target_gain is not None:
        goal = target_gain * full.step_gain_us
        if goal <= 0:  # the replan gains nothing: nothing moved already reaches it
            return simulate_at(0)
        lo, hi = 0, within[-1]
        best = simulate_at(hi)
        if best.step_gain_us < goal:
            return best  # the budget (or the whole curve) does not reach it: its best
        for i, p in sorted((known or {}).items()):
            if i <= hi and p.step_gain_us >= goal:
                hi, best = i, p
                break
            if i < hi:
                lo = i
        while hi - lo > 1:  # the gain rises along the curve: the first state reaching the goal
            mid = (lo + hi) // 2
            p = simulate_at(mid)
            if p.step_gain_us >= goal:
                hi, best = mid, p
            else:
                lo = mid
        return best
    if math.isfinite(cap):
        return simulate_at(within[-1])
    interval = facts_for(engine).interval_steps
    return max(shown, key=lambda p: interval * p.step_gain_us * 1e-6 - p.cost.stall_s)

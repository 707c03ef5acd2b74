"""Rebalance a deployed placement for a newer load: which moves are worth making, and when they pay off.

Dimension legend: L the trace's recorded MoE layers, E logical experts, G GPUs, S slots per GPU, P = G*S.

From the deployed placement and a newer trace:

1. **The full replan**: the placement a rebalance from scratch gives (``replan="eplb"``, what SGLang and vLLM
   run online; or ``"ilp"``, ``moesim plan``'s MILP), its GPUs relabelled per layer to keep as much of the
   deployed map as possible (nodes matched, then GPUs within nodes, by the experts they keep: two Hungarian
   assignments; the relabelled plan is simulated again, so its figures are its own).
2. **The greedy search** per layer (``tuner.rebalance_search``): single moves from the deployed row, each the
   best drop of the MILP's per-layer objective per move, up to the replan's moves in that layer.
3. **The curve**: every layer's options (its greedy states and the replan's row) on their lower hulls, merged
   across layers in falling gain per move: the fewest moves for each predicted objective.
4. **Points**: some of the curve's states, simulated under the engine's dispatch rule
   (``tuner.plan.evaluate``), each with its :class:`tuner.move_cost.MoveCost`, the step-time gain (summed over
   the recorded layers) and the steps after which it pays off.

Choice (:func:`choose`): ``max_moves``, ``max_move_gb`` or ``target_gain`` (a fraction of the replan's simulated
gain, the fewest moves reaching it); with none, the point with the largest net gain over the engine's default
rebalance interval (``interval * gain - stall``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from moesim.errors import PlacementError
from moesim.placement import Placement, even_shares
from tuner.ilp import moved_replicas
from tuner.move_cost import MoveCost, facts_for, move_cost, payoff_steps
from tuner.rebalance_search import LayerPrices, LayerSearch, merge_layers

if TYPE_CHECKING:
    from moesim.specs import ClusterSpec, ModelSpec
    from moesim.trace import RoutingTrace
    from tuner.ilp import CostModel

REPLANS = ("eplb", "ilp")
DEFAULT_POINTS = 8
# the greedy search restarted from this many states of each pruned replan (a tuning choice, made on OLMoE c4 ->
# github, a benchmark case: 12 starts needed 46 moves for 80% of the MILP replan's gain, 30 needed 38, every
# state 42)
POLISH_STARTS = 30


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
    layer in order); ``PlacementError`` naming ``origin`` when a layer has none."""
    layers = current.meta.get("layers")
    if layers is None or len(layers) != current.num_layers:
        if current.num_layers == model.num_moe_layers:
            layers = list(model.moe_layers)
        elif current.num_layers == len(trace.layers):
            layers = list(trace.layers)
        else:
            raise PlacementError(
                f"{origin}: layers: {current.num_layers} rows without layer indices match neither the "
                f"{model.num_moe_layers} MoE layers of {model.slug} nor the trace's {len(trace.layers)}"
            )
    index = {int(x): i for i, x in enumerate(layers)}
    missing = [int(x) for x in trace.layers if int(x) not in index]
    if missing:
        raise PlacementError(f"{origin}: layers: the trace records layers {missing} the placement does not hold")
    return [index[int(x)] for x in trace.layers]


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


def _full_replan(
    replan: str,
    model: ModelSpec,
    cluster: ClusterSpec,
    trace: RoutingTrace,
    redundant: int,
    engine: str,
    tokens_per_gpu: int,
    time_limit_s: float,
    solver: str,
    calibration: Any,
) -> np.ndarray:
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


def rebalance(
    model: ModelSpec,
    cluster: ClusterSpec,
    trace: RoutingTrace,
    current: Placement,
    *,
    engine: str = "sglang-static",
    replan: str = "eplb",
    tokens_per_gpu: int = 4096,
    calibration: Any | None = None,
    time_limit_s: float = 20.0,
    solver: str = "cbc",
    max_moves: int | None = None,
    max_move_gb: float | None = None,
    target_gain: float | None = None,
    points: int = DEFAULT_POINTS,
    weight_bytes: float = 2.0,
    synchronous: bool | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    origin: str = "--current",
) -> RebalanceResult:
    """The rebalance of ``current`` for ``trace``'s load (module docstring). ``time_limit_s`` bounds the greedy
    search (and the MILP replan); ``weight_bytes`` per parameter sizes a moved expert (bf16: 2); ``synchronous``:
    whether serving stops for the moves (None: as the engine's rebalancer does, ``tuner.move_cost.facts_for``).

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
    raw = _full_replan(replan, model, cluster, trace, P - E, engine, tokens_per_gpu, time_limit_s, solver, calibration)
    full = np.stack([align_to(deployed[l], raw[l], G, gpn) for l in range(len(rows))])

    caps = [int(m) for m in moved_replicas(_as_placement(full, G, E), _as_placement(deployed, G, E))]
    search_until = time.perf_counter() + time_limit_s
    searches, cut = search_layers(deployed, counts, G, prices, caps, time_limit_s, progress)
    if cut:
        notes.append(f"the move search stopped at its {time_limit_s:g} s limit in {cut} of {len(rows)} layers")

    # each layer's options: its greedy states, the replan's row, and where the replan beats the greedy search,
    # the walks between the two (the replan pruned of its least useful moves, and made most useful first)
    full_obj = [LayerSearch(full[l], counts[l], G, prices, search=False).objective for l in range(len(rows))]
    options, states = [], []
    # the walks and restarts get the search's time again, and what the search left of its own, each layer an even
    # share of what is left
    walk_until = max(time.perf_counter(), search_until) + time_limit_s
    for l, s in enumerate(searches):
        found = [(m, o, r) for m, o, r in s.history if m <= caps[l] or m == 0]
        found.append((caps[l], full_obj[l], full[l]))
        if full_obj[l] < min(o for _, o, _ in s.history):
            held = np.zeros((E, G), dtype=bool)
            held[deployed[l], np.arange(P) // S] = True
            share = max(0.0, walk_until - time.perf_counter()) / (len(rows) - l)
            start = time.perf_counter()
            # a third of the share to each walk, the rest (and what they leave) to the restarts
            pruned = LayerSearch(full[l], counts[l], G, prices).walk(deployed[l], held, start + share / 3)
            found += pruned
            found += LayerSearch(deployed[l], counts[l], G, prices).walk(full[l], held, start + 2 * share / 3)
            # the greedy search again from some of the pruned replans: a few moves of the search can stand in
            # for many of the replan's
            for _, _, row in pruned[:: max(1, len(pruned) // POLISH_STARTS)]:
                ls = LayerSearch(row, counts[l], G, prices, held=held)
                while ls.moves < caps[l] and time.perf_counter() < start + share and ls.step():
                    pass
                found += ls.history
        found = _frontier(found)
        options.append([(m, o) for m, o, _ in found])
        states.append([r for _, _, r in found])
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
    shown = _spread([m for m, _, _ in curve], points)
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


def search_layers(
    deployed: np.ndarray,
    counts: np.ndarray,
    num_gpus: int,
    prices: LayerPrices,
    caps: list[int],
    time_limit_s: float,
    progress: Callable[[int, int, str], None] | None = None,
) -> tuple[list[LayerSearch], int]:
    """The greedy search of every row of ``deployed [L, P]`` under ``counts [L, E]``, each up to ``caps[l]``
    moves, one layer at a time (a search holds ``[E, G, G]`` tables) with an even share of the time left.
    Returns the searches (their ``history``) and how many layers the time cut short."""
    limit = time.perf_counter() + time_limit_s
    searches, cut = [], 0
    L = deployed.shape[0]
    for l in range(L):
        s = LayerSearch(deployed[l], counts[l], num_gpus, prices)
        until = time.perf_counter() + max(0.0, limit - time.perf_counter()) / (L - l)
        while s.moves < caps[l] and time.perf_counter() < until and s.step():
            pass
        cut += not s.done and s.moves < caps[l]
        s.release()
        searches.append(s)
        if progress:
            progress(l + 1, L, "searching moves")
    return searches, cut


def layer_prices(cost: CostModel, cluster: ClusterSpec, engine: str) -> LayerPrices:
    """The search's prices from the MILP's cost model (``tuner.placers.ilp.cost_model``); the busiest NIC priced
    under SGLang's nearest-replica rules on more than one node, as the MILP prices it."""
    G, gpn = int(cluster.num_gpus), int(cluster.gpus_per_node)
    network = engine.startswith("sglang") and G > gpn
    return LayerPrices(
        cost.us_per_token,
        cost.us_per_nic_assignment if network else 0.0,
        nearest=engine.startswith("sglang"),
        gpus_per_node=gpn,
        gpus_per_nic=cost.gpus_per_nic,
    )


def _as_placement(rows: np.ndarray, num_gpus: int, num_experts: int) -> Placement:
    """Bare ``[L, P]`` maps as a :class:`Placement` (even shares)."""
    return Placement(num_gpus, rows.shape[1] // num_gpus, num_experts, rows, even_shares(rows, num_experts))


def _frontier(found: list[tuple[int, float, np.ndarray]]) -> list[tuple[int, float, np.ndarray]]:
    """The options no other beats with as few moves (by moves, each lower than all before it); the 0-move
    deployed row first."""
    out: list[tuple[int, float, np.ndarray]] = []
    for m, o, r in sorted(found, key=lambda x: (x[0], x[1])):
        if not out or o < out[-1][1]:
            out.append((m, o, r))
    return out


def _spread(moves: list[int], k: int) -> list[int]:
    """Up to ``k`` curve states after the first (the deployed one), spaced evenly in log moves from the first
    move to the last state (the choices are made among few moves; the last is the curve's end)."""
    if len(moves) <= k + 1:
        return list(range(1, len(moves)))
    targets = np.geomspace(max(moves[1], 1), moves[-1], k)
    picked = {int(np.searchsorted(moves, t, side="right")) - 1 for t in targets}
    return sorted(i for i in picked | {len(moves) - 1} if i > 0)


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

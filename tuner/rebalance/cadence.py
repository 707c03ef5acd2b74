"""Rebalance cadence: how fast the load drifts, and which rebalance interval serves most net of the moves.

A *series* is D successive routing snapshots of one model (an SGLang recorder dump every ``dump_steps``
forward steps, say). Snapshot j stands for the load of steps ``[j * dump_steps, (j + 1) * dump_steps)``.

Drift: ``tv(lag)``, the total-variation distance between the expert distributions of snapshots ``lag`` apart,
mean over layers and pairs: ``tv = 0.5 * sum_e |p_e - q_e|`` (0: the same load, 1: disjoint experts).

Policy "rebalance every k snapshots" (an interval of ``k * dump_steps`` steps): at the start of snapshot j
(j = k, 2k, ...) a new placement is made from the load recorded in the window before (snapshots ``j-k .. j-1``,
summed), and serving stops for the move (:mod:`tuner.rebalance.move_cost`). The placement comes from the engine's own
online rebalancer (``policy="eplb"``: a replan from scratch, what the engine flags below schedule) or from
moesim's move search started at the placement in force (``policy="moesim"``, :mod:`tuner.rebalance.search`
run to convergence, :data:`MOESIM_SEARCH_S` per rebalance). Snapshot 0
runs the deployed placement, so every interval starts from the same state. The time of the series::

    time(k) = sum_j dump_steps * step_s(placement in force at j, load j) + sum_rebalances stall_s

with ``step_s`` the simulated MoE time of a step (the recorded layers' latencies summed). The best interval is
the one with the least time (the most throughput); "never" (k = D) keeps the deployed placement.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from moesim.errors import TraceError
from moesim.placement import Placement, even_shares
from tuner.engine_facts import facts_for
from tuner.rebalance import DEFAULT_DUMP_STEPS, DEFAULT_ENGINE, DEFAULT_WEIGHT_BYTES, POLICIES
from tuner.rebalance.move_cost import move_cost
from tuner.rebalance.search import layer_prices, search_layers

if TYPE_CHECKING:
    from moesim.compute import EfficiencyModel
    from moesim.specs import ClusterSpec, ModelSpec
    from moesim.traces.trace import RoutingTrace


MOESIM_SEARCH_S = 5.0  # search time per rebalance under policy "moesim" (a choice, split over the layers)


@dataclass(frozen=True)
class IntervalResult:
    """One interval's outcome over the series."""

    every: int  # snapshots between rebalances (D: never)
    steps: int  # forward steps between rebalances
    rebalances: int
    moves: int
    stall_s: float
    moe_s: float  # simulated MoE time of every step of the series
    total_s: float  # moe_s + stall_s

    @property
    def never(self) -> bool:
        return self.rebalances == 0


@dataclass
class CadenceResult:
    snapshots: list[str]
    dump_steps: int
    drift_tv: list[float]  # [lag] mean total-variation distance, lag 1 .. D-1
    intervals: list[IntervalResult]
    best: IntervalResult
    engine: str
    flags: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    policy: str = "eplb"


def load_series(folder: str | Path, model: ModelSpec) -> tuple[list[str], list[RoutingTrace]]:
    """Every snapshot in ``folder`` (each file or subfolder ``moesim.traces.formats.load_trace`` reads), in name
    order; ``TraceError`` naming the file when one is of another model, records other layers, or is unreadable."""
    from moesim.traces.formats import load_trace

    root = Path(folder)
    if not root.is_dir():
        raise TraceError(f"{root}: --trace-series: not a folder")
    entries = sorted((p for p in root.iterdir() if not p.name.startswith(".")), key=lambda p: _natural(p.name))
    if len(entries) < 2:
        raise TraceError(f"{root}: --trace-series: needs at least 2 snapshots, found {len(entries)}")
    traces = []
    for p in entries:
        t = load_trace(p, model=model)
        t.check_model(model, str(p))
        if traces and tuple(t.layers) != tuple(traces[0].layers):
            raise TraceError(
                f"{p}: layers: records {list(t.layers)}, but {entries[0].name} records {list(traces[0].layers)}"
            )
        traces.append(t)
    return [p.name for p in entries], traces


def _natural(name: str) -> list[Any]:
    """Sort key that puts ``dump_10`` after ``dump_9``."""
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def drift(traces: Sequence[RoutingTrace]) -> list[float]:
    """``[lag - 1]`` mean total-variation distance between snapshots ``lag`` apart (module docstring)."""
    p = np.stack([np.asarray(t.counts, dtype=np.float64) for t in traces])  # [D, L, E]
    p /= np.maximum(p.sum(axis=2, keepdims=True), 1e-30)
    D = p.shape[0]
    return [float(0.5 * np.abs(p[lag:] - p[:-lag]).sum(axis=2).mean()) for lag in range(1, D)]


def _summed(traces: Sequence[RoutingTrace]) -> RoutingTrace:
    from moesim.traces.trace import RoutingTrace

    first = traces[0]
    counts = np.sum([np.asarray(t.counts, dtype=np.int64) for t in traces], axis=0)
    return RoutingTrace(
        model=first.model,
        num_experts=first.num_experts,
        top_k=first.top_k,
        layers=first.layers,
        counts=counts,
        num_tokens=int(sum(t.num_tokens for t in traces)),
        source=f"{len(traces)} snapshots from {first.source}",
    )


def cadence(
    model: ModelSpec,
    cluster: ClusterSpec,
    names: list[str],
    traces: list[RoutingTrace],
    deployed: Placement,
    *,
    dump_steps: int = DEFAULT_DUMP_STEPS,
    engine: str = DEFAULT_ENGINE,
    tokens_per_gpu: int = 4096,
    calibration: EfficiencyModel | None = None,
    weight_bytes: float = DEFAULT_WEIGHT_BYTES,
    everies: Sequence[int] | None = None,
    policy: str = "eplb",
    synchronous: bool | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> CadenceResult:
    """Score every interval of ``everies`` (default 1, 2, 4, ... snapshots, and never) on the series (module
    docstring). ``deployed`` holds the trace layers' rows (``[L, P]``, the series' layers in order)."""
    from tuner.placers.ilp import cost_model
    from tuner.plan import evaluate, place, scaled_routing

    if dump_steps < 1:
        raise TraceError(f"--dump-steps: must be >= 1, got {dump_steps}")
    if policy not in POLICIES:
        raise TraceError(f"--policy: must be one of {', '.join(POLICIES)}, got {policy!r}")
    D = len(traces)
    G, S, E = deployed.num_gpus, deployed.slots_per_gpu, deployed.num_experts
    redundant = deployed.num_physical - E
    cost = cost_model(model, cluster, tokens_per_gpu, S, weight_dtype_bytes=weight_bytes)
    expert_bytes = model.expert_weight_bytes(weight_bytes)
    layers = [int(x) for x in traces[0].layers]
    if everies is None:
        everies = sorted({2**i for i in range(int(math.log2(max(D - 1, 1))) + 1)} | {D})
    everies = sorted({int(k) for k in everies if k >= 1})
    sims: dict[tuple[bytes, int], float] = {}

    def step_s(phy: np.ndarray, j: int) -> float:
        key = (phy.tobytes(), j)
        if key not in sims:
            counts, _ = scaled_routing(traces[j], G, tokens_per_gpu)
            p = Placement(G, S, E, phy, even_shares(phy, E), {"layers": layers})
            row = evaluate(
                p,
                model,
                cluster,
                traces[j],
                counts,
                None,
                cost,
                tokens_per_gpu,
                "cadence",
                calibration=calibration,
                engine=engine,
            )
            sims[key] = float(np.sum(row["layer_latencies_us"])) * 1e-6
        return sims[key]

    plans: dict[tuple[int, int], np.ndarray] = {}

    prices = layer_prices(cost, cluster, engine)

    def replan(phy: np.ndarray, lo: int, hi: int) -> np.ndarray:  # a new placement from snapshots lo..hi-1
        key = (phy.tobytes(), lo, hi)
        if key not in plans:
            window = _summed(traces[lo:hi])
            if policy == "eplb":  # from scratch: it does not depend on the placement in force
                plans[key] = place(
                    "eplb",
                    model,
                    cluster,
                    window,
                    redundant_experts=redundant,
                    engine=engine,
                    tokens_per_gpu=tokens_per_gpu,
                ).phy2log
            else:
                counts, _ = scaled_routing(window, G, tokens_per_gpu)
                searches, _ = search_layers(phy, counts, G, prices, [phy.shape[1]] * phy.shape[0], MOESIM_SEARCH_S)
                plans[key] = np.stack([s.row for s in searches])
        return plans[key]

    results = []
    for n, k in enumerate(everies):
        if progress:
            progress(n, len(everies), f"interval {k * dump_steps} steps")
        phy, moves, stall, moe, rebalances = deployed.phy2log, 0, 0.0, 0.0, 0
        for j in range(D):
            if j > 0 and j % k == 0 and k < D:
                new = replan(phy, j - k, j)
                mc = move_cost(phy, new, S, cluster, expert_bytes, engine, synchronous)
                phy, moves, stall, rebalances = new, moves + mc.moves, stall + mc.stall_s, rebalances + 1
            moe += dump_steps * step_s(phy, j)
        results.append(IntervalResult(k, k * dump_steps, rebalances, moves, stall, moe, moe + stall))
    if progress:
        progress(len(everies), len(everies), "done")
    best = min(results, key=lambda r: r.total_s)
    notes = []
    if best.never:
        notes.append("no interval beats keeping the deployed placement on this series")
    if best.never and policy == "eplb":
        notes.append(
            "the engine's own rebalancing (EPLB from scratch) does not pay on this series: leave it off, "
            "or try --policy moesim (moves from the placement in force)"
        )
    return CadenceResult(
        names, dump_steps, drift(traces), results, best, engine, interval_flags(best.steps, redundant), notes, policy
    )


def interval_flags(steps: int, redundant: int) -> dict[str, str]:
    """The flags that make each engine rebalance every ``steps`` forward steps with ``redundant`` extra slots
    (names and defaults: :mod:`tuner.engine_facts`). vLLM's load window stays at its default, shortened to the
    interval when that is shorter."""
    from tuner.engine_files.vllm_eplb import defaults, flag_line

    window = min(steps, int(defaults()["window_size"]))
    facts = [facts_for(e) for e in ("sglang-static", "vllm")]
    sglang = facts[0].interval_flag  # --eplb-rebalance-num-iterations
    return {
        "sglang": f"--enable-eplb --ep-num-redundant-experts {redundant} {sglang} {steps}",
        "vllm": flag_line({"window_size": window, "step_interval": steps, "num_redundant_experts": redundant}),
        "source": "; ".join(f"{f.name} {f.version}" for f in facts),
    }

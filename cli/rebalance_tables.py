"""What ``moesim rebalance`` prints: the candidates' and the intervals' tables, and their JSON documents."""

from __future__ import annotations

import math
from typing import Any


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def point_dict(p: Any) -> dict[str, Any]:
    """JSON fields of a :class:`tuner.rebalance.flow.Point`."""
    from tuner.rebalance.move_cost import as_dict

    return {
        "label": p.label,
        "moves": p.moves,
        "objective_us": p.objective_us,
        "layer_latency_us": p.latency_us,
        "layer_latencies_us": list(p.layer_latencies_us),
        "step_gain_us": p.step_gain_us,
        "gain_fraction": _finite(p.gain_fraction),
        "payoff_steps": _finite(p.payoff_steps),
        **{k: _finite(v) for k, v in as_dict(p.cost).items()},
    }


def _short_bytes(v: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.0f}" if v else "0"


def print_points(result: Any, engine: str, console: Any) -> None:
    """The rebalance candidates of a :class:`tuner.rebalance.flow.RebalanceResult` as a table."""
    from rich import box
    from rich.table import Table

    from tuner.engine_facts import facts_for

    facts = facts_for(engine)
    mode = "synchronous" if facts.synchronous else "overlapped with decode"
    table = Table(
        title=f"Rebalance candidates under {engine} ({facts.name} {facts.version} moves are {mode}); "
        "MoE layer latency; gain per step over the recorded layers; payoff in steps",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("candidate", no_wrap=True)
    heads = (
        "moves",
        "/layer",
        "NVLink",
        "network",
        "transfer ms",
        "stall s",
        "layer us",
        "gain us",
        "of replan",
        "payoff",
    )
    for col in heads:
        table.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    base = result.current.latency_us
    for p in [result.current, *result.points, result.replan]:
        per = p.cost.moves_per_layer
        lat = f"{p.latency_us:,.0f}"
        if p is not result.current and base:
            lat += f" ({100 * (p.latency_us / base - 1):+.0f}%)"
        frac = "" if p.gain_fraction is None else f"{100 * p.gain_fraction:.0f}%"
        payoff = "never" if not math.isfinite(p.payoff_steps) else f"{p.payoff_steps:,.0f}"
        label = ("* " if p is result.chosen else "") + p.label
        table.add_row(
            label,
            f"{p.moves:,}",
            f"{min(per, default=0)}-{max(per, default=0)}",
            _short_bytes(p.cost.bytes_intra),
            _short_bytes(p.cost.bytes_network),
            f"{1e3 * p.cost.transfer_s:,.1f}",
            f"{p.cost.stall_s:.2f}",
            lat,
            f"{p.step_gain_us:,.0f}",
            frac,
            payoff if p.moves else "",
        )
    console.print(table)


def print_cadence(result: Any, console: Any) -> None:
    """The intervals of a :class:`tuner.rebalance.cadence.CadenceResult` as a table, and the flags of the best."""
    from rich.table import Table

    drift = ", ".join(f"{100 * x:.1f}%" for x in result.drift_tv[:6])
    console.print(f"load drift (total variation between snapshots 1, 2, ... apart): {drift}")
    who = "the engine's EPLB" if result.policy == "eplb" else "moesim's moves"
    table = Table(
        title=f"Rebalance interval ({who}) over {len(result.snapshots)} snapshots of {result.dump_steps} steps"
    )
    for col in ("interval (steps)", "rebalances", "moves", "stall (s)", "MoE time (s)", "total (s)", "vs never"):
        table.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    never = next((r for r in result.intervals if r.never), None)
    for r in result.intervals:
        rel = "" if never is None else f"{100 * (r.total_s / never.total_s - 1):+.2f}%"
        table.add_row(
            ("* " if r is result.best else "") + ("never" if r.never else f"{r.steps:,}"),
            str(r.rebalances),
            f"{r.moves:,}",
            f"{r.stall_s:.2f}",
            f"{r.moe_s:,.2f}",
            f"{r.total_s:,.2f}",
            rel,
        )
    console.print(table)
    if result.best.never:
        return
    if result.policy == "eplb":
        console.print(f"SGLang: {result.flags['sglang']}")
        console.print(f"vLLM:   {result.flags['vllm']}")
    else:  # the engines' flags would schedule their own EPLB, not these moves
        console.print(
            f"rebalance with `moesim rebalance` every {result.best.steps:,} steps, on the load recorded "
            "since the last one (the engines' EPLB flags would replan from scratch instead)"
        )


def rebalance_dict(result: Any, engine: str, replan: str, written: list[str]) -> dict[str, Any]:
    """The ``--json`` document of one rebalance (a :class:`tuner.rebalance.flow.RebalanceResult`)."""
    return {
        "engine": engine,
        "replan": replan,
        "expert_bytes": result.expert_bytes,
        "search_s": result.search_s,
        "current": point_dict(result.current),
        "full_replan": point_dict(result.replan),
        "points": [point_dict(p) for p in result.points],
        "chosen": point_dict(result.chosen),
        "curve": [[m, o] for m, o in result.curve],
        "notes": result.notes,
        "written": written,
    }


def cadence_dict(result: Any, engine: str, policy: str, dump_steps: int) -> dict[str, Any]:
    """The ``--json`` document of a cadence study (a :class:`tuner.rebalance.cadence.CadenceResult`)."""
    return {
        "engine": engine,
        "policy": policy,
        "snapshots": result.snapshots,
        "dump_steps": dump_steps,
        "drift_tv": result.drift_tv,
        "intervals": [
            {
                "steps": r.steps,
                "every": r.every,
                "never": r.never,
                "rebalances": r.rebalances,
                "moves": r.moves,
                "stall_s": r.stall_s,
                "moe_s": r.moe_s,
                "total_s": r.total_s,
            }
            for r in result.intervals
        ],
        "best_steps": None if result.best.never else result.best.steps,
        "flags": result.flags,
        "notes": result.notes,
    }

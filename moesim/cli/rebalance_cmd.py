"""``moesim rebalance``: which expert moves are worth making for a newer load, and how often to rebalance."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer

from moesim.cli.options import (
    announce_calibration,
    calibration_option,
    engine_help,
    task_progress,
    use_calibration,
)
from moesim.errors import SpecError

EXAMPLE = (
    "moesim rebalance --current p_c4.json --trace profiles/traces/olmoe_github.npz --model olmoe-1b-7b "
    "--cluster h100-2x8-ib400 --max-moves 16 --json"
)
SERIES_EXAMPLE = (
    "moesim rebalance --trace-series dumps/ --current p.json --model deepseek-v3 --cluster h100-8x8-ib400 "
    "--dump-steps 1000"
)


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def point_dict(p: Any) -> dict[str, Any]:
    """JSON fields of a :class:`tuner.rebalance.Point`."""
    from tuner.move_cost import as_dict

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
    from rich import box
    from rich.table import Table

    from tuner.move_cost import facts_for

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


def rebalance_cmd(
    model: str = typer.Option(..., "--model", help="model slug or YAML path (e.g. olmoe-1b-7b)"),
    cluster: str = typer.Option(..., "--cluster", help="cluster slug or YAML path (e.g. h100-2x8-ib400)"),
    current: Path | None = typer.Option(
        None,
        "--current",
        help="placement now deployed: moesim YAML, SGLang .json/.pt map, TensorRT-LLM EPLB YAML "
        "(required with --trace; with --trace-series, default: EPLB on the first snapshot)",
    ),
    trace: str | None = typer.Option(None, "--trace", help="the newer load: a routing trace (any format moesim reads)"),
    trace_series: Path | None = typer.Option(
        None,
        "--trace-series",
        help="a folder of successive snapshots (e.g. SGLang recorder dumps every N steps): "
        "advise the rebalance interval instead",
    ),
    dump_steps: int = typer.Option(1000, "--dump-steps", help="forward steps between two snapshots of the series"),
    policy: str = typer.Option(
        "eplb",
        "--policy",
        help="with --trace-series, who rebalances: eplb (the engine's own, from scratch: what "
        "its interval flags schedule) | moesim (moesim's moves from the placement in force)",
    ),
    max_moves: int | None = typer.Option(None, "--max-moves", help="choose the best plan within N expert moves"),
    max_move_gb: float | None = typer.Option(None, "--max-move-gb", help="choose the best plan moving at most G GB"),
    target_gain: float | None = typer.Option(
        None,
        "--target-gain",
        help="choose the fewest moves reaching this fraction of the full replan's gain "
        "(e.g. 0.8); default (no budget): the most gain net of the stall over the engine's default interval",
    ),
    replan: str = typer.Option(
        "eplb",
        "--replan",
        help="the full replan compared with: eplb (what the engines run "
        "online) | ilp (moesim plan's MILP, within --time-limit)",
    ),
    engine: str = typer.Option("sglang-static", "--engine", help=engine_help()),
    stall: str = typer.Option(
        "auto",
        "--stall",
        help="does serving stop for the moves: auto (as the engine's rebalancer: SGLang and vLLM "
        "stop, profiles/reference/engine_rebalance.yaml) | sync | overlapped (copied while serving, as TensorRT-LLM's "
        "online balancer)",
    ),
    time_limit: float = typer.Option(20.0, "--time-limit", help="seconds for the move search (and the ilp replan)"),
    points: int | None = typer.Option(None, "--points", help="curve points to simulate and show (default 8)"),
    tokens_per_gpu: int = typer.Option(4096, "--tokens-per-gpu", help="tokens on each GPU per layer"),
    weight_bytes: float = typer.Option(2.0, "--weight-bytes", help="bytes per expert weight (bf16 2, fp8 1)"),
    output: Path | None = typer.Option(None, "-o", "--output", help="write the chosen plan as moesim placement YAML"),
    export: list[str] | None = typer.Option(
        None,
        "--export",
        help="also write the chosen plan as FORMAT=PATH (sglang-json, sglang-pt, sglang-count, "
        "trtllm, vllm, vllm-flags); repeatable",
    ),
    calibration: str = calibration_option(),
    as_json: bool = typer.Option(False, "--json", help="print the candidates (or the intervals) as JSON"),
) -> None:
    """Rebalance a deployed placement for a newer load: the moves worth making, and when they pay off."""
    import sys

    from rich.console import Console

    from moesim.engine_dispatch import ENGINES
    from moesim.fileio import check_outputs
    from moesim.specs import MAX_TOKENS_PER_GPU, load_cluster, load_model
    from tuner.engine_files import check_export_paths, parse_export
    from tuner.rebalance import REPLANS

    if (trace is None) == (trace_series is None):
        raise SpecError("rebalance: --trace/--trace-series: give exactly one")
    if trace_series is not None and (output is not None or export):
        raise SpecError("rebalance: -o/--export: --trace-series advises an interval and writes no plan")
    if trace is not None and current is None:
        raise SpecError("rebalance: --current: required with --trace (the placement now deployed)")
    if engine not in ENGINES:
        raise SpecError(f"rebalance: --engine: must be one of {', '.join(ENGINES)}, got {engine!r}")
    from tuner.cadence import POLICIES

    if stall not in ("auto", "sync", "overlapped"):
        raise SpecError(f"rebalance: --stall: must be auto, sync or overlapped, got {stall!r}")
    synchronous = None if stall == "auto" else stall == "sync"

    if policy not in POLICIES:
        raise SpecError(f"rebalance: --policy: must be one of {', '.join(POLICIES)}, got {policy!r}")
    if replan not in REPLANS:
        raise SpecError(f"rebalance: --replan: must be one of {', '.join(REPLANS)}, got {replan!r}")
    checks = [
        ("--time-limit", time_limit, time_limit > 0 and math.isfinite(time_limit), "> 0"),
        ("--points", points, points is None or 1 <= points <= 100, "in [1, 100]"),
        (
            "--tokens-per-gpu",
            tokens_per_gpu,
            1 <= tokens_per_gpu <= MAX_TOKENS_PER_GPU,
            f"in [1, {MAX_TOKENS_PER_GPU:,}]",
        ),
        ("--weight-bytes", weight_bytes, 0 < weight_bytes <= 8 and math.isfinite(weight_bytes), "in (0, 8]"),
        ("--dump-steps", dump_steps, dump_steps >= 1, ">= 1"),
        ("--max-moves", max_moves, max_moves is None or max_moves >= 0, ">= 0"),
        (
            "--max-move-gb",
            max_move_gb,
            max_move_gb is None or (max_move_gb >= 0 and math.isfinite(max_move_gb)),
            ">= 0",
        ),
        (
            "--target-gain",
            target_gain,
            target_gain is None or (0 < target_gain <= 10 and math.isfinite(target_gain)),
            "in (0, 10]",
        ),
    ]
    for flag, value, ok, rule in checks:
        if not ok:
            raise SpecError(f"rebalance: {flag}: must be {rule}, got {value}")
    if output is not None and not output.parent.exists():
        raise SpecError(f"{output}: -o: directory {output.parent} does not exist")
    exports = [parse_export(spec) for spec in export or []]
    check_export_paths(exports)
    check_outputs(
        {"-o": output, **{f"--export {name}={path}": path for name, path in exports}},
        {
            "--model": model,
            "--cluster": cluster,
            "--trace": trace,
            "--trace-series": trace_series,
            "--current": current,
            "--calibration": calibration,
        },
    )
    model_spec = load_model(model)
    cluster_spec = load_cluster(cluster)
    cal = use_calibration(calibration, cluster_spec.gpu.slug)
    console = Console(stderr=True)
    # what every simulation of this run shares
    sim = {
        "engine": engine,
        "tokens_per_gpu": tokens_per_gpu,
        "calibration": cal,
        "weight_bytes": weight_bytes,
        "synchronous": synchronous,
    }
    if trace_series is not None:
        _series(model_spec, cluster_spec, trace_series, current, dump_steps, policy, sim, as_json, console)
    else:
        from tuner.rebalance import DEFAULT_POINTS

        choice = {
            "replan": replan,
            "time_limit_s": time_limit,
            "points": DEFAULT_POINTS if points is None else points,
            "max_moves": max_moves,
            "max_move_gb": max_move_gb,
            "target_gain": target_gain,
        }
        _one(model_spec, cluster_spec, trace, current, sim, choice, output, exports, as_json, console)
    sys.stdout.flush()
    announce_calibration(cal, calibration)


def _one(
    model_spec: Any,
    cluster_spec: Any,
    trace: str,
    current: Path,
    sim: dict[str, Any],
    choice: dict[str, Any],
    output: Path | None,
    exports: list[tuple[str, Path]],
    as_json: bool,
    console: Any,
) -> None:
    import sys

    from moesim import trace as tr
    from moesim.fileio import scratch_dir
    from tuner.engine_files import read_current
    from tuner.rebalance import rebalance

    engine = sim["engine"]
    routing = tr.load_trace(tr.resolve_trace(trace), model=model_spec)
    routing.check_model(model_spec, str(trace))
    deployed = read_current(current, model_spec, cluster_spec)
    with task_progress(console, "rebalancing") as bar:
        task = bar.add_task("full replan", total=None)

        def progress(done: int, total: int, text: str) -> None:
            bar.update(task, completed=done, total=total or None, description=text)

        with scratch_dir():  # an ilp replan's solver files
            result = rebalance(
                model_spec, cluster_spec, routing, deployed, **sim, **choice, progress=progress, origin=str(current)
            )
    written = _write(result.placement, model_spec, cluster_spec, output, exports, None, routing)
    if as_json:
        doc = {
            "engine": engine,
            "replan": choice["replan"],
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
        print(json.dumps(doc, indent=1))
        return
    from rich.console import Console

    out = Console(width=None if sys.stdout.isatty() else 132)  # a file or a pipe gets the table unwrapped
    print_points(result, engine, out)
    c = result.chosen
    frac = "" if c.gain_fraction is None else f", {100 * c.gain_fraction:.0f}% of the full replan's gain"
    out.print(
        f"chosen: {c.label}: MoE layer {c.latency_us:,.1f} us (deployed {result.current.latency_us:,.1f})"
        f"{frac}, stall {c.cost.stall_s:.3f} s, pays off after {c.payoff_steps:,.0f} steps"
    )
    for note in result.notes:
        out.print(f"note: {note}")
    if written:
        out.print(f"wrote {', '.join(written)}")


def _series(
    model_spec: Any,
    cluster_spec: Any,
    folder: Path,
    current: Path | None,
    dump_steps: int,
    policy: str,
    sim: dict[str, Any],
    as_json: bool,
    console: Any,
) -> None:
    import sys

    from tuner.cadence import cadence, load_series
    from tuner.engine_files import read_current, rows_for_layers
    from tuner.plan import place

    engine = sim["engine"]
    names, traces = load_series(folder, model_spec)
    layers = [int(x) for x in traces[0].layers]
    if current is not None:
        deployed = rows_for_layers(read_current(current, model_spec, cluster_spec), layers, str(current))
        if deployed.num_layers != len(layers):
            raise SpecError(f"{current}: layers: {deployed.num_layers} rows, the series records {len(layers)}")
    else:
        deployed = place(
            "eplb", model_spec, cluster_spec, traces[0], engine=engine, tokens_per_gpu=sim["tokens_per_gpu"]
        )
    with task_progress(console, "scoring intervals") as bar:
        task = bar.add_task("", total=None)

        def progress(done: int, total: int, text: str) -> None:
            bar.update(task, completed=done, total=total or None, description=text)

        result = cadence(
            model_spec,
            cluster_spec,
            names,
            traces,
            deployed,
            dump_steps=dump_steps,
            policy=policy,
            **sim,
            progress=progress,
        )
    if as_json:
        print(
            json.dumps(
                {
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
                },
                indent=1,
            )
        )
        return
    from rich.console import Console

    out = Console(width=None if sys.stdout.isatty() else 132)
    print_cadence(result, out)
    for note in result.notes:
        out.print(f"note: {note}")


def _write(
    placement: Any, model_spec: Any, cluster_spec: Any, output: Any, exports: list, eplb: Any, routing: Any
) -> list[str]:
    """Render every file first (each engine's rules checked), then write them together or not at all."""
    from moesim.fileio import OutputSet
    from moesim.placement import save_placement
    from tuner.engine_files import render_engine_file

    counts = None
    layers = placement.meta.get("layers")
    if layers is not None and [int(x) for x in layers] == [int(x) for x in routing.layers]:
        counts = routing.counts  # aligned with the rows (sglang-count carries them)
    rendered = [
        (
            path,
            render_engine_file(name, placement, model_spec, cluster_spec, counts=counts, eplb=eplb, origin=str(path)),
        )
        for name, path in exports
    ]
    written = []
    with OutputSet() as outputs:
        if output is not None:
            save_placement(placement, outputs.staged(output))
            written.append(str(output))
        for path, data in rendered:
            outputs.staged(path).write_bytes(data)
            written.append(str(path))
    return written


def register(app: typer.Typer) -> None:
    app.command(
        "rebalance",
        help=f"Rebalance a deployed placement for a newer load.\n\nExample: {EXAMPLE}\n\nInterval advice: "
        f"{SERIES_EXAMPLE}",
        epilog=f"Example: {EXAMPLE}",
    )(rebalance_cmd)

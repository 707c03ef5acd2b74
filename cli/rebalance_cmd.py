"""``moesim rebalance``: which expert moves are worth making for a newer load, and how often to rebalance."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer

from cli.options import (
    announce_calibration,
    calibration_option,
    task_progress,
    use_calibration,
)
from cli.rebalance_tables import cadence_dict, print_cadence, print_points, rebalance_dict
from moesim.errors import SpecError
from moesim.options import ENGINE_HELP
from tuner.engine_files import FORMATS
from tuner.rebalance import (
    DEFAULT_DUMP_STEPS,
    DEFAULT_ENGINE,
    DEFAULT_POINTS,
    DEFAULT_TIME_LIMIT_S,
    DEFAULT_WEIGHT_BYTES,
    POLICIES,
    REPLANS,
)

# --stall: does serving stop for the moves (auto: as the engine's rebalancer, tuner.engine_facts)
STALLS = ("auto", "sync", "overlapped")

EXAMPLE = (
    "moesim rebalance --current p_c4.json --trace profiles/traces/olmoe_github.npz --model olmoe-1b-7b "
    "--cluster h100-2x8-ib400 --max-moves 16 --json"
)
SERIES_EXAMPLE = (
    "moesim rebalance --trace-series dumps/ --current p.json --model deepseek-v3 --cluster h100-8x8-ib400 "
    f"--dump-steps {DEFAULT_DUMP_STEPS}"
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
    dump_steps: int = typer.Option(
        DEFAULT_DUMP_STEPS, "--dump-steps", help="forward steps between two snapshots of the series"
    ),
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
    engine: str = typer.Option(DEFAULT_ENGINE, "--engine", help=ENGINE_HELP),
    stall: str = typer.Option(
        "auto",
        "--stall",
        help="does serving stop for the moves: auto (as the engine's rebalancer: SGLang and vLLM "
        "stop, profiles/reference/engine_rebalance.yaml) | sync | overlapped (copied while serving, as TensorRT-LLM's "
        "online balancer)",
    ),
    time_limit: float = typer.Option(
        DEFAULT_TIME_LIMIT_S, "--time-limit", help="seconds for the move search (and the ilp replan)"
    ),
    points: int = typer.Option(DEFAULT_POINTS, "--points", help="curve points to simulate and show"),
    tokens_per_gpu: int = typer.Option(4096, "--tokens-per-gpu", help="tokens on each GPU per layer"),
    weight_bytes: float = typer.Option(
        DEFAULT_WEIGHT_BYTES, "--weight-bytes", help="bytes per expert weight (bf16 2, fp8 1)"
    ),
    output: Path | None = typer.Option(None, "-o", "--output", help="write the chosen plan as moesim placement YAML"),
    export: list[str] | None = typer.Option(
        None,
        "--export",
        help=f"also write the chosen plan as FORMAT=PATH ({', '.join(FORMATS)}); repeatable",
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

    if (trace is None) == (trace_series is None):
        raise SpecError("rebalance: --trace/--trace-series: give exactly one")
    if trace_series is not None and (output is not None or export):
        raise SpecError("rebalance: -o/--export: --trace-series advises an interval and writes no plan")
    if trace is not None and current is None:
        raise SpecError("rebalance: --current: required with --trace (the placement now deployed)")
    if engine not in ENGINES:
        raise SpecError(f"rebalance: --engine: must be one of {', '.join(ENGINES)}, got {engine!r}")
    if stall not in STALLS:
        raise SpecError(f"rebalance: --stall: must be {', '.join(STALLS[:-1])} or {STALLS[-1]}, got {stall!r}")
    synchronous = None if stall == "auto" else stall == "sync"

    if policy not in POLICIES:
        raise SpecError(f"rebalance: --policy: must be one of {', '.join(POLICIES)}, got {policy!r}")
    if replan not in REPLANS:
        raise SpecError(f"rebalance: --replan: must be one of {', '.join(REPLANS)}, got {replan!r}")
    checks = [
        ("--time-limit", time_limit, time_limit > 0 and math.isfinite(time_limit), "> 0"),
        ("--points", points, 1 <= points <= 100, "in [1, 100]"),
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
        choice = {
            "replan": replan,
            "time_limit_s": time_limit,
            "points": points,
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

    from moesim.fileio import scratch_dir
    from moesim.traces.formats import load_trace
    from moesim.traces.shipped import resolve_trace
    from tuner.engine_files import read_current
    from tuner.rebalance.flow import rebalance

    engine = sim["engine"]
    routing = load_trace(resolve_trace(trace), model=model_spec)
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
        print(json.dumps(rebalance_dict(result, engine, choice["replan"], written), indent=1))
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

    from tuner.engine_files import read_current, rows_for_layers
    from tuner.plan import place
    from tuner.rebalance.cadence import cadence, load_series

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
        print(json.dumps(cadence_dict(result, engine, policy, dump_steps), indent=1))
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

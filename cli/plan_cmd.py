"""``moesim plan``: place experts (with replicas) on a cluster from a routing trace, and compare methods."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer

from cli.options import (
    announce_calibration,
    calibration_option,
    dedup_ranks_option,
    task_progress,
    use_calibration,
)
from moesim.errors import SpecError
from moesim.options import ENGINE_HELP
from tuner.engine_files import FORMATS

EXAMPLE = (
    "moesim plan --model olmoe-1b-7b --cluster h100-2x8-ib400 --trace profiles/traces/olmoe_c4.npz "
    "--redundant-experts 16 -o placement.yaml --sglang placement.json"
)
EXAMPLE_EXPORT = (
    "moesim plan --model olmoe-1b-7b --cluster dgx-h100 --trace profiles/traces/olmoe_c4.npz --redundant-experts 8 "
    "-o p.yaml --current deployed.pt --export trtllm=eplb.yaml --export vllm-flags=eplb.txt"
)


def _fmt_bytes(v: float) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(v) >= div:
            return f"{v / div:,.2f} {unit}"
    return f"{v:,.0f} B"


def print_rows(rows: list[dict[str, Any]], notes: list[str], console: Any) -> None:
    from rich.table import Table

    table = Table(title="Expert placement: methods compared (per step, recorded layers)")
    # Headers wrap; the cells never do, so an 80-column terminal still shows every number whole.
    table.add_column("method", min_width=11, no_wrap=True)
    for col in (
        "max/mean GPU tokens",
        "cross-GPU",
        "cross-node",
        "MoE layer latency (us)",
        "solve (s)",
        "gap to bound",
    ):
        table.add_column(col, justify="right", overflow="fold")
    base = rows[0]["layer_latency_us"] if rows else None
    for r in rows:
        lat = f"{r['layer_latency_us']:,.1f}"
        if base and r is not rows[0]:
            lat += f" ({100 * (r['layer_latency_us'] / base - 1):+.1f}%)"
        gap = "" if r["gap"] is None else f"{100 * r['gap']:.2f}%"
        table.add_row(
            r["method"],
            f"{r['max_mean_load']:.3f}",
            _fmt_bytes(r["cross_gpu_bytes"]),
            _fmt_bytes(r["cross_node_bytes"]),
            lat,
            f"{r['solve_s']:.1f}" if r["method"] == "ilp" else "",
            gap,
        )
    console.print(table)
    for note in notes:
        console.print(f"note: {note}")


def sglang_launch_flags(placement: Any, cluster: Any, path: Path, engine: str) -> str:
    """The ``sglang.launch_server`` flags the written map needs (server_args.py of SGLang 0.5.14): EP over
    every GPU, the redundant slots, the map file, the node count, and the dispatch rule the plan was scored
    under (``static`` unless it was ``sglang-dynamic``)."""
    redundant = placement.num_physical - placement.num_experts
    algorithm = "dynamic" if engine == "sglang-dynamic" else "static"
    flags = [
        f"--tp-size {cluster.num_gpus}",
        f"--ep-size {cluster.num_gpus}",
        f"--ep-num-redundant-experts {redundant}",
        f"--init-expert-location {path}",
        f"--ep-dispatch-algorithm {algorithm}",
    ]
    if cluster.num_nodes > 1:
        flags.append(f"--nnodes {cluster.num_nodes}")
    return " ".join(flags)


def plan_cmd(
    model: str = typer.Option(..., "--model", help="model slug or YAML path (e.g. olmoe-1b-7b)"),
    cluster: str = typer.Option(..., "--cluster", help="cluster slug or YAML path (e.g. dgx-h100)"),
    trace: str = typer.Option(
        ...,
        "--trace",
        help="routing trace: native .npz/JSON, an SGLang dump (.pt) or a folder of them, vLLM .npy, or a shipped "
        "trace's slug",
    ),
    dedup_ranks: bool = dedup_ranks_option(),
    output: Path = typer.Option(..., "-o", "--output", help="placement YAML to write"),
    redundant_experts: int = typer.Option(0, "--redundant-experts", help="extra replica slots per layer (all GPUs)"),
    solver: str = typer.Option("cbc", "--solver", help="cbc | highs"),
    time_limit: float = typer.Option(
        60.0, "--time-limit", help="wall seconds for the whole plan: baselines, MILP, refinement, simulations"
    ),
    current: Path | None = typer.Option(
        None,
        "--current",
        help="placement now deployed (adds a move cost): moesim YAML, SGLang .json/.pt (physical_to_logical_map "
        "or logical_count) or TensorRT-LLM EPLB YAML",
    ),
    hierarchical: bool = typer.Option(False, "--hierarchical", help="experts to nodes first, then to GPUs"),
    split: str = typer.Option(
        "even", "--split", help="replica shares: even (as SGLang and vLLM dispatch) | continuous"
    ),
    tokens_per_gpu: int = typer.Option(4096, "--tokens-per-gpu", help="tokens on each GPU per layer"),
    sglang: Path | None = typer.Option(
        None, "--sglang", help="also write SGLang's --init-expert-location file (.json)"
    ),
    export: list[str] | None = typer.Option(
        None,
        "--export",
        help=f"also write an engine file, FORMAT=PATH (repeatable); FORMAT: {', '.join(FORMATS)}",
    ),
    engine: str | None = typer.Option(
        None, "--engine", help=ENGINE_HELP + ". Default: sglang-static with --sglang, else placement"
    ),
    dependency: str = typer.Option(
        "home",
        "--dependency",
        help="where a token goes between MoE layers: home (back to its rank, as SGLang/vLLM with DP attention and "
        "DeepEP and Megatron run: no cross-layer term) | transitions (it stays with its expert, MoETuner's "
        "assumption: transitions across GPUs and nodes priced as traffic)",
    ),
    calibration: str = calibration_option(),
    as_json: bool = typer.Option(False, "--json", help="print the comparison rows as JSON"),
) -> None:
    """Place experts on GPUs (MILP, with replicas) and compare with contiguous, round-robin and EPLB."""
    import sys

    from rich.console import Console

    from moesim.placement import save_placement
    from moesim.specs import load_cluster, load_model
    from moesim.traces.formats import load_trace
    from moesim.traces.shipped import resolve_trace
    from tuner.ilp.backends import SOLVERS
    from tuner.plan import ROW_KEYS, plan

    if solver not in SOLVERS:  # checked again by the solver, but only after the baselines: fail before them
        raise SpecError(f"plan: --solver: must be {' or '.join(SOLVERS)}, got {solver!r}")
    from moesim.engine_dispatch import ENGINES

    engine = engine or ("sglang-static" if sglang is not None else "placement")
    if engine not in ENGINES:
        raise SpecError(f"plan: --engine: must be one of {', '.join(ENGINES)}, got {engine!r}")
    if not time_limit > 0:
        raise SpecError(f"plan: --time-limit: must be > 0, got {time_limit}")
    from moesim.specs import MAX_TOKENS_PER_GPU

    if not 1 <= tokens_per_gpu <= MAX_TOKENS_PER_GPU:
        raise SpecError(
            f"plan: --tokens-per-gpu: must be in [1, {MAX_TOKENS_PER_GPU:,}] (moesim's limit), got {tokens_per_gpu:,}"
        )
    if redundant_experts < 0:
        raise SpecError(f"plan: --redundant-experts: must be >= 0, got {redundant_experts}")
    from tuner.placers.base import DEPENDENCIES

    if dependency not in DEPENDENCIES:
        raise SpecError(f"plan: --dependency: must be one of {', '.join(DEPENDENCIES)}, got {dependency!r}")
    if not output.parent.exists():
        raise SpecError(f"{output}: -o: directory {output.parent} does not exist")
    from moesim.fileio import check_outputs
    from tuner.engine_files import check_export_paths, parse_export

    exports = [parse_export(spec) for spec in export or []]
    check_export_paths(exports)
    # no output may be a directory, an input (model, cluster, trace, --current, calibration files) or the other
    check_outputs(
        {"-o": output, "--sglang": sglang, **{f"--export {name}={path}": path for name, path in exports}},
        {"--model": model, "--cluster": cluster, "--trace": trace, "--current": current, "--calibration": calibration},
    )
    if sglang is not None:
        from tuner.sglang import check_sglang_path

        check_sglang_path(sglang)  # before the solve, so a bad name costs nothing
    model_spec = load_model(model)
    cluster_spec = load_cluster(cluster)
    trace_path = resolve_trace(trace)
    routing = load_trace(trace_path, model=model_spec, dedup_ranks=dedup_ranks)  # the model fills in gaps
    routing.check_model(model_spec, str(trace_path))
    cal = use_calibration(calibration, cluster_spec.gpu.slug)
    cur = None
    if current is not None:
        from tuner.engine_files import read_current, rows_for_layers

        # any format moesim reads, checked against the model, the GPUs and the slots; an engine file's rows (every
        # MoE layer) cut to the trace's layers
        cur = read_current(current, model_spec, cluster_spec, redundant_experts)
        cur = rows_for_layers(cur, routing.layers, str(current))

    console = Console(stderr=True)
    with task_progress(console, "solving") as bar:
        task = bar.add_task("baselines", total=None)

        def progress(done: int, total: int, text: str) -> None:
            bar.update(task, completed=done, total=total, description=text)

        from moesim.fileio import scratch_dir

        with scratch_dir():  # the solver's temp files, swept by the next run if this one is killed
            result = plan(
                model_spec,
                cluster_spec,
                routing,
                redundant_experts=redundant_experts,
                solver=solver,
                time_limit_s=time_limit,
                current=cur,
                hierarchical=True if hierarchical else None,
                split=split,
                tokens_per_gpu=tokens_per_gpu,
                trace_name=str(trace),
                progress=progress,
                calibration=cal,
                engine=engine,
                dependency=dependency,
            )

    notes = list(result.notes)
    filled: list[int] = []
    if sglang is not None:  # build the map before writing anything, so an error leaves no file behind
        from tuner.sglang import physical_to_logical_map, save_sglang, support_note

        physical_to_logical_map(result.best, model_spec)
    from tuner.engine_files import render_engine_file

    # every engine file rendered (and so checked) before any is written
    exported = [
        (path, render_engine_file(name, result.best, model_spec, cluster_spec, counts=routing.counts, origin=str(path)))
        for name, path in exports
    ]
    from moesim.fileio import OutputSet

    with OutputSet() as outputs:  # the placement and the engine files appear together, or none of them
        save_placement(result.best, outputs.staged(output))
        if sglang is not None:
            filled = save_sglang(result.best, model_spec, outputs.staged(sglang))
        for path, data in exported:
            outputs.staged(path).write_bytes(data)
    if sglang is not None:
        if filled:
            notes.append(f"{sglang}: {len(filled)} MoE layers not in the trace take SGLang's trivial mapping")
        warning = support_note(model_spec)
        if warning:
            notes.append(f"{sglang}: {warning}")
    from tuner.engine_files import REGISTRY

    for name, path in exports:
        if REGISTRY[name].engine == "sglang":
            from tuner.sglang import support_note

            warning = support_note(model_spec)
            if warning:
                notes.append(f"{path}: {warning}")
    rows = [{k: r[k] for k in ROW_KEYS} for r in result.rows]
    if as_json:
        print(
            json.dumps(
                [
                    {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
                    for r in rows
                ],
                indent=1,
            )
        )
    else:
        out = Console()
        print_rows(rows, notes, out)
        ilp = result.ilp
        out.print(
            f"ILP: {ilp.solver}, status {ilp.status}, objective {result.rows[-1]['predicted_us']:,.1f} us "
            f"predicted, lower bound {result.bound['objective_us']:,.1f} us: gap {100 * result.rows[-1]['gap']:.2f}% "
            f"(subproblems, each given its neighbours: {100 * ilp.gap:.2f}%, worst {100 * ilp.max_sub_gap:.2f}%; "
            f"{len(ilp.subproblems)} in {ilp.solve_s:.1f} s)"
        )
        written = [str(output)] + ([str(sglang)] if sglang else []) + [str(path) for path, _ in exported]
        out.print(f"wrote {', '.join(written[:-1])} and {written[-1]}" if len(written) > 1 else f"wrote {output}")
        if sglang is not None:
            out.print(f"launch SGLang with: {sglang_launch_flags(result.best, cluster_spec, sglang, engine)}")
    sys.stdout.flush()
    announce_calibration(cal, calibration)


def register(app: typer.Typer) -> None:
    app.command(
        "plan",
        help=f"Place experts (with replicas) on GPUs from a routing trace.\n\nExample: {EXAMPLE}\n\n"
        f"Engine files: {EXAMPLE_EXPORT}",
        epilog=f"Example: {EXAMPLE}",
    )(plan_cmd)

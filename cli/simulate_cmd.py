"""``moesim simulate``: predict an MoE model step on a cluster, per layer, and say where the time goes."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Optional

import typer

from cli.options import (
    announce_calibration,
    calibration_option,
    dedup_ranks_option,
    use_calibration,
)
from moesim.errors import SpecError

EXAMPLE = "moesim simulate --model deepseek-v3 --cluster h100-8x8-ib400 --synthetic zipf:1.2 --json"


def load_inputs(
    model: str,
    cluster: str,
    trace: str | None,
    synthetic: str | None,
    tokens_per_gpu: int,
    seed: int = 0,
    dedup_ranks: bool = False,
) -> tuple[Any, Any, Any]:
    """Model, cluster and routing trace as the command line names them."""
    from moesim.specs import load_cluster, load_model
    from moesim.traces.formats import load_trace
    from moesim.traces.shipped import resolve_trace
    from moesim.traces.synthetic import parse_synthetic, step_synthetic_tokens, synthetic_trace

    model_spec = load_model(model)
    cluster_spec = load_cluster(cluster)
    if trace is not None and synthetic is not None:
        raise SpecError("simulate: --trace/--synthetic: give one, not both")
    if trace is not None:
        path = resolve_trace(trace)
        routing = load_trace(path, model=model_spec, dedup_ranks=dedup_ranks)  # the model fills in gaps
        routing.check_model(model_spec, str(path))
    else:
        # an empty --synthetic '' is an error, not the default
        params = parse_synthetic("zipf:1.2" if synthetic is None else synthetic)
        num_tokens = step_synthetic_tokens(tokens_per_gpu, cluster_spec.num_gpus)
        params = dict(params)
        params.setdefault("seed", seed)
        params["with_topk_ids"] = False
        params["with_transitions"] = False  # the simulator reads counts only
        routing = synthetic_trace(model_spec, num_tokens, **params)
    return model_spec, cluster_spec, routing


def _bar(step: Any, width: int = 60) -> Any:
    """A one-line stacked bar of the step: attention, dense, and the MoE phases of the tail GPUs."""
    from rich.text import Text

    phases = step.phase_us()
    from moesim.results import PHASES

    moe_parts = {k: phases[f"{k}_us"] for k in PHASES}
    # with overlap the MoE phases add up to more than the MoE time: show them in proportion to it
    moe_sum = sum(moe_parts.values())
    if moe_sum > 0:
        moe_parts = {k: v * step.moe_us / moe_sum for k, v in moe_parts.items()}
    parts = {"attention": step.attention_us, "dense": step.dense_us + step.lm_head_us, **moe_parts}
    colors = {
        "attention": "blue",
        "dense": "cyan",
        "router": "white",
        "permute": "yellow",
        "dispatch": "red",
        "compute": "green",
        "combine": "magenta",
    }
    total = sum(parts.values()) or 1.0
    bar = Text()
    legend = Text()
    for name, value in parts.items():
        cells = round(width * value / total)
        bar.append("█" * cells, style=colors[name])
        legend.append(f"■ {name} {100 * value / total:.1f}%  ", style=colors[name])
    return Text.assemble(bar, "\n", legend)


def print_step(step: Any, console: Any | None = None) -> None:
    """Rich table per layer, then the breakdown bar and the step totals."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=max(Console().width, 132))
    table = Table(
        title=f"{step.model} on {step.cluster} ({step.num_gpus} GPUs, "
        f"{step.options.tokens_per_gpu} tokens/GPU): MoE layers, tail GPU, ms"
    )
    for col in (
        "layer",
        "latency",
        "router",
        "permute",
        "dispatch",
        "compute",
        "combine",
        "max/mean tok",
        "dropped",
        "NVLink GB",
        "network GB",
    ):
        table.add_column(col, justify="right", no_wrap=True)
    for la in step.layers:
        ratio = la.max_gpu_tokens / la.mean_gpu_tokens if la.mean_gpu_tokens else 0.0
        table.add_row(
            str(la.layer),
            *(
                f"{v / 1e3:,.3f}"
                for v in (
                    la.latency_us,
                    la.router_us,
                    la.permute_us,
                    la.dispatch_us,
                    la.compute_us,
                    la.combine_us,
                )
            ),
            f"{ratio:.2f}",
            f"{100 * la.dropped_fraction:.1f}%",
            f"{la.nvlink_bytes / 1e9:.2f}",
            f"{la.network_bytes / 1e9:.2f}",
        )
    console.print(table)
    console.print(_bar(step))
    console.print(
        f"step {step.step_latency_us / 1e3:,.2f} ms  |  MoE {100 * step.moe_share:.1f}%  |  "
        f"exposed all-to-all {100 * step.alltoall_share:.1f}%  |  attention "
        f"{step.attention_us / 1e3:,.2f} ms  |  dense + head {(step.dense_us + step.lm_head_us) / 1e3:,.2f} ms"
    )


def _run(
    model: str,
    cluster: str,
    trace: str | None,
    synthetic: str | None,
    placement: Path | None,
    seed: int,
    dedup_ranks: bool,
    calibration: str,
    per_gpu: bool,
    as_json: bool,
    **flags: Any,
) -> None:
    """Predict one step: per MoE layer router, permute, dispatch, compute, combine of the slowest GPU."""
    from moesim.simulate import check_placement, simulate

    options = _sim_options(flags)  # SpecError "options: FIELD: PROBLEM" before any input is read
    model_spec, cluster_spec, routing = load_inputs(
        model, cluster, trace, synthetic, options.tokens_per_gpu, seed, dedup_ranks
    )
    pl = None
    if placement is not None:
        from moesim.placement import load_placement

        if not placement.exists():
            raise SpecError(f"{placement}: placement: no such file")
        pl = load_placement(placement)
        check_placement(pl, model_spec, int(cluster_spec.num_gpus), origin=str(placement))
    cal = use_calibration(calibration, cluster_spec.gpu.slug)  # SpecError naming the file and field
    step = simulate(model_spec, cluster_spec, routing, pl, options, calibration=cal)
    if as_json:
        print(json.dumps(step.to_dict(per_gpu=per_gpu), indent=1))
    else:
        print_step(step)
    announce_calibration(cal, calibration)


def _sim_options(flags: dict[str, Any]) -> Any:
    """``SimOptions`` from the option flags: a bool field's flag sets it to ``not default``."""
    from moesim.options import SimOptions, cli_fields

    values = {}
    for f in cli_fields():
        value = flags[f.name]
        values[f.name] = (not f.default if value else f.default) if isinstance(f.default, bool) else value
    return SimOptions(**values)


def _option_parameters() -> list[inspect.Parameter]:
    """One ``typer.Option`` per ``SimOptions`` field with ``cli=True``, from its metadata (``moesim.options``)."""
    from moesim.options import SimOptions, cli_fields, cli_flags, field_kind, meta_of

    out = []
    for f in cli_fields():
        kind = field_kind(SimOptions, f.name)
        flag_only = kind is bool  # a switch: given, the field takes the other value
        default = False if flag_only else f.default
        annotation = Optional[kind] if f.default is None else kind  # noqa: UP045 (typer reads typing.Optional)
        opt = typer.Option(default, *cli_flags(f), help=meta_of(f).help)
        out.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=annotation))
    return out


def _parameter(name: str, annotation: Any, opt: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=annotation)


def _command_signature() -> inspect.Signature:
    """The inputs, then the simulator's options (:func:`_option_parameters`), then the output flags."""
    inputs = [
        _parameter("model", str, typer.Option(..., "--model", help="model slug or YAML path (e.g. deepseek-v3)")),
        _parameter(
            "cluster", str, typer.Option(..., "--cluster", help="cluster slug or YAML path (e.g. h100-8x8-ib400)")
        ),
        _parameter(
            "trace",
            Optional[str],  # noqa: UP045
            typer.Option(None, "--trace", help="routing trace file, or a shipped trace's slug"),
        ),
        _parameter(
            "synthetic",
            Optional[str],  # noqa: UP045
            typer.Option(
                None,
                "--synthetic",
                help="synthetic routing: zipf:1.2 | dirichlet:0.3 | uniform (default zipf:1.2 when no --trace)",
            ),
        ),
        _parameter(
            "placement",
            Optional[Path],  # noqa: UP045
            typer.Option(None, "--placement", help="placement YAML (default: contiguous)"),
        ),
    ]
    outputs = [
        _parameter("seed", int, typer.Option(0, "--seed", help="seed of the synthetic trace")),
        _parameter("dedup_ranks", bool, dedup_ranks_option()),
        _parameter("calibration", str, calibration_option()),
        _parameter(
            "per_gpu", bool, typer.Option(False, "--per-gpu", help="with --json: add per-GPU latency and tokens")
        ),
        _parameter("as_json", bool, typer.Option(False, "--json", help="print one JSON object instead of tables")),
    ]
    return inspect.Signature([*inputs, *_option_parameters(), *outputs], return_annotation=None)


def simulate_cmd(**kwargs: Any) -> None:
    """Predict one step: per MoE layer router, permute, dispatch, compute, combine of the slowest GPU.

    Its parameters are :func:`_command_signature` (typer reads ``__signature__``): the option flags come from
    the ``SimOptions`` fields' metadata, so a new option needs no change here.
    """
    _run(**kwargs)


def register(app: typer.Typer) -> None:
    app.command(
        "simulate",
        help=f"Predict an MoE model step on a cluster.\n\nExample: {EXAMPLE}",
        epilog=f"Example: {EXAMPLE}",
    )(_with_signature(simulate_cmd))


def _with_signature(func: Any) -> Any:
    func.__signature__ = _command_signature()
    return func

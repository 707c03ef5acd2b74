"""``moesim validate`` (the cost model against measured tables) and ``moesim calibrate`` (fit a calibration)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

VALIDATE_EXAMPLE = (
    "moesim validate --measured $(python -c 'import aiconfigurator_core,os;"
    "print(os.path.dirname(aiconfigurator_core.__file__))')/systems/data/h100_sxm/moe/vllm/0.24.0/moe_perf.parquet "
    "--folds 4 --rows r.csv --json"
)
CALIBRATE_EXAMPLE = (
    "moesim calibrate --measured <aiconfigurator data>/h100_sxm/moe/vllm/0.24.0/moe_perf.parquet "
    "--measured <...>/h100_sxm/comm/nccl/2.29.2/nccl_perf.parquet -o profiles/measured/h100-sxm/calibration.json"
)

MeasuredOpt = Annotated[
    list[Path],
    typer.Option(
        "--measured",
        help="measured table: a moesim records .jsonl, a folder of them, or an AIConfigurator parquet table "
        "(moe_perf, wideep_deepep_normal_perf, wideep_deepep_ll_perf, nccl_perf); repeatable",
        show_default=False,
    ),
]


def _progress(enabled: bool):  # noqa: ANN202 -- a rich Progress context manager and its callback
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    err = Console(stderr=True)
    prog = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, disable=not enabled,
    )  # fmt: skip
    state: dict[str, int] = {}

    def update(label: str, done: int, total: int) -> None:
        if "task" not in state:
            state["task"] = prog.add_task(label, total=total)
        prog.update(state["task"], completed=done, total=total, description=label)

    return prog, update


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=None if Console().is_terminal else 160)
    for dev, desc in summary["calibrations"].items():
        con.print(f"[bold]{dev}[/bold]: calibration {desc}")
    t = Table(title="error per family (e = predicted / measured - 1)")
    for c in ("gpu", "family", "rows", "MAPE %", "median %", "p90 %", "bias %", "unpredicted"):
        t.add_column(c, justify="left" if c in ("gpu", "family") else "right")
    for f in summary["families"]:
        if "rows" not in f:
            t.add_row(f["gpu"], f["family"], "0", "-", "-", "-", "-", str(f["unpredicted"]))
            continue
        t.add_row(
            f["gpu"], f["family"], str(f["rows"]), f"{f['mape_pct']:.1f}", f"{f['median_pct']:.1f}",
            f"{f['p90_pct']:.1f}", f"{f['bias_pct']:+.1f}", str(f["unpredicted"]),
        )  # fmt: skip
    con.print(t)
    for f in summary["families"]:
        for key, groups in (f.get("by") or {}).items():
            cells = "  ".join(f"{k}: {v['mape_pct']:.1f}% ({v['bias_pct']:+.0f})" for k, v in groups.items())
            con.print(f"  {f['gpu']} {f['family']} by {key}: {cells}")
    for table, reasons in summary["skipped"].items():
        for why, n in reasons.items():
            con.print(f"[dim]skipped {n} rows of {table}: {why}[/dim]")
    w = Table(title="ten worst rows")
    for c in ("gpu", "table", "row", "family", "measured us", "predicted us", "error %", "fold"):
        w.add_column(c)
    for r in summary["worst"]:
        w.add_row(
            str(r["gpu"]), r["table"], str(r["row"]), r["family"], f"{r['measured_us']:.1f}",
            f"{r['predicted_us']:.1f}", f"{r['error_pct']:+.1f}", "" if r["fold"] is None else str(r["fold"]),
        )  # fmt: skip
    con.print(w)


def validate_cmd(
    measured: MeasuredOpt,
    calibration: Annotated[
        str,
        typer.Option(
            "--calibration",
            help="auto (the GPU's shipped profiles/measured/<gpu>/calibration.json) | none (uncalibrated) | FILE",
        ),
    ] = "auto",
    folds: Annotated[
        int | None,
        typer.Option("--folds", help="refit per fold, K folds by model shape: every fitted row is predicted held out"),
    ] = None,
    rows: Annotated[Path | None, typer.Option("--rows", help="write one CSV line per predicted row")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="write predicted vs measured (log-log) PNG")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON document")] = False,
) -> None:
    """Predict measured kernel timings and report the error per family."""
    from moesim.errors import field_error
    from moesim.validate import run_validation, summarise, write_plot, write_rows_csv

    if not measured:
        raise field_error("--measured", "value", "give at least one measured table")
    if folds is not None and folds < 2:
        raise field_error("--folds", "value", f"must be >= 2, got {folds}")
    for p in (rows, plot):
        if p is not None and not p.parent.is_dir():
            raise field_error(str(p), "path", "its folder does not exist")
    prog, update = _progress(enabled=True)
    with prog:
        val = run_validation(measured, calibration=calibration, folds=folds, progress=update)
    summary = summarise(val)
    if rows is not None:
        write_rows_csv(val, rows)
    if plot is not None:
        write_plot(val, plot)
    if as_json:
        print(json.dumps(summary, indent=1, default=str))
    else:
        _print_summary(summary)


def calibrate_cmd(
    measured: MeasuredOpt,
    out: Annotated[Path, typer.Option("-o", "--out", help="calibration.json to write", show_default=False)],
    folds: Annotated[
        int, typer.Option("--folds", help="also measure the held-out error (K folds by shape) into held_out")
    ] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="print the calibration document")] = False,
) -> None:
    """Fit a calibration (fused MoE on vLLM tables, DeepEP, NCCL) for the device of the tables given."""
    from moesim.calibration.file_format import calibration_to_dict, save_calibration
    from moesim.errors import field_error
    from moesim.measured_fit import fit_calibration_from_records
    from moesim.specs import load_gpu
    from moesim.validate import load_measured, run_validation, summarise

    if not out.parent.is_dir():
        raise field_error(str(out), "path", "its folder does not exist")
    loaded = load_measured(measured)
    gpus = sorted({str(r.get("gpu")) for r in loaded.records})
    if len(gpus) != 1 or gpus[0] == "None":
        raise field_error("--measured", "device", f"the tables must hold exactly one known device, got {gpus}")
    gpu = load_gpu(gpus[0])
    held_out: dict = {}
    if folds:
        prog, update = _progress(enabled=True)
        with prog:
            val = run_validation(measured, calibration="none", folds=folds, progress=update)
        for f in summarise(val)["families"]:
            if "rows" in f and any(r["fold"] is not None for r in val.rows if r["family"] == f["family"]):
                held_out[f["family"]] = {k: round(f[k], 2) for k in ("rows", "mape_pct", "median_pct", "bias_pct")}
        held_out["method"] = f"{folds}-fold by model shape (moesim validate --folds {folds})"
    cal = fit_calibration_from_records(
        loaded.records,
        gpu,
        device_name=loaded.records[0]["device_name"],
        source=", ".join(t.get("table", "?") for t in loaded.tables),
        tables=[{k: v for k, v in t.items()} for t in loaded.tables],
    )
    from dataclasses import replace

    if cal.fused_moe is None:
        raise field_error("--measured", "tables", "no vLLM BF16 Triton fused-MoE rows: a calibration needs them")
    cal = replace(cal, held_out=held_out)
    written = save_calibration(cal, out)  # a folder gets calibration.json
    if as_json:
        print(json.dumps(calibration_to_dict(cal), indent=1))
    else:
        print(f"wrote {written}: {cal.describe}")
        for fam, e in held_out.items():
            if isinstance(e, dict):
                print(f"  held out {fam}: MAPE {e['mape_pct']:.1f}% bias {e['bias_pct']:+.1f}% ({e['rows']} rows)")


def register(app: typer.Typer) -> None:
    app.command(
        "validate",
        help=f"Check the cost model against measured tables.\n\nExample: {VALIDATE_EXAMPLE}",
        epilog=f"Example: {VALIDATE_EXAMPLE}",
    )(validate_cmd)
    app.command(
        "calibrate",
        help=f"Fit a calibration from measured tables.\n\nExample: {CALIBRATE_EXAMPLE}",
        epilog=f"Example: {CALIBRATE_EXAMPLE}",
    )(calibrate_cmd)

"""``moesim whatif``: evaluate a scenario sweep and write a report people can paste into a design review."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

EXAMPLE = "moesim whatif profiles/scenarios/ep_degree_deepseek_v3.yaml -o out/ep_degree --workers 2"


def register(app: typer.Typer) -> None:
    @app.command(
        "whatif",
        help=(
            "Sweep what-if scenarios (GPU count, interconnect, capacity factor, placement method, ...) "
            "and write DIR/report.html, report.md, results.csv and results.json.\n\n"
            f"Example: {EXAMPLE}"
        ),
        epilog=f"Example: {EXAMPLE}",
        no_args_is_help=True,
    )
    def whatif(
        scenarios: Annotated[Path, typer.Argument(help="Scenario YAML file (see docs/WHATIF.md).", show_default=False)],
        out: Annotated[
            Path, typer.Option("-o", "--out", help="Output directory for the report and results.", show_default=False)
        ],
        workers: Annotated[int, typer.Option("--workers", "-j", help="Worker processes for cache misses.")] = (
            os.cpu_count() or 1
        ),
        no_cache: Annotated[
            bool, typer.Option("--no-cache", help="Recompute every scenario (and do not store).")
        ] = False,
        json_out: Annotated[bool, typer.Option("--json", help="Print one JSON summary document on stdout.")] = False,
        detail: Annotated[
            bool,
            typer.Option(
                "--detail",
                help=(
                    "Keep the detail in results.json: the per-GPU arrays (gpu_load, gpu_load_max and, for solved "
                    "placements, placement: phy2log and shares, to rerun with moesim simulate --placement) and each "
                    "step's per-layer rows (simulate.layers); without it the file leaves them out."
                ),
            ),
        ] = False,
    ) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from moesim.errors import field_error
        from whatif.figures import start_plot_pool
        from whatif.report import flat_row, write_report
        from whatif.scenario import load_scenarios
        from whatif.sweep import run_whatif

        if workers < 1:
            raise field_error("--workers", "value", f"must be >= 1, got {workers}")
        if out.exists() and not out.is_dir():
            raise field_error(str(out), "-o", "exists and is not a directory")
        from moesim.fileio import check_outputs

        # the report's own names inside -o: nothing in their way, none of them an input
        names = ("report.html", "report.md", "results.csv", "results.json")
        check_outputs({f"-o ({n})": out / n for n in names}, {"SCENARIOS": scenarios})
        if (out / "plots").exists() and not (out / "plots").is_dir():
            raise field_error(str(out / "plots"), "-o (plots)", "exists and is not a directory")
        sf = load_scenarios(scenarios)
        from moesim.fileio import OutputSet

        err = Console(stderr=True)
        # started before the sweep: the plot workers import matplotlib (0.25 s) while the sweep draws its traces
        plot_pool = start_plot_pool(workers)
        try:
            with Progress(
                TextColumn("[bold]whatif[/bold] {task.description}"),
                BarColumn(bar_width=30),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=False,
                disable=json_out and not err.is_terminal,
            ) as progress:
                task = progress.add_task(Path(sf.path).name, total=len(sf.scenarios))

                def on_done(i: int, rec: dict, cached: bool) -> None:
                    progress.update(task, advance=1)

                run = run_whatif(sf, workers=workers, use_cache=not no_cache, on_done=on_done)

            with OutputSet() as outputs:  # the report's files appear together, or none of them
                staged = outputs.staged(out)
                paths = write_report(run, staged, detail=detail, pool=plot_pool)
        finally:
            if plot_pool is not None:
                plot_pool.shutdown(cancel_futures=True)
        paths = {k: out / Path(v).relative_to(staged) for k, v in paths.items()}

        if json_out:
            doc = {
                "title": sf.title,
                "objective": sf.objective,
                "baseline": run.baseline["name"],
                "best": run.best["name"],
                "best_gain_vs_baseline": run.gain(),
                "cache_hits": run.cache_hits,
                "wall_s": run.wall_s,
                "files": {k: str(v) for k, v in paths.items()},
                "scenarios": [flat_row(run, r) for r in run.records],
            }
            print(json.dumps(doc, indent=1))
            return
        _print_table(run, paths)


def _print_table(run: Any, paths: dict[str, Path]) -> None:
    """The summary table: scenario names already carry the swept values, so only the results are columns."""
    import sys

    from rich import box
    from rich.console import Console
    from rich.table import Table

    from whatif.report import summary_lines, table_rows

    sf = run.scenario_file
    head, rows = table_rows(run, [])
    table = Table(title=f"{sf.title}: {len(run.records)} scenarios", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column(head[0], overflow="fold", ratio=1)
    for h in head[1:]:
        table.add_column(h, justify="right", no_wrap=True)
    for rec, row in zip(run.records, rows):
        style = "bold green" if rec["is_best"] else "bold blue" if rec["is_baseline"] else None
        tag = " (base)" if rec["is_baseline"] else ""
        tag += " (best)" if rec["is_best"] else ""
        table.add_row(row[0] + tag, *row[1:], style=style)
    # piped output has no terminal width: give the table room rather than folding every number
    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(table)
    for line in summary_lines(run):
        console.print(line, highlight=False)
    failed = [r for r in run.records if "error" in r]
    for r in failed:
        console.print(f"cannot run: {r['name']}: {r['error']}", highlight=False, style="yellow")
    console.print(
        f"{run.cache_hits} of {len(run.records)} from cache; {run.wall_s:.1f} s. Wrote {paths['html']}, "
        f"{paths['md'].name}, {paths['csv'].name}, {paths['json'].name}",
        highlight=False,
    )

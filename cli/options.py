"""Options several commands share, defined once: the calibration a simulation runs with, SGLang rank dedup,
seeds, progress. The simulator's own options (the engine's help included, ``ENGINE_HELP``) are
``moesim.options.SimOptions``' fields (``moesim simulate`` derives its flags from them)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from moesim.compute import EfficiencyModel

CALIBRATION_HELP = (
    "auto (the GPU's shipped profiles/measured/<gpu>/calibration.json, fitted on AIConfigurator's measured "
    "tables) | none (the GPU profile's constants) | a calibration.json, its folder, or a measured device's name"
)


def calibration_option() -> Any:
    """``--calibration auto|none|FILE`` (default auto)."""
    return typer.Option("auto", "--calibration", help=CALIBRATION_HELP)


def use_calibration(spec: str, gpu_slug: str) -> Any:
    """Resolve ``--calibration`` for the cluster's GPU (``SpecError`` naming the file on a bad one)."""
    from moesim.calibration.resolve import resolve_calibration

    return resolve_calibration(spec, gpu_slug)


def announce_calibration(cal: EfficiencyModel | None, spec: str) -> None:
    """Say on stderr which calibration a finished command ran with (after its output, so an error stays the
    only line on stderr)."""
    from moesim.calibration.resolve import describe_calibration

    print(describe_calibration(cal, spec), file=sys.stderr)


DEDUP_RANKS_HELP = (
    "count a forward pass that several SGLang ranks recorded identically once (tensor-parallel ranks route the "
    "same tokens); by default every rank's pass counts, as data-parallel ranks can route identical tokens"
)


def dedup_ranks_option() -> Any:
    """``--dedup-ranks`` for commands that read SGLang per-rank dumps."""
    return typer.Option(False, "--dedup-ranks", help=DEDUP_RANKS_HELP)


def check_seed(value: int | None, option: str = "--seed") -> None:
    """A sampler seed in ``0 .. MAX_SEED`` (None: random), else a one-line error naming the option."""
    from moesim.errors import field_error
    from tuner.autotune.samplers.base import MAX_SEED

    if value is not None and not 0 <= value <= MAX_SEED:
        raise field_error(option, "value", f"must be in 0..{MAX_SEED}, got {value}")


def task_progress(console: Any, title: str) -> Any:
    """The progress bar of a long command: spinner, ``title``, bar, the task's text, elapsed time; on stderr's
    console, gone when done, and off when that is not a terminal."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(
        SpinnerColumn(),
        TextColumn(f"[bold]{title}[/]"),
        BarColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )

"""Options several commands share, defined once: the calibration a simulation runs with."""

from __future__ import annotations

import sys
from typing import Any

import typer

CALIBRATION_HELP = (
    "auto (the GPU's shipped profiles/measured/<gpu>/calibration.json, fitted on AIConfigurator's measured "
    "tables) | none (the GPU profile's constants) | a calibration.json, its folder, or a measured device's name"
)


def calibration_option() -> Any:
    """``--calibration auto|none|FILE`` (default auto)."""
    return typer.Option("auto", "--calibration", help=CALIBRATION_HELP)


def use_calibration(spec: str, gpu_slug: str) -> Any:
    """Resolve ``--calibration`` for the cluster's GPU (``SpecError`` naming the file on a bad one)."""
    from moesim.calibration import resolve_calibration

    return resolve_calibration(spec, gpu_slug)


def announce_calibration(cal: Any, spec: str) -> None:
    """Say on stderr which calibration a finished command ran with (after its output, so an error stays the
    only line on stderr)."""
    from moesim.calibration import describe_calibration

    print(describe_calibration(cal, spec), file=sys.stderr)

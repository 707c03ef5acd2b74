"""What a simulating command runs with: ``--calibration auto`` (the GPU's shipped calibration, else none),
``none`` (the GPU profile's constants) or a file (:func:`moesim.calibration.file_format.load_calibration`)."""

from __future__ import annotations

from pathlib import Path

from moesim.calibration.file_format import CALIBRATION_FILE, load_calibration
from moesim.calibration.model import Calibration
from moesim.specs.files import profiles_dir

__all__ = ["CALIBRATION_CHOICES", "describe_calibration", "resolve_calibration", "shipped_calibration_path"]

CALIBRATION_CHOICES = ("auto", "none")


def shipped_calibration_path(gpu_slug: str) -> Path:
    """Where the shipped calibration of a GPU profile lives: ``profiles/measured/<slug>/calibration.json``."""
    return profiles_dir() / "measured" / gpu_slug / CALIBRATION_FILE


def resolve_calibration(spec: str | None, gpu_slug: str) -> Calibration | None:
    """The calibration a command runs with.

    ``"auto"`` (or None): the GPU's shipped calibration when there is one, else None (the GPU profile's
    constants); ``"none"``: None; anything else: :func:`load_calibration` of it (``SpecError`` on problems).
    """
    if spec is None or spec == "auto":
        path = shipped_calibration_path(gpu_slug)
        return load_calibration(path) if path.is_file() else None
    if spec == "none":
        return None
    return load_calibration(spec)


def describe_calibration(cal: Calibration | None, spec: str | None) -> str:
    """The one line commands print about the calibration they used."""
    if cal is None:
        why = "--calibration none" if spec == "none" else "no shipped calibration for this GPU"
        return f"calibration: none ({why}; the GPU profile's constants)"
    return f"calibration: {cal.describe}"

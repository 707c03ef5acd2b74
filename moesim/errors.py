"""One root error class for everything moesim raises on purpose.

The CLI turns any ``MoesimError`` into a one-line message on stderr and exit code 2, with nothing written.
Messages name the file, the field and the bad value: ``profiles/models/x.yaml: top_k: must be >= 1, got 0``.
"""

from __future__ import annotations


class MoesimError(Exception):
    """Root of every error moesim raises deliberately."""


class SpecError(MoesimError):
    """Bad input file: malformed YAML/JSON, missing or mistyped field, impossible value."""


class TraceError(SpecError):
    """A routing trace that cannot be read, or does not fit the model it is used with."""


class PlacementError(SpecError):
    """A placement that omits an expert, overflows a GPU's slots or memory, or fits another model."""


class InfeasibleError(MoesimError):
    """An optimisation problem with no feasible solution (or no incumbent within the time limit)."""


class HardwareError(MoesimError):
    """The command needs hardware (a CUDA GPU) or an optional dependency that is not here."""


def field_error(source: str, field: str, problem: str) -> SpecError:
    """Build the canonical one-line message ``SOURCE: FIELD: PROBLEM``."""
    return SpecError(f"{source}: {field}: {problem}")

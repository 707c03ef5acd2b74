"""One root error class for everything moesim raises on purpose.

The CLI turns any ``MoesimError`` into a one-line message on stderr and exit code 2, with nothing written.
Messages name the file, the field and the bad value: ``profiles/models/x.yaml: top_k: must be >= 1, got 0``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


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


def check_keys(
    source: str, prefix: str, doc: Any, required: Iterable[str], optional: Iterable[str] = ()
) -> Mapping[str, Any]:
    """``doc`` as a mapping holding every ``required`` key (None counts as missing) and nothing beyond
    ``required`` and ``optional``; else ``SpecError`` ``SOURCE: PREFIX+KEY: PROBLEM``. ``prefix`` ends with
    ``.`` for a section (``"nccl."``) and is ``""`` at the top of a file."""
    if not isinstance(doc, Mapping):
        raise field_error(source, prefix.rstrip(".") or "document", f"expected a mapping, got {doc!r}")
    req, opt = tuple(required), tuple(optional)
    for key in req:
        if doc.get(key) is None:
            raise field_error(source, f"{prefix}{key}", "missing")
    unknown = sorted(set(map(str, doc)) - set(req) - set(opt))
    if unknown:
        known = ", ".join(sorted(req + opt))
        raise field_error(source, f"{prefix}{unknown[0]}", f"unknown field (known fields: {known})")
    return doc

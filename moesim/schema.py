"""One schema walker for every loader: typed, range- and finiteness-checked access to parsed input, each failure
one ``SpecError`` line ``FILE: FIELD: PROBLEM``.

:class:`Fields` walks one mapping (model, GPU and cluster specs, placement and trace headers); :func:`int_array`
and :func:`number_array` check the arrays a file carries (counts, transitions, expert ids, shares) before numpy
would silently cast, overflow or raise on them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from moesim.errors import SpecError

__all__ = ["Fields", "int_array", "number_array"]


class Fields:
    """Typed access to one mapping of a spec file; every failure names the file and the dotted field."""

    def __init__(self, src: str, data: dict[str, Any], prefix: str = "", error: type[SpecError] = SpecError) -> None:
        self.src = src
        self.data = data
        self.prefix = prefix
        self.used: set[str] = set()
        self.error = error  # the SpecError subclass the loader raises (TraceError, PlacementError)

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def err(self, key: str, problem: str) -> SpecError:
        return self.error(f"{self.src}: {self.name(key)}: {problem}")

    def raw(
        self,
        key: str,
        default: Any = ...,
    ) -> Any:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if default is ...:
                raise self.err(key, "missing")
            return default
        return self.data[key]

    def str_(self, key: str, default: Any = ..., choices: tuple[str, ...] | None = None) -> str:
        v = self.raw(key, default)
        if not isinstance(v, str):
            raise self.err(key, f"expected a string, got {v!r}")
        if choices is not None and v not in choices:
            raise self.err(key, f"must be one of {', '.join(choices)}, got {v!r}")
        return v

    def int_(self, key: str, default: Any = ..., minimum: int = 0, maximum: int | None = None) -> int:
        v = self.raw(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.err(key, f"expected an integer, got {v!r}")
        if v < minimum:
            raise self.err(key, f"must be >= {minimum}, got {v}")
        if maximum is not None and v > maximum:
            raise self.err(key, f"must be <= {maximum:,} (moesim's limit), got {v:,}")
        return v

    def float_(
        self,
        key: str,
        default: Any = ...,
        minimum: float = 0.0,
        positive: bool = False,
        maximum: float | None = None,
    ) -> float:
        v = self.raw(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.err(key, f"expected a number, got {v!r}")
        v = float(v)
        if not math.isfinite(v):
            raise self.err(key, f"must be finite, got {v}")
        if positive and v <= 0:
            raise self.err(key, f"must be > 0, got {v:g}")
        if v < minimum:
            raise self.err(key, f"must be >= {minimum:g}, got {v:g}")
        if maximum is not None and v > maximum:
            raise self.err(key, f"must be <= {maximum:g}, got {v:g}")
        return v

    def section(self, key: str, required_because: str | None = None) -> Fields | None:
        """An optional sub-mapping; ``required_because`` makes it required (the reason goes in the message)."""
        v = self.raw(key, None)
        if v is None:
            if required_because:
                raise self.err(key, f"missing: {required_because}")
            return None
        if not isinstance(v, dict):
            raise self.err(key, f"expected a mapping, got {v!r}")
        return Fields(self.src, v, f"{self.name(key)}.", self.error)

    def done(self, optional: tuple[str, ...] = ()) -> None:
        """Unknown keys are errors: a typo (``top_K``) must not silently fall back to a default."""
        unknown = sorted(set(map(str, self.data)) - self.used - set(optional))
        if unknown:
            known = ", ".join(sorted(self.used | set(optional)))
            raise self.err(unknown[0], f"unknown field (known fields: {known})")


def number_array(
    value: Any,
    source: str,
    field: str,
    minimum: float | None = None,
    maximum: float | None = None,
    ndim: int | None = None,
    error: type[SpecError] = SpecError,
) -> np.ndarray:
    """``value`` (nested lists or an array) as float64, every entry a finite number within the bounds and the
    array of ``ndim`` dimensions; else ``error`` (a ``SpecError``) naming ``source`` and ``field``."""

    def field_error(source: str, field: str, problem: str) -> SpecError:
        return error(f"{source}: {field}: {problem}")

    if isinstance(value, (str, bytes, dict)):
        raise field_error(source, field, f"expected an array of numbers, got {type(value).__name__}")
    try:
        a = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise field_error(source, field, f"not a rectangular array ({exc})") from None
    if a.dtype == bool or a.dtype.kind not in "iuf":
        raise field_error(source, field, f"expected numbers, got {a.dtype} entries")
    a = a.astype(np.float64)
    if ndim is not None and a.ndim != ndim:
        raise field_error(source, field, f"expected {ndim} dimensions, got shape {a.shape}")
    if a.size and not np.isfinite(a).all():
        raise field_error(source, field, "entries must be finite (no NaN or infinity)")
    if minimum is not None and a.size and a.min() < minimum:
        raise field_error(source, field, f"entries must be >= {minimum:g}, got {a.min():g}")
    if maximum is not None and a.size and a.max() > maximum:
        raise field_error(source, field, f"entries must be <= {maximum:g}, got {a.max():g}")
    return a


def int_array(
    value: Any,
    source: str,
    field: str,
    minimum: int | None = None,
    maximum: int | None = None,
    ndim: int | None = None,
    dtype: Any = np.int64,
    error: type[SpecError] = SpecError,
) -> np.ndarray:
    """:func:`number_array` whose entries are also whole numbers, as ``dtype`` (default int64, within its range).

    Integer input is range-checked as integers: through float64, ``2**63`` (a uint64 entry, or a float) compares
    equal to the int64 maximum and would wrap to its minimum."""
    bound = np.iinfo(dtype)
    lo = bound.min if minimum is None else max(minimum, bound.min)
    hi = bound.max if maximum is None else min(maximum, bound.max)
    ints = None
    if isinstance(value, (list, tuple, np.ndarray)):
        try:
            ints = np.asarray(value)
        except (ValueError, TypeError, OverflowError):
            pass  # ragged or mixed: number_array names the problem
    if ints is not None and ints.dtype.kind in "iu":
        if ndim is not None and ints.ndim != ndim:
            raise error(f"{source}: {field}: expected {ndim} dimensions, got shape {ints.shape}")
        if ints.size and ints.min() < lo:
            raise error(f"{source}: {field}: entries must be >= {lo}, got {ints.min()}")
        if ints.size and ints.max() > hi:
            raise error(f"{source}: {field}: entries must be <= {hi:,}, got {ints.max():,}")
        return ints.astype(dtype)
    a = number_array(value, source, field, lo, hi, ndim, error)
    if a.size and float(hi) > hi and a.max() >= float(hi):  # float(hi) rounded up: hi itself is not reachable
        raise error(f"{source}: {field}: entries must be <= {hi:g}, got {a.max():g}")
    if a.size and not (a == np.round(a)).all():
        raise error(f"{source}: {field}: entries must be whole numbers")
    return a.astype(dtype)

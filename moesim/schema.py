"""One schema walker for every loader: typed, range- and finiteness-checked access to parsed input, each failure
one ``SpecError`` line ``FILE: FIELD: PROBLEM``.

:class:`Fields` walks one mapping (model, GPU and cluster specs, placement and trace headers); :func:`int_array`
and :func:`number_array` check the arrays a file carries (counts, transitions, expert ids, shares) before numpy
would silently cast, overflow or raise on them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import numpy as np

from moesim.errors import SpecError

T = TypeVar("T")

__all__ = [
    "FieldError",
    "check_keys",
    "Fields",
    "choice_problem",
    "float_problem",
    "int_array",
    "int_problem",
    "number_array",
    "require",
]


class FieldError(SpecError):
    """``SOURCE: FIELD: PROBLEM`` keeping its parts: a frozen dataclass raises it from ``__post_init__`` naming
    itself, and a loader (:meth:`Fields.build`) re-raises it naming the file and the dotted field."""

    def __init__(self, source: str, field: str, problem: str) -> None:
        super().__init__(f"{source}: {field}: {problem}")
        self.field = field
        self.problem = problem


def int_problem(v: Any, minimum: int | None = 0, maximum: int | None = None) -> str | None:
    """What is wrong with ``v`` as an integer in ``[minimum, maximum]`` (None: nothing)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        return f"expected an integer, got {v!r}"
    if minimum is not None and v < minimum:
        return f"must be >= {minimum}, got {v}"
    if maximum is not None and v > maximum:
        return f"must be <= {maximum:,} (moesim's limit), got {v:,}"
    return None


def float_problem(v: Any, minimum: float = 0.0, positive: bool = False, maximum: float | None = None) -> str | None:
    """What is wrong with ``v`` as a finite number, ``> 0`` when ``positive``, in ``[minimum, maximum]``."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return f"expected a number, got {v!r}"
    v = float(v)
    if not math.isfinite(v):
        return f"must be finite, got {v}"
    if positive and v <= 0:
        return f"must be > 0, got {v:g}"
    if v < minimum:
        return f"must be >= {minimum:g}, got {v:g}"
    if maximum is not None and v > maximum:
        return f"must be <= {maximum:g}, got {v:g}"
    return None


def choice_problem(v: Any, choices: tuple[str, ...]) -> str | None:
    """What is wrong with ``v`` as one of the strings ``choices``."""
    if not isinstance(v, str):
        return f"expected a string, got {v!r}"
    if v not in choices:
        return f"must be one of {', '.join(choices)}, got {v!r}"
    return None


def require(source: str, field: str, problem: str | None) -> None:
    """Raise :class:`FieldError` ``SOURCE: FIELD: PROBLEM`` when there is a ``problem``."""
    if problem:
        raise FieldError(source, field, problem)


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
        problem = choice_problem(v, choices) if choices is not None else None
        if not isinstance(v, str) or problem:
            raise self.err(key, problem or f"expected a string, got {v!r}")
        return v

    def int_(self, key: str, default: Any = ..., minimum: int = 0, maximum: int | None = None) -> int:
        v = self.raw(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.err(key, f"expected an integer, got {v!r}")
        problem = int_problem(v, minimum, maximum)
        if problem:
            raise self.err(key, problem)
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
        problem = float_problem(v, minimum, positive, maximum)
        if problem:
            raise self.err(key, problem)
        return float(v)

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

    def build(self, cls: type[T], **fields: Any) -> T:
        """``cls(**fields)``; a :class:`FieldError` of its ``__post_init__`` re-raised naming this file."""
        try:
            return cls(**fields)
        except FieldError as exc:
            raise self.err(exc.field, exc.problem) from None

    def done(self, optional: tuple[str, ...] = ()) -> None:
        """Unknown keys are errors: a typo (``top_K``) must not silently fall back to a default."""
        unknown = sorted(set(map(str, self.data)) - self.used - set(optional))
        if unknown:
            known = ", ".join(sorted(self.used | set(optional)))
            raise self.err(unknown[0], f"unknown field (known fields: {known})")


def check_keys(
    source: str, prefix: str, doc: Any, required: Iterable[str], optional: Iterable[str] = ()
) -> Mapping[str, Any]:
    """``doc`` as a mapping holding every ``required`` key (None counts as missing) and nothing beyond
    ``required`` and ``optional``; else ``SpecError`` ``SOURCE: PREFIX+KEY: PROBLEM``. ``prefix`` ends with
    ``.`` for a section (``"nccl."``) and is ``""`` at the top of a file. The key checks of :class:`Fields`."""
    if not isinstance(doc, Mapping):
        raise SpecError(f"{source}: {prefix.rstrip('.') or 'document'}: expected a mapping, got {doc!r}")
    f = Fields(source, doc, prefix)  # type: ignore[arg-type]
    for key in required:
        f.raw(key)
    f.done(tuple(optional))
    return doc


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


# ----------------------------------------------------------------------------- JSON documents (calibration.json)
def mapping_problem(v: Any) -> str | None:
    """What is wrong with ``v`` as a JSON object (a dict)."""
    return None if isinstance(v, dict) else f"expected a mapping, got {v!r}"


def nonempty_string_problem(v: Any) -> str | None:
    """What is wrong with ``v`` as a non-empty string."""
    return None if isinstance(v, str) and v else f"expected a non-empty string, got {v!r}"


def finite_number_list(source: str, field: str, value: Any) -> tuple[float, ...]:
    """``value`` (a JSON list) as a non-empty tuple of finite floats; else :class:`FieldError`
    ``SOURCE: FIELD: PROBLEM``, naming ``FIELD[i]`` for a bad entry (booleans are not numbers)."""
    if not isinstance(value, list) or not value:
        raise FieldError(source, field, f"expected a non-empty list of numbers, got {value!r}")
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise FieldError(source, f"{field}[{i}]", f"expected a finite number, got {v!r}")
    return tuple(float(v) for v in value)

"""Measured efficiency curves that replace the GPU profile's constant ``gemm_efficiency`` / ``hbm_efficiency``.

A :class:`Calibration` says what fraction of a GPU's datasheet peak its kernels actually reach, as a function of
problem size, and what one kernel launch costs. :mod:`moesim.compute` calls it (duck-typed) as::

    eff     = calibration.gemm_efficiency(m, n, k)    # fraction of peak dense TFLOP/s, vectorised over m
    hbm_eff = calibration.hbm_efficiency(nbytes)      # fraction of peak HBM GB/s, vectorised over nbytes
    launch  = calibration.launch_overhead_us          # us per kernel

Every curve is a table of knots ``(log2 x_i, eff_i)`` with strictly increasing ``log2 x_i``, evaluated by
piecewise-linear interpolation in ``log2 x``, held constant beyond the first and last knot, and clipped to
``(0, 1]``::

    eff(x) = interp(log2(max(x, 1)), log2_x, eff)       # numpy.interp: clamped at both ends

GEMM tables are per weight shape ``(n, k)`` (an expert's gate+up ``(2I, H)`` and down ``(H, I)``), plus one
``fallback`` table pooled over all shapes. A shape not in the table uses the table whose ``n * k`` is nearest in
``log2`` (ties: nearest ``n / k``) when that is within :data:`SHAPE_MATCH_LOG2` octaves, else the fallback.

File format (``calibration.json``, written by :func:`save_calibration`, read by :func:`load_calibration`;
``profiles/measured/<device_name>/calibration.json`` by convention)::

    {
      "schema": 1,
      "device_name": "NVIDIA_H100_80GB_HBM3",           # as kernels.configs.device_name() spells it
      "source": "profiles/measured/NVIDIA_H100_80GB_HBM3/matmul.jsonl",   # records it was fitted to
      "fitted": "2025-06-01",                           # ISO date of the fit
      "dtype": "bf16",                                  # GEMM records used; efficiency is vs that dtype's peak
      "launch_overhead_us": 3.0,                        # >= 0
      "gemm": {
        "fallback": {"log2_m": [0, 6, 12], "efficiency": [0.01, 0.4, 0.8]},
        "shapes": [{"n": 4096, "k": 7168, "log2_m": [...], "efficiency": [...]}]   # optional, unique (n, k)
      },
      "hbm": {"log2_bytes": [10, 20, 30], "efficiency": [0.05, 0.6, 0.9]}
    }

Rules (checked in :func:`calibration_from_dict`, the one place a calibration is validated): every field above
is required except ``gemm.shapes``; unknown fields are errors; each table has at least one knot, as many
efficiencies as knots, finite strictly increasing ``log2`` knots, efficiencies in ``(0, 1]``. Every problem is a
:class:`moesim.errors.SpecError` with the one-line message ``FILE: FIELD: PROBLEM``.

:func:`fit_calibration` turns GEMM/copy records (``profiles/measured/`` JSONL) into schema-1 curves. Schema 2
(written by ``moesim calibrate``, :mod:`moesim.measured_fit`) adds the fitted kernel models: ``fused_moe``
(:class:`moesim.fused_moe.FusedMoEParams`), ``deepep_normal``, ``deepep_ll`` and ``nccl``
(:mod:`moesim.collectives`), the GPU profile they were fitted against (``gpu``), the provenance of every table
(``tables``) and the held-out error (``held_out``); there ``gemm``/``hbm`` are optional, and without them the
GEMMs outside the fused MoE keep the GPU profile's constants. Shipped calibrations live in
``profiles/measured/<gpu slug>/calibration.json`` (:func:`shipped_calibration_path`) and are the default of
every simulating command (:func:`resolve_calibration`).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from moesim.errors import SpecError, check_keys, field_error

if TYPE_CHECKING:
    from moesim.specs import GPUSpec

__all__ = [
    "CALIBRATION_FILE",
    "SCHEMA",
    "SHAPE_MATCH_LOG2",
    "Calibration",
    "Curve",
    "calibration_from_dict",
    "calibration_to_dict",
    "fit_calibration",
    "load_calibration",
    "save_calibration",
]

SCHEMA = 2
SCHEMAS = (1, 2)
CALIBRATION_FILE = "calibration.json"
# A shape table stands in for another GEMM shape when their weight sizes n*k are within a factor 2**2 = 4:
# a GEMM's efficiency at fixed m depends mostly on its tile count (~ n), and an expert's two GEMMs (2I x H and
# H x I) differ by 2x in n*k. Beyond that (e.g. attention's tiny head_dim GEMMs) the pooled fallback is the
# less wrong guess. Modelling assumption, to be checked against the measurements of issue 7.
SHAPE_MATCH_LOG2 = 2.0
# Efficiencies are clipped to (0, 1]; this is the smallest value returned, so a time never divides by zero.
MIN_EFFICIENCY = 1e-6
GEMM_KINDS = ("gemm", "matmul")
COPY_KINDS = ("copy",)
LAUNCH_KINDS = ("launch",)
DTYPES = ("bf16", "fp16", "fp8")


# --------------------------------------------------------------------------------------------- dataclasses
# A kernel launch costs microseconds (the shipped H100/H200 fits: a few us); 10 ms per launch is a limit, not a
# measurement: a larger value is a unit error (seconds or ns written as us) and would swamp every prediction.
MAX_LAUNCH_OVERHEAD_US = 1e4


@dataclass(frozen=True)
class Curve:
    """An efficiency curve: knots ``(log2_x[i], efficiency[i])``, ``log2_x`` strictly increasing."""

    log2_x: tuple[float, ...]
    efficiency: tuple[float, ...]

    def __call__(self, x: np.ndarray | float) -> np.ndarray:
        """Efficiency at ``x`` (dimensionless, ``(0, 1]``), elementwise::

        eff(x) = clip(interp(log2(max(x, 1)), log2_x, efficiency), MIN_EFFICIENCY, 1)

        Linear in ``log2 x`` between knots, constant beyond the first and last knot.
        """
        log2x = np.log2(np.maximum(np.asarray(x, dtype=np.float64), 1.0))
        out = np.interp(log2x, np.asarray(self.log2_x), np.asarray(self.efficiency))
        return np.clip(out, MIN_EFFICIENCY, 1.0)


@dataclass(frozen=True)
class Calibration:
    """Measured efficiency curves of one device (see the module docstring for the equations and the file)."""

    device_name: str
    source: str  # measured records the curves were fitted to
    fitted: str  # ISO date of the fit
    dtype: str  # dtype of the GEMM records; efficiencies are fractions of that dtype's peak
    launch_overhead_us: float  # per kernel launch, us
    gemm_fallback: Curve | None  # efficiency vs log2(m), pooled over all shapes (None: the GPU's constant)
    hbm: Curve | None  # efficiency vs log2(bytes moved, read + write) (None: the GPU's constant)
    gemm_shapes: tuple[tuple[int, int, Curve], ...] = field(default=())  # (n, k, efficiency vs log2(m))
    # schema 2: fitted kernel models (moesim.fused_moe, moesim.collectives); None where not fitted
    gpu: str | None = None  # GPU profile slug the fit used (its datasheet peaks are the models' units)
    fused_moe: Any = None  # moesim.fused_moe.FusedMoEParams
    deepep_normal: Any = None  # moesim.collectives.DeepEPNormalParams
    deepep_ll: Any = None  # moesim.collectives.DeepEPLowLatencyParams
    nccl: Any = None  # moesim.collectives.NCCLParams
    tables: tuple[dict[str, Any], ...] = field(default=())  # provenance of each measured table fitted
    held_out: dict[str, Any] = field(default_factory=dict)  # error of the fit on rows it never saw, by family

    def gemm_curve(self, n: int, k: int) -> Curve:
        """The curve for weight shape ``(n, k)``: its own, else the nearest in ``log2(n k)`` within
        :data:`SHAPE_MATCH_LOG2` (ties: nearest ``log2(n / k)``), else the fallback."""
        if self.gemm_fallback is None:
            raise ValueError("this calibration has no GEMM curves")
        if not self.gemm_shapes or n <= 0 or k <= 0:
            return self.gemm_fallback
        size, aspect = math.log2(n) + math.log2(k), math.log2(n) - math.log2(k)
        best = min(
            self.gemm_shapes,
            key=lambda s: (abs(math.log2(s[0]) + math.log2(s[1]) - size), abs(math.log2(s[0] / s[1]) - aspect)),
        )
        if abs(math.log2(best[0]) + math.log2(best[1]) - size) > SHAPE_MATCH_LOG2:
            return self.gemm_fallback
        return best[2]

    def gemm_efficiency(self, m: np.ndarray | float, n: int, k: int) -> np.ndarray:
        """Fraction of the dense peak TFLOP/s reached by an ``m x n x k`` GEMM (``m`` tokens, ``[n, k]``
        weights), elementwise over ``m``: ``gemm_curve(n, k)(m)``, in ``(0, 1]``."""
        return self.gemm_curve(int(n), int(k))(m)

    def hbm_efficiency(self, nbytes: np.ndarray | float) -> np.ndarray:
        """Fraction of the peak HBM GB/s reached when moving ``nbytes`` (read + write), elementwise, ``(0, 1]``."""
        if self.hbm is None:
            raise ValueError("this calibration has no HBM curve")
        return self.hbm(nbytes)

    @property
    def has_curves(self) -> bool:
        """Whether GEMM/HBM efficiency curves are present (else compute.py keeps the GPU's constants)."""
        return self.gemm_fallback is not None and self.hbm is not None

    @property
    def describe(self) -> str:
        """One line naming what the calibration is: for the CLI's "calibration: ..." notice."""
        parts = [p for p in ("fused_moe", "deepep_normal", "deepep_ll", "nccl") if getattr(self, p) is not None]
        if self.has_curves:
            parts.insert(0, "gemm/hbm curves")
        return f"{self.device_name}, fitted {self.fitted} ({', '.join(parts) or 'empty'})"


# --------------------------------------------------------------------------------------------- file format
def _err(source: str, key: str, problem: str) -> SpecError:
    return field_error(source, key, problem)


def _mapping(source: str, key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _err(source, key, f"expected a mapping, got {value!r}")
    return value


def _string(source: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _err(source, key, f"expected a non-empty string, got {value!r}")
    return value


def _numbers(source: str, key: str, value: Any) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        raise _err(source, key, f"expected a non-empty list of numbers, got {value!r}")
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise _err(source, f"{key}[{i}]", f"expected a finite number, got {v!r}")
    return tuple(float(v) for v in value)


def _curve(source: str, prefix: str, doc: Any, xname: str) -> Curve:
    doc = _mapping(source, prefix.rstrip("."), doc)
    check_keys(source, prefix, doc, (xname, "efficiency"))
    xs = _numbers(source, f"{prefix}{xname}", doc[xname])
    ys = _numbers(source, f"{prefix}efficiency", doc["efficiency"])
    if len(ys) != len(xs):
        raise _err(source, f"{prefix}efficiency", f"expected {len(xs)} values (one per {xname} knot), got {len(ys)}")
    steps = np.diff(xs)
    if np.any(steps <= 0):
        i = int(np.argmax(steps <= 0)) + 1
        raise _err(source, f"{prefix}{xname}", f"must be strictly increasing, got {xs[i - 1]:g} then {xs[i]:g}")
    for i, y in enumerate(ys):
        if not 0.0 < y <= 1.0:
            raise _err(source, f"{prefix}efficiency[{i}]", f"must be in (0, 1], got {y:g}")
    return Curve(xs, ys)


def _positive_int(source: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _err(source, key, f"expected an integer >= 1, got {value!r}")
    return value


SCHEMA2_SECTIONS = ("gpu", "fused_moe", "deepep_normal", "deepep_ll", "nccl", "tables", "held_out")


def calibration_from_dict(doc: Any, source: str = "calibration") -> Calibration:
    """Parse and validate a calibration document; ``SpecError`` ``SOURCE: FIELD: PROBLEM`` on any problem.

    Schema 1 requires ``gemm`` and ``hbm``; schema 2 makes them optional and adds the fitted kernel models
    (``fused_moe``, ``deepep_normal``, ``deepep_ll``, ``nccl``), ``gpu``, ``tables`` and ``held_out``.
    """
    doc = _mapping(source, "calibration", doc)
    if "schema" not in doc:
        raise _err(source, "schema", "missing")
    if doc["schema"] not in SCHEMAS:
        raise _err(source, "schema", f"expected one of {', '.join(map(str, SCHEMAS))}, got {doc['schema']!r}")
    schema = doc["schema"]
    top = ("schema", "device_name", "source", "fitted", "dtype", "launch_overhead_us")
    if schema == 1:
        check_keys(source, "", doc, (*top, "gemm", "hbm"))
    else:
        check_keys(source, "", doc, top, ("gemm", "hbm", *SCHEMA2_SECTIONS))
    device_name = _string(source, "device_name", doc["device_name"])
    records = _string(source, "source", doc["source"])
    fitted = _string(source, "fitted", doc["fitted"])
    try:
        _dt.date.fromisoformat(fitted)
    except ValueError:
        raise _err(source, "fitted", f"expected an ISO date (YYYY-MM-DD), got {fitted!r}") from None
    dtype = _string(source, "dtype", doc["dtype"])
    if dtype not in DTYPES:
        raise _err(source, "dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
    launch = doc["launch_overhead_us"]
    if isinstance(launch, bool) or not isinstance(launch, (int, float)) or not math.isfinite(launch):
        raise _err(source, "launch_overhead_us", f"expected a finite number, got {launch!r}")
    if not 0 <= launch <= MAX_LAUNCH_OVERHEAD_US:
        raise _err(source, "launch_overhead_us", f"must be in [0, {MAX_LAUNCH_OVERHEAD_US:g}] us, got {launch:g}")
    fallback, shapes, hbm = None, [], None
    if doc.get("gemm") is not None:
        gemm = _mapping(source, "gemm", doc["gemm"])
        check_keys(source, "gemm.", gemm, ("fallback",), ("shapes",))
        fallback = _curve(source, "gemm.fallback.", gemm["fallback"], "log2_m")
        shapes_doc = gemm.get("shapes") or []
        if not isinstance(shapes_doc, list):
            raise _err(source, "gemm.shapes", f"expected a list, got {shapes_doc!r}")
        seen: set[tuple[int, int]] = set()
        for i, s in enumerate(shapes_doc):
            prefix = f"gemm.shapes[{i}]."
            s = _mapping(source, prefix.rstrip("."), s)
            check_keys(source, prefix, s, ("n", "k", "log2_m", "efficiency"))
            n = _positive_int(source, f"{prefix}n", s["n"])
            k = _positive_int(source, f"{prefix}k", s["k"])
            if (n, k) in seen:
                raise _err(source, prefix.rstrip("."), f"duplicate shape n={n}, k={k}")
            seen.add((n, k))
            curve = _curve(source, prefix, {"log2_m": s["log2_m"], "efficiency": s["efficiency"]}, "log2_m")
            shapes.append((n, k, curve))
    if doc.get("hbm") is not None:
        hbm = _curve(source, "hbm.", doc["hbm"], "log2_bytes")
    if (fallback is None) != (hbm is None):
        raise _err(source, "gemm" if fallback is None else "hbm", "gemm and hbm curves come together")
    extra: dict[str, Any] = {}
    if schema == 2:
        from moesim import collectives
        from moesim.fused_moe import FusedMoEParams

        if doc.get("gpu") is not None:
            extra["gpu"] = _string(source, "gpu", doc["gpu"])
        parsers = {
            "fused_moe": lambda d: FusedMoEParams.from_dict(d, source, "fused_moe."),
            "deepep_normal": lambda d: collectives.deepep_normal_from_dict(d, source, "deepep_normal."),
            "deepep_ll": lambda d: collectives.deepep_ll_from_dict(d, source, "deepep_ll."),
            "nccl": lambda d: collectives.nccl_from_dict(d, source, "nccl."),
        }
        for name, parse in parsers.items():
            if doc.get(name) is not None:
                extra[name] = parse(doc[name])
        tables = doc.get("tables") or []
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise _err(source, "tables", f"expected a list of mappings, got {tables!r}")
        extra["tables"] = tuple(tables)
        held_out = doc.get("held_out") or {}
        extra["held_out"] = dict(_mapping(source, "held_out", held_out))
        if fallback is None and "fused_moe" not in extra:
            raise _err(source, "fused_moe", "missing (a calibration without GEMM curves needs the fused_moe model)")
    return Calibration(
        device_name=device_name,
        source=records,
        fitted=fitted,
        dtype=dtype,
        launch_overhead_us=float(launch),
        gemm_fallback=fallback,
        hbm=hbm,
        gemm_shapes=tuple(shapes),
        **extra,
    )


def calibration_to_dict(cal: Calibration) -> dict[str, Any]:
    """The ``calibration.json`` document of ``cal`` (inverse of :func:`calibration_from_dict`): schema 1 when
    it holds only curves, else schema 2."""
    models = {n: getattr(cal, n) for n in ("fused_moe", "deepep_normal", "deepep_ll", "nccl")}
    schema = 2 if any(v is not None for v in models.values()) or cal.gpu or cal.tables else 1
    doc: dict[str, Any] = {
        "schema": schema,
        "device_name": cal.device_name,
        "source": cal.source,
        "fitted": cal.fitted,
        "dtype": cal.dtype,
        "launch_overhead_us": cal.launch_overhead_us,
    }
    if cal.gemm_fallback is not None and cal.hbm is not None:
        doc["gemm"] = {
            "fallback": {"log2_m": list(cal.gemm_fallback.log2_x), "efficiency": list(cal.gemm_fallback.efficiency)},
            "shapes": [
                {"n": n, "k": k, "log2_m": list(c.log2_x), "efficiency": list(c.efficiency)}
                for n, k, c in cal.gemm_shapes
            ],
        }
        doc["hbm"] = {"log2_bytes": list(cal.hbm.log2_x), "efficiency": list(cal.hbm.efficiency)}
    if schema == 2:
        from moesim.collectives import collectives_to_dict

        if cal.gpu:
            doc["gpu"] = cal.gpu
        for name, value in models.items():
            if value is not None:
                doc[name] = value.to_dict() if name == "fused_moe" else collectives_to_dict(value)
        doc["tables"] = list(cal.tables)
        doc["held_out"] = cal.held_out
    return doc


def _resolve(path: str | os.PathLike) -> Path:
    """``calibration.json`` itself, a directory holding one, or a measured device's name
    (``profiles/measured/<device_name>/calibration.json``)."""
    p = Path(path)
    if p.is_dir():
        return p / CALIBRATION_FILE
    if p.exists() or p.suffix == ".json" or len(p.parts) != 1:
        return p
    from moesim.specs import profiles_dir

    measured = profiles_dir() / "measured" / str(path) / CALIBRATION_FILE
    return measured if measured.exists() else p


def load_calibration(path: str | os.PathLike) -> Calibration:
    """Read and validate a calibration.

    Args:
        path: a ``calibration.json`` file, a directory containing one (``profiles/measured/<device>/``), or a
            measured device's name under the shipped ``profiles/measured/``.

    Raises:
        SpecError: ``FILE: FIELD: PROBLEM`` for a missing file, bad JSON or any invalid field.
    """
    file = _resolve(path)
    source = str(file)
    if not file.is_file():
        raise _err(
            source,
            "calibration",
            "no such file (give a calibration.json, its directory, or a device under profiles/measured/)",
        )
    from moesim.fileio import parse_json, read_text

    return calibration_from_dict(parse_json(read_text(file, source, "calibration"), source, "calibration"), source)


def save_calibration(cal: Calibration, path: str | os.PathLike) -> Path:
    """Write ``cal`` as JSON atomically (temp file + ``os.replace``); a directory gets ``calibration.json``.

    Returns the file written. The document is validated first, so an invalid calibration writes nothing.
    """
    from moesim.fileio import atomic_write_text

    p = Path(path)
    file = p / CALIBRATION_FILE if p.is_dir() else p
    doc = calibration_to_dict(cal)
    calibration_from_dict(doc, str(file))
    atomic_write_text(file, json.dumps(doc, indent=1) + "\n")
    return file


# --------------------------------------------------------------------------------------------- fitting
def _bin_medians(log2x: np.ndarray, eff: np.ndarray) -> Curve:
    """Median efficiency per octave bin ``round(log2 x)``; each knot sits at its bin's median ``log2 x``
    (bins are disjoint intervals, so knots stay strictly increasing)."""
    bins = np.rint(log2x)
    order = np.argsort(bins, kind="stable")
    bins, log2x, eff = bins[order], log2x[order], eff[order]
    starts = np.flatnonzero(np.r_[True, bins[1:] != bins[:-1]])
    groups_x = np.split(log2x, starts[1:])
    groups_y = np.split(eff, starts[1:])
    xs = tuple(float(np.median(g)) for g in groups_x)
    ys = tuple(float(np.clip(np.median(g), MIN_EFFICIENCY, 1.0)) for g in groups_y)
    return Curve(xs, ys)


def _record_number(source: str, i: int, rec: Mapping[str, Any], names: tuple[str, ...]) -> float:
    for name in names:
        if name in rec and rec[name] is not None:
            v = rec[name]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise _err(source, f"records[{i}].{name}", f"expected a positive number, got {v!r}")
            return float(v)
    raise _err(source, f"records[{i}].{names[0]}", "missing")


def fit_calibration(
    records: Iterable[Mapping[str, Any]],
    gpu: GPUSpec,
    *,
    dtype: str = "bf16",
    source: str = "records",
    device_name: str | None = None,
    fitted: str | None = None,
    launch_overhead_us: float | None = None,
) -> Calibration:
    """Fit a calibration to measured kernel timings.

    Each record's achieved efficiency (``median_us`` is the kernel time, CUDA-graph timed, in us)::

        gemm: eff = 2 m n k / (peak_tflops * 1e6 * median_us)     # peak: gpu.fp8_tflops for fp8, else bf16
        copy: eff = bytes / (gpu.hbm_bw_gb_s * 1e3 * median_us)   # bytes moved, read + write

    then the median per octave of ``m`` (GEMM; per ``(n, k)`` and pooled as the fallback) or of ``bytes`` (HBM),
    clipped to ``(0, 1]``. The GEMM efficiency absorbs whatever limits the kernel (memory-bound small m
    included), so ``compute.gemm_us``'s compute term reproduces the measured time. ``launch_overhead_us`` is the
    argument, else the median of ``kind: "launch"`` records (an empty kernel), else
    :data:`moesim.compute.DEFAULT_LAUNCH_OVERHEAD_US`.

    Args:
        records: dicts ``{"kind": "gemm" | "matmul", "m", "n", "k", "dtype", "median_us"}`` (``M, N, K``
            accepted), ``{"kind": "copy", "bytes", "median_us"}``, ``{"kind": "launch", "median_us"}``; other
            kinds (``fused_moe``, ``align`` ...) are ignored, as are GEMMs of another ``dtype``.
        gpu: the device's spec (datasheet peaks ``bf16_tflops``, ``fp8_tflops``, ``hbm_bw_gb_s``).
        dtype: which GEMM records to fit (``bf16`` | ``fp16`` | ``fp8``); a record without ``dtype`` counts as bf16.
        source: where the records came from (provenance, and the FILE in error messages).
        device_name: default: the records' ``device_name``, else ``gpu.name``.
        fitted: ISO date; default today.

    Raises:
        SpecError: a record with a missing or non-positive field, or no GEMM / copy records to fit.
    """
    if dtype not in DTYPES:
        raise _err(source, "dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
    gemm_rows: list[tuple[float, float, float, float]] = []  # m, n, k, us
    copy_rows: list[tuple[float, float]] = []  # bytes, us
    launch_rows: list[float] = []
    names: set[str] = set()
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise _err(source, f"records[{i}]", f"expected a mapping, got {type(rec).__name__}")
        kind = rec.get("kind")
        if kind in GEMM_KINDS:
            if rec.get("dtype", "bf16") != dtype:
                continue
            m, n, k = (_record_number(source, i, rec, f) for f in (("m", "M"), ("n", "N"), ("k", "K")))
            gemm_rows.append((m, n, k, _record_number(source, i, rec, ("median_us",))))
        elif kind in COPY_KINDS:
            copy_rows.append(
                (_record_number(source, i, rec, ("bytes",)), _record_number(source, i, rec, ("median_us",)))
            )
        elif kind in LAUNCH_KINDS:
            launch_rows.append(_record_number(source, i, rec, ("median_us",)))
        else:
            continue
        if isinstance(rec.get("device_name"), str):
            names.add(rec["device_name"])
    if not gemm_rows:
        raise _err(source, "records", f"no {dtype} gemm records to fit")
    if not copy_rows:
        raise _err(source, "records", "no copy records to fit the HBM curve")
    if len(names) > 1:
        raise _err(source, "records.device_name", f"records from several devices: {', '.join(sorted(names))}")

    g = np.asarray(gemm_rows, dtype=np.float64)  # [R, 4]: m, n, k, us
    from moesim.compute import DEFAULT_LAUNCH_OVERHEAD_US, peak_tflops  # compute imports this module

    peak_flop_us = peak_tflops(gpu, 1 if dtype == "fp8" else 2) * 1e6
    gemm_eff = 2.0 * g[:, 0] * g[:, 1] * g[:, 2] / (peak_flop_us * g[:, 3])
    log2m = np.log2(np.maximum(g[:, 0], 1.0))
    fallback = _bin_medians(log2m, gemm_eff)
    shapes_nk, inverse = np.unique(g[:, 1:3], axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    shapes = tuple(
        (int(n), int(k), _bin_medians(log2m[inverse == j], gemm_eff[inverse == j]))
        for j, (n, k) in enumerate(shapes_nk)
    )

    c = np.asarray(copy_rows, dtype=np.float64)  # [R, 2]: bytes, us
    hbm_eff = c[:, 0] / (float(gpu.hbm_bw_gb_s) * 1e3 * c[:, 1])
    hbm = _bin_medians(np.log2(np.maximum(c[:, 0], 1.0)), hbm_eff)

    if launch_overhead_us is None:
        launch_overhead_us = float(np.median(launch_rows)) if launch_rows else DEFAULT_LAUNCH_OVERHEAD_US
    cal = Calibration(
        device_name=device_name or (names.pop() if names else gpu.name),
        source=source,
        fitted=fitted or _dt.date.today().isoformat(),
        dtype=dtype,
        launch_overhead_us=float(launch_overhead_us),
        gemm_fallback=fallback,
        hbm=hbm,
        gemm_shapes=shapes,
    )
    calibration_from_dict(calibration_to_dict(cal), source)  # the same rules as a file read back
    return cal


# --------------------------------------------------------------------------------------------- defaults
CALIBRATION_CHOICES = ("auto", "none")


def shipped_calibration_path(gpu_slug: str) -> Path:
    """Where the shipped calibration of a GPU profile lives: ``profiles/measured/<slug>/calibration.json``."""
    from moesim.specs import profiles_dir

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

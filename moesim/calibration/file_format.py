"""The ``calibration.json`` document: read, validated (the one place) and written.

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

Schema 2
(written by ``moesim calibrate``, :mod:`moesim.measured_fit`) adds the fitted kernel models: ``fused_moe``
(:class:`moesim.fused_moe.FusedMoEParams`), ``deepep_normal``, ``deepep_ll`` and ``nccl``
(:mod:`moesim.collectives`), the GPU profile they were fitted against (``gpu``), the provenance of every table
(``tables``) and the held-out error (``held_out``); there ``gemm``/``hbm`` are optional, and without them the
GEMMs outside the fused MoE keep the GPU profile's constants. Shipped calibrations live in
``profiles/measured/<gpu slug>/calibration.json`` (:func:`.resolve.shipped_calibration_path`) and are the
default of every simulating command (:func:`.resolve.resolve_calibration`).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from moesim.calibration.model import MAX_LAUNCH_OVERHEAD_US, Calibration, Curve
from moesim.fileio import atomic_write_text, parse_json, read_text
from moesim.schema import FieldError, check_keys, finite_number_list, mapping_problem, nonempty_string_problem, require
from moesim.specs.files import profiles_dir

__all__ = [
    "CALIBRATION_FILE",
    "DTYPES",
    "SCHEMA",
    "SCHEMAS",
    "calibration_from_dict",
    "calibration_to_dict",
    "load_calibration",
    "save_calibration",
]

SCHEMA = 2
SCHEMAS = (1, 2)
CALIBRATION_FILE = "calibration.json"
DTYPES = ("bf16", "fp16", "fp8")


def _mapping(source: str, key: str, value: Any) -> dict[str, Any]:
    require(source, key, mapping_problem(value))
    return value


def _string(source: str, key: str, value: Any) -> str:
    require(source, key, nonempty_string_problem(value))
    return value


def _curve(source: str, prefix: str, doc: Any, xname: str) -> Curve:
    doc = _mapping(source, prefix.rstrip("."), doc)
    check_keys(source, prefix, doc, (xname, "efficiency"))
    xs = finite_number_list(source, f"{prefix}{xname}", doc[xname])
    ys = finite_number_list(source, f"{prefix}efficiency", doc["efficiency"])
    if len(ys) != len(xs):
        raise FieldError(
            source, f"{prefix}efficiency", f"expected {len(xs)} values (one per {xname} knot), got {len(ys)}"
        )
    steps = np.diff(xs)
    if np.any(steps <= 0):
        i = int(np.argmax(steps <= 0)) + 1
        raise FieldError(source, f"{prefix}{xname}", f"must be strictly increasing, got {xs[i - 1]:g} then {xs[i]:g}")
    for i, y in enumerate(ys):
        if not 0.0 < y <= 1.0:
            raise FieldError(source, f"{prefix}efficiency[{i}]", f"must be in (0, 1], got {y:g}")
    return Curve(xs, ys)


def _positive_int(source: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        require(source, key, f"expected an integer >= 1, got {value!r}")
    return value


SCHEMA2_SECTIONS = ("gpu", "fused_moe", "deepep_normal", "deepep_ll", "nccl", "tables", "held_out")


def calibration_from_dict(doc: Any, source: str = "calibration") -> Calibration:
    """Parse and validate a calibration document; ``SpecError`` ``SOURCE: FIELD: PROBLEM`` on any problem.

    Schema 1 requires ``gemm`` and ``hbm``; schema 2 makes them optional and adds the fitted kernel models
    (``fused_moe``, ``deepep_normal``, ``deepep_ll``, ``nccl``), ``gpu``, ``tables`` and ``held_out``.
    """
    doc = _mapping(source, "calibration", doc)
    if "schema" not in doc:
        raise FieldError(source, "schema", "missing")
    if doc["schema"] not in SCHEMAS:
        raise FieldError(source, "schema", f"expected one of {', '.join(map(str, SCHEMAS))}, got {doc['schema']!r}")
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
        raise FieldError(source, "fitted", f"expected an ISO date (YYYY-MM-DD), got {fitted!r}") from None
    dtype = _string(source, "dtype", doc["dtype"])
    if dtype not in DTYPES:
        raise FieldError(source, "dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
    launch = doc["launch_overhead_us"]
    if isinstance(launch, bool) or not isinstance(launch, (int, float)) or not math.isfinite(launch):
        raise FieldError(source, "launch_overhead_us", f"expected a finite number, got {launch!r}")
    if not 0 <= launch <= MAX_LAUNCH_OVERHEAD_US:
        raise FieldError(source, "launch_overhead_us", f"must be in [0, {MAX_LAUNCH_OVERHEAD_US:g}] us, got {launch:g}")
    fallback, shapes, hbm = None, [], None
    if doc.get("gemm") is not None:
        gemm = _mapping(source, "gemm", doc["gemm"])
        check_keys(source, "gemm.", gemm, ("fallback",), ("shapes",))
        fallback = _curve(source, "gemm.fallback.", gemm["fallback"], "log2_m")
        shapes_doc = gemm.get("shapes") or []
        if not isinstance(shapes_doc, list):
            raise FieldError(source, "gemm.shapes", f"expected a list, got {shapes_doc!r}")
        seen: set[tuple[int, int]] = set()
        for i, s in enumerate(shapes_doc):
            prefix = f"gemm.shapes[{i}]."
            s = _mapping(source, prefix.rstrip("."), s)
            check_keys(source, prefix, s, ("n", "k", "log2_m", "efficiency"))
            n = _positive_int(source, f"{prefix}n", s["n"])
            k = _positive_int(source, f"{prefix}k", s["k"])
            if (n, k) in seen:
                raise FieldError(source, prefix.rstrip("."), f"duplicate shape n={n}, k={k}")
            seen.add((n, k))
            curve = _curve(source, prefix, {"log2_m": s["log2_m"], "efficiency": s["efficiency"]}, "log2_m")
            shapes.append((n, k, curve))
    if doc.get("hbm") is not None:
        hbm = _curve(source, "hbm.", doc["hbm"], "log2_bytes")
    if (fallback is None) != (hbm is None):
        raise FieldError(source, "gemm" if fallback is None else "hbm", "gemm and hbm curves come together")
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
            raise FieldError(source, "tables", f"expected a list of mappings, got {tables!r}")
        extra["tables"] = tuple(tables)
        held_out = doc.get("held_out") or {}
        extra["held_out"] = dict(_mapping(source, "held_out", held_out))
        if fallback is None and "fused_moe" not in extra:
            raise FieldError(
                source, "fused_moe", "missing (a calibration without GEMM curves needs the fused_moe model)"
            )
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
        raise FieldError(
            source,
            "calibration",
            "no such file (give a calibration.json, its directory, or a device under profiles/measured/)",
        )
    return calibration_from_dict(parse_json(read_text(file, source, "calibration"), source, "calibration"), source)


def save_calibration(cal: Calibration, path: str | os.PathLike) -> Path:
    """Write ``cal`` as JSON atomically (temp file + ``os.replace``); a directory gets ``calibration.json``.

    Returns the file written. The document is validated first, so an invalid calibration writes nothing.
    """
    p = Path(path)
    file = p / CALIBRATION_FILE if p.is_dir() else p
    doc = calibration_to_dict(cal)
    calibration_from_dict(doc, str(file))
    atomic_write_text(file, json.dumps(doc, indent=1) + "\n")
    return file

"""Efficiency curves fitted to measured kernel timings (``profiles/measured/`` JSONL records).

:func:`fit_calibration` turns GEMM/copy records into schema-1 curves (:mod:`moesim.calibration.file_format`);
the schema-2 kernel models are fitted by ``moesim calibrate`` (:mod:`moesim.measured_fit`).
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from moesim.calibration.file_format import DTYPES, calibration_from_dict, calibration_to_dict
from moesim.calibration.model import Calibration, Curve
from moesim.compute import DEFAULT_LAUNCH_OVERHEAD_US, MIN_EFFICIENCY, peak_tflops
from moesim.schema import FieldError

if TYPE_CHECKING:
    from moesim.specs import GPUSpec

__all__ = ["COPY_KINDS", "GEMM_KINDS", "LAUNCH_KINDS", "fit_calibration"]

GEMM_KINDS = ("gemm", "matmul")
COPY_KINDS = ("copy",)
LAUNCH_KINDS = ("launch",)


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
                raise FieldError(source, f"records[{i}].{name}", f"expected a positive number, got {v!r}")
            return float(v)
    raise FieldError(source, f"records[{i}].{names[0]}", "missing")


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
        raise FieldError(source, "dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
    gemm_rows: list[tuple[float, float, float, float]] = []  # m, n, k, us
    copy_rows: list[tuple[float, float]] = []  # bytes, us
    launch_rows: list[float] = []
    names: set[str] = set()
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise FieldError(source, f"records[{i}]", f"expected a mapping, got {type(rec).__name__}")
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
        raise FieldError(source, "records", f"no {dtype} gemm records to fit")
    if not copy_rows:
        raise FieldError(source, "records", "no copy records to fit the HBM curve")
    if len(names) > 1:
        raise FieldError(source, "records.device_name", f"records from several devices: {', '.join(sorted(names))}")

    g = np.asarray(gemm_rows, dtype=np.float64)  # [R, 4]: m, n, k, us
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

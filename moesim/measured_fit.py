"""Fit and apply the kernel models of a calibration on measured records (one device at a time).

Which records fit what (issue 12: calibrations are fitted only on vLLM's fused-MoE tables, DeepEP and NCCL):

- ``fused_moe`` records of framework vLLM fit :class:`moesim.fused_moe.FusedMoEParams`;
- ``deepep_normal`` / ``deepep_ll`` records fit :mod:`moesim.collectives`' DeepEP models;
- ``nccl`` records fit the NCCL model.

:func:`predict` evaluates any record with a calibration (SGLang's fused-MoE rows included: they are predicted,
never fitted). With ``calibration=None`` fused-MoE rows use the uncalibrated roofline of
:func:`moesim.compute.fused_moe_us` (the model before any calibration, for comparison); communication rows
have no uncalibrated model and predict NaN.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import Any

import numpy as np

from moesim.calibration.model import Calibration
from moesim.errors import field_error
from moesim.measured_rows import fused_moe_rows

__all__ = ["FIT_KINDS", "fit_calibration_from_records", "fits_kind", "predict"]

FIT_KINDS = ("fused_moe", "deepep_normal", "deepep_ll", "nccl")


def fits_kind(rec: dict[str, Any]) -> str | None:
    """The model a record may be fitted into, or None (a record that is only ever predicted)."""
    kind = rec["kind"]
    if kind == "fused_moe":
        return kind if str(rec.get("framework", "")).lower() == "vllm" and rec.get("dtype") == "bf16" else None
    return kind if kind in FIT_KINDS else None


def _arrays(records: Sequence[dict[str, Any]], *names: str) -> list[np.ndarray]:
    return [np.array([r[n] for r in records]) for n in names]


def fit_calibration_from_records(
    records: Sequence[dict[str, Any]],
    gpu: Any,
    *,
    device_name: str,
    source: str,
    tables: Sequence[dict[str, Any]] = (),
    base: Calibration | None = None,
) -> Calibration:
    """A schema-2 calibration fitted on the fittable ``records`` of one device.

    Kinds without records keep ``base``'s model (if given), so a fold that holds, say, no DeepEP rows still
    predicts them. Raises ``SpecError`` when nothing at all can be fitted.
    """
    from moesim.fused_moe import fit_fused_moe

    by_kind: dict[str, list[dict[str, Any]]] = {k: [] for k in FIT_KINDS}
    for r in records:
        k = fits_kind(r)
        if k is not None:
            by_kind[k].append(r)
    models: dict[str, Any] = {k: getattr(base, k, None) for k in FIT_KINDS}
    if by_kind["fused_moe"]:
        start = models["fused_moe"]
        models["fused_moe"] = fit_fused_moe(fused_moe_rows(by_kind["fused_moe"]), gpu, start=start)
    if by_kind["deepep_normal"] or by_kind["deepep_ll"] or by_kind["nccl"]:
        from moesim import collectives
    if by_kind["deepep_normal"]:
        rs = by_kind["deepep_normal"]
        models["deepep_normal"] = collectives.fit_deepep_normal(
            *_arrays(rs, "phase", "tokens", "hidden", "top_k", "num_experts", "num_sms", "median_us")
        )
    if by_kind["deepep_ll"]:
        rs = by_kind["deepep_ll"]
        models["deepep_ll"] = collectives.fit_deepep_ll(
            *_arrays(rs, "phase", "tokens", "hidden", "top_k", "num_experts", "median_us")
        )
    if by_kind["nccl"]:
        rs = by_kind["nccl"]
        models["nccl"] = collectives.fit_nccl(*_arrays(rs, "op", "num_gpus", "message_bytes", "median_us"))
    if all(m is None for m in models.values()):
        raise field_error(source, "records", "no records to fit (vLLM BF16 fused MoE, DeepEP or NCCL)")
    return Calibration(
        device_name=device_name,
        source=source,
        fitted=_dt.date.today().isoformat(),
        dtype="bf16",
        launch_overhead_us=float(models["fused_moe"].kernel_us) if models["fused_moe"] is not None else 0.0,
        gemm_fallback=getattr(base, "gemm_fallback", None),
        hbm=getattr(base, "hbm", None),
        gemm_shapes=getattr(base, "gemm_shapes", ()),
        gpu=getattr(gpu, "slug", None),
        tables=tuple(tables),
        **models,
    )


def _fused_uncalibrated(records: Sequence[dict[str, Any]], gpu: Any) -> np.ndarray:
    """The roofline of :func:`moesim.compute.fused_moe_us` per record (mean over the routing's draws)."""
    from moesim.compute import fused_moe_us
    from moesim.traces.collector_routing import local_counts

    out = np.empty(len(records))
    cache: dict[tuple[Any, ...], np.ndarray] = {}
    for i, r in enumerate(records):
        key = (r["tokens"], r["top_k"], r["num_experts"], r["ep"], r["distribution"])
        if key not in cache:
            cache[key] = local_counts(*key)
        t = fused_moe_us(
            gpu,
            cache[key],
            r["hidden"],
            r["intermediate"] // r["tp"],
            r["top_k"],
            gated=bool(r.get("gated", True)),
            ep_mode=r.get("ep_mode", "dispatched"),
            walked_rows=r["tokens"] * r["top_k"],
        )
        out[i] = float(np.mean(t))
    return out


def predict(records: Sequence[dict[str, Any]], calibration: Calibration | None, gpu: Any) -> np.ndarray:
    """Predicted time (us) of each record, in order; NaN where the calibration lacks the record's model."""
    out = np.full(len(records), np.nan)
    by_kind: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_kind.setdefault(r["kind"], []).append(i)
    for kind, idx in by_kind.items():
        rs = [records[i] for i in idx]
        model = getattr(calibration, kind, None) if calibration is not None else None
        if kind == "fused_moe":
            if model is None:
                out[idx] = _fused_uncalibrated(rs, gpu)
            else:
                out[idx] = fused_moe_rows(rs).predict(gpu, model)
            continue
        if model is None:
            continue
        from moesim import collectives

        if kind == "deepep_normal":
            for phase in ("dispatch", "combine"):
                sel = [j for j, r in zip(idx, rs, strict=True) if r["phase"] == phase]
                sub = [records[j] for j in sel]
                if sub:
                    tokens, hidden, top_k, experts, sms = _arrays(
                        sub, "tokens", "hidden", "top_k", "num_experts", "num_sms"
                    )
                    out[sel] = _elementwise(
                        lambda t, h, k, e, s, m=model, ph=phase: collectives.deepep_normal_us(m, ph, t, h, k, e, s),
                        tokens, hidden, top_k, experts, sms,
                    )  # fmt: skip
        elif kind == "deepep_ll":
            for phase in ("dispatch", "combine"):
                sel = [j for j, r in zip(idx, rs, strict=True) if r["phase"] == phase]
                sub = [records[j] for j in sel]
                if sub:
                    tokens, hidden, top_k, experts = _arrays(sub, "tokens", "hidden", "top_k", "num_experts")
                    out[sel] = _elementwise(
                        lambda t, h, k, e, m=model, ph=phase: collectives.deepep_ll_us(m, ph, t, h, k, e),
                        tokens, hidden, top_k, experts,
                    )  # fmt: skip
        elif kind == "nccl":
            for op in sorted({r["op"] for r in rs}):
                for n in sorted({r["num_gpus"] for r in rs}):
                    sel = [j for j, r in zip(idx, rs, strict=True) if r["op"] == op and r["num_gpus"] == n]
                    if sel:
                        nbytes = np.array([records[j]["message_bytes"] for j in sel], dtype=np.float64)
                        out[sel] = collectives.nccl_us(model, op, n, nbytes)
    return out


def _elementwise(fn: Any, tokens: np.ndarray, *dims: np.ndarray) -> np.ndarray:
    """Call ``fn(tokens[sel], *scalars)`` once per distinct tuple of the scalar dims (the models take
    per-shape scalars and vectorise over tokens)."""
    out = np.empty(len(tokens))
    keys = np.stack([np.asarray(d, dtype=np.float64) for d in dims], axis=1)
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    for u, key in enumerate(uniq):
        sel = inverse.reshape(-1) == u
        out[sel] = fn(tokens[sel].astype(np.float64), *(int(v) for v in key))
    return out

"""Calibrated times of the communication kernels of expert parallelism: NCCL collectives, DeepEP normal and
DeepEP low-latency dispatch/combine.

What the measured rows mean comes from AIConfigurator's collectors (ai-dynamo/aiconfigurator, ``collector/``;
see :mod:`moesim.aiconfigurator`): nccl-tests out-of-place timings with ``size`` the whole buffer, and SGLang's
DeepEP benchmark on one 8-GPU node with tokens per rank, FP8 dispatch (one FP32 scale per 128 channels) and
BF16 combine. Every constant below is fitted (:func:`fit_nccl`, :func:`fit_deepep_normal`,
:func:`fit_deepep_ll`); none is a datasheet number.

NCCL, per (op, GPUs n), ``S`` = nccl-tests size (bytes), ``f`` the bus factor (``(n-1)/n``; all-reduce
``2(n-1)/n``)::

    t = lat + f S / (bw * (f S / (f S + s_half))^q)          # us; bw in B/us, s_half in bytes

DeepEP normal, per phase, ``T`` tokens per rank, ``r`` expected distinct destination ranks of a token (top-k
experts drawn without replacement, E/R experts per rank), ``b`` bytes per token (dispatch ``H (1 + 4/128)``,
combine ``2 H``), ``s`` SMs given to the kernel::

    r = R (1 - C(E - E/R, k) / C(E, k))
    t = lat + lat_sm / s + E lat_e + T tok_us + T r b (1 / bw + 1 / (s bw_sm))

DeepEP low-latency, per phase (one message per (token, expert), no dedup; the receive side works expert by
expert, so a rank with fewer than ``e_sat`` local experts reaches only that share of ``bw``)::

    t = lat + E lat_e + T k tok_us + T k b / (bw min(1, (E / R) / e_sat))
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from moesim.errors import field_error
from moesim.schema import check_keys

__all__ = [
    "NCCL_OPS",
    "DeepEPLowLatencyParams",
    "DeepEPNormalParams",
    "NCCLCurve",
    "NCCLParams",
    "collectives_to_dict",
    "deepep_ll_from_dict",
    "deepep_ll_us",
    "deepep_normal_from_dict",
    "deepep_normal_us",
    "distinct_ranks",
    "fit_deepep_ll",
    "fit_deepep_normal",
    "fit_nccl",
    "nccl_from_dict",
    "nccl_us",
]

NCCL_OPS = ("alltoall", "all_gather", "reduce_scatter", "all_reduce")
PHASES = ("dispatch", "combine")
FP8_SCALE_BYTES = 4.0 / 128  # one FP32 scale per 128 channels


def _check(source: str, prefix: str, obj: Any) -> None:
    for f in fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise field_error(source, f"{prefix}{f.name}", f"expected a finite number >= 0, got {v!r}")


@dataclass(frozen=True)
class NCCLCurve:
    """One (op, GPU count) curve: ``lat`` us, ``bw`` bus B/us at large sizes, ``s_half`` bytes, ``q``."""

    lat: float
    bw: float
    s_half: float
    q: float

    def __post_init__(self) -> None:
        _check("nccl", "", self)
        if self.bw <= 0:
            raise field_error("nccl", "bw", f"must be > 0, got {self.bw!r}")


@dataclass(frozen=True)
class NCCLParams:
    """Curves keyed ``"<op>/<num_gpus>"``."""

    curves: tuple[tuple[str, NCCLCurve], ...]

    def curve(self, op: str, num_gpus: int) -> tuple[NCCLCurve, int]:
        """The curve of ``op`` on ``num_gpus`` GPUs, else the fitted GPU count nearest in log2 (its ``n``)."""
        have = [(int(k.split("/")[1]), c) for k, c in self.curves if k.split("/")[0] == op]
        if not have:
            raise field_error(
                "nccl", op, f"no fitted curve (ops: {', '.join(sorted({k.split('/')[0] for k, _ in self.curves}))})"
            )
        n, c = min(have, key=lambda nc: abs(math.log2(nc[0]) - math.log2(max(num_gpus, 1))))
        return c, n


def bus_factor(op: str, num_gpus: int) -> float:
    """nccl-tests' bus-bandwidth factor: ``(n-1)/n``, all-reduce ``2(n-1)/n``."""
    base = (num_gpus - 1) / max(num_gpus, 1)
    return 2 * base if op == "all_reduce" else base


def _nccl_curve_us(c: NCCLCurve, bus_bytes: np.ndarray) -> np.ndarray:
    b = np.maximum(np.asarray(bus_bytes, dtype=np.float64), 1.0)
    ramp = (b / (b + c.s_half)) ** c.q
    return c.lat + b / (c.bw * ramp)


def nccl_us(params: NCCLParams, op: str, num_gpus: int, message_bytes: np.ndarray) -> np.ndarray:
    """nccl-tests time (us) of one ``op`` of ``message_bytes`` (the whole buffer) on ``num_gpus`` GPUs.

    A GPU count without its own curve uses the nearest fitted one, its bus bytes rescaled by the bus factor.
    """
    c, _ = params.curve(op, num_gpus)
    return _nccl_curve_us(c, bus_factor(op, num_gpus) * np.asarray(message_bytes, dtype=np.float64))


@dataclass(frozen=True)
class DeepEPPhase:
    """One phase's constants (module docstring): us, us*SM, us per token, B/us, B/us per SM."""

    lat: float
    lat_sm: float
    tok_us: float
    bw: float
    bw_sm: float
    lat_e: float = 0.0  # per expert of the model (us): per-expert counts and buffers
    e_sat: float = 0.0  # low-latency only: local experts that saturate the receive side (0: no limit)

    def __post_init__(self) -> None:
        _check("deepep", "", self)


@dataclass(frozen=True)
class DeepEPNormalParams:
    dispatch: DeepEPPhase
    combine: DeepEPPhase


@dataclass(frozen=True)
class DeepEPLowLatencyParams:
    dispatch: DeepEPPhase  # lat_sm and bw_sm unused (0)
    combine: DeepEPPhase


def distinct_ranks(top_k: int, num_experts: int, num_ranks: int = 8) -> float:
    """Expected distinct ranks among a token's ``top_k`` experts (uniform, without replacement):
    ``R (1 - C(E - E/R, k) / C(E, k))``."""
    per = num_experts / num_ranks
    k = min(top_k, num_experts)
    miss = 1.0
    for i in range(k):  # C(E - per, k) / C(E, k) as a product
        miss *= max(num_experts - per - i, 0.0) / (num_experts - i)
    return num_ranks * (1.0 - miss)


def _phase_bytes(phase: str, hidden: int) -> float:
    if phase not in PHASES:
        raise field_error("deepep", "phase", f"must be dispatch or combine, got {phase!r}")
    return hidden * (1.0 + FP8_SCALE_BYTES) if phase == "dispatch" else 2.0 * hidden


def deepep_normal_us(
    params: DeepEPNormalParams,
    phase: str,
    tokens: np.ndarray,
    hidden: int,
    top_k: int,
    num_experts: int,
    num_sms: int | np.ndarray,
    num_ranks: int = 8,
) -> np.ndarray:
    """DeepEP normal ``phase`` time (us) for ``tokens`` per rank (module docstring)."""
    p: DeepEPPhase = getattr(params, phase) if phase in PHASES else None  # type: ignore[assignment]
    nbytes = _phase_bytes(phase, hidden)
    t = np.asarray(tokens, dtype=np.float64)
    s = np.maximum(np.asarray(num_sms, dtype=np.float64), 1.0)
    volume = t * distinct_ranks(top_k, num_experts, num_ranks) * nbytes
    inv_bw = 1.0 / max(p.bw, 1e-9) + 1.0 / np.maximum(s * p.bw_sm, 1e-9)
    return p.lat + p.lat_sm / s + num_experts * p.lat_e + t * p.tok_us + volume * inv_bw


def deepep_ll_us(
    params: DeepEPLowLatencyParams,
    phase: str,
    tokens: np.ndarray,
    hidden: int,
    top_k: int,
    num_experts: int,
    num_ranks: int = 8,
) -> np.ndarray:
    """DeepEP low-latency ``phase`` time (us) for ``tokens`` per rank (module docstring)."""
    p: DeepEPPhase = getattr(params, phase) if phase in PHASES else None  # type: ignore[assignment]
    nbytes = _phase_bytes(phase, hidden)
    t = np.asarray(tokens, dtype=np.float64)
    share = 1.0 if p.e_sat <= 0 else min(1.0, (num_experts / num_ranks) / p.e_sat)
    return p.lat + num_experts * p.lat_e + t * top_k * p.tok_us + t * top_k * nbytes / (max(p.bw, 1e-9) * share)


# --------------------------------------------------------------------------------------------- fitting
def _lsq(residual: Any, x0: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Bounded soft-L1 least squares of log relative errors (:func:`moesim.fused_moe.fit_fused_moe` states the
    loss): nccl-tests tables hold a few sizes timed at twice their neighbours."""
    from scipy.optimize import least_squares

    from moesim.fused_moe import ROBUST_SCALE

    x0 = np.clip(x0, lo + 1e-9 * (hi - lo), hi - 1e-9 * (hi - lo))
    robust = {"loss": "soft_l1", "f_scale": ROBUST_SCALE}
    sol = least_squares(residual, x0, bounds=(lo, hi), x_scale="jac", max_nfev=2000, **robust)
    return np.clip(sol.x, lo, hi)


def fit_nccl(op: np.ndarray, num_gpus: np.ndarray, message_bytes: np.ndarray, measured_us: np.ndarray) -> NCCLParams:
    """One :class:`NCCLCurve` per (op, GPU count), robust least squares on ``log(predicted / measured)``."""
    op, num_gpus = np.asarray(op).astype(str), np.asarray(num_gpus).astype(int)
    size, meas = np.asarray(message_bytes, dtype=np.float64), np.asarray(measured_us, dtype=np.float64)
    curves = []
    for o in sorted(set(op)):
        for n in sorted(set(num_gpus[op == o])):
            sel = (op == o) & (num_gpus == n)
            bus = bus_factor(o, int(n)) * size[sel]
            y = np.log(meas[sel])
            lo = np.array([0.0, 1e3, 0.0, 0.5])
            hi = np.array([1e3, 2e6, 1e9, 1.5])

            def res(x: np.ndarray, bus: np.ndarray = bus, y: np.ndarray = y) -> np.ndarray:
                return np.log(_nccl_curve_us(NCCLCurve(*x), bus)) - y

            x0 = np.array([float(meas[sel].min()), 2e5, 1e6, 1.0])
            curves.append((f"{o}/{n}", NCCLCurve(*map(float, _lsq(res, x0, lo, hi)))))
    return NCCLParams(tuple(curves))


def _fit_phases(
    phase: np.ndarray, predict: Any, x0: np.ndarray, lo: np.ndarray, hi: np.ndarray, measured_us: np.ndarray
) -> dict[str, DeepEPPhase]:
    phase = np.asarray(phase).astype(str)
    out = {}
    for ph in PHASES:
        sel = phase == ph
        if not sel.any():
            raise field_error("deepep", "phase", f"no {ph} rows to fit")
        y = np.log(np.asarray(measured_us, dtype=np.float64)[sel])

        def res(x: np.ndarray, sel: np.ndarray = sel, y: np.ndarray = y, ph: str = ph) -> np.ndarray:
            return np.log(np.maximum(predict(DeepEPPhase(*x), ph, sel), 1e-9)) - y

        out[ph] = DeepEPPhase(*map(float, _lsq(res, x0, lo, hi)))
    return out


def fit_deepep_normal(
    phase: np.ndarray,
    tokens: np.ndarray,
    hidden: np.ndarray,
    top_k: np.ndarray,
    num_experts: np.ndarray,
    num_sms: np.ndarray,
    measured_us: np.ndarray,
) -> DeepEPNormalParams:
    """Fit both phases of DeepEP normal (robust least squares on relative error)."""
    t, h = np.asarray(tokens, dtype=np.float64), np.asarray(hidden, dtype=np.float64)
    r = np.array([distinct_ranks(int(k), int(e)) for k, e in zip(top_k, num_experts, strict=True)])
    s = np.maximum(np.asarray(num_sms, dtype=np.float64), 1.0)

    e = np.asarray(num_experts, dtype=np.float64)

    def predict(p: DeepEPPhase, ph: str, sel: np.ndarray) -> np.ndarray:
        vol = t[sel] * r[sel] * np.array([_phase_bytes(ph, int(x)) for x in h[sel]])
        fixed = p.lat + p.lat_sm / s[sel] + e[sel] * p.lat_e + t[sel] * p.tok_us
        return fixed + vol * (1 / p.bw + 1 / (s[sel] * p.bw_sm))

    x0 = np.array([10.0, 50.0, 0.001, 2e5, 2e4, 0.01, 0.0])
    lo = np.array([0.0, 0.0, 0.0, 1e3, 1e2, 0.0, 0.0])
    hi = np.array([500.0, 5000.0, 1.0, 5e6, 5e6, 1.0, 1e-9])
    fitted = _fit_phases(phase, predict, x0, lo, hi, measured_us)
    return DeepEPNormalParams(fitted["dispatch"], fitted["combine"])


def fit_deepep_ll(
    phase: np.ndarray,
    tokens: np.ndarray,
    hidden: np.ndarray,
    top_k: np.ndarray,
    num_experts: np.ndarray,
    measured_us: np.ndarray,
) -> DeepEPLowLatencyParams:
    """Fit both phases of DeepEP low-latency (robust least squares on relative error)."""
    t, h = np.asarray(tokens, dtype=np.float64), np.asarray(hidden, dtype=np.float64)
    k = np.asarray(top_k, dtype=np.float64)
    e = np.asarray(num_experts, dtype=np.float64)

    def predict(p: DeepEPPhase, ph: str, sel: np.ndarray) -> np.ndarray:
        nbytes = np.array([_phase_bytes(ph, int(x)) for x in h[sel]])
        share = np.minimum(1.0, (e[sel] / 8) / max(p.e_sat, 1e-9))
        return p.lat + e[sel] * p.lat_e + t[sel] * k[sel] * p.tok_us + t[sel] * k[sel] * nbytes / (p.bw * share)

    x0 = np.array([10.0, 0.0, 0.001, 2e5, 0.0, 0.01, 4.0])
    lo = np.array([0.0, 0.0, 0.0, 1e3, 0.0, 0.0, 1e-3])
    hi = np.array([500.0, 1e-9, 1.0, 5e6, 1e-9, 1.0, 64.0])
    fitted = _fit_phases(phase, predict, x0, lo, hi, measured_us)
    return DeepEPLowLatencyParams(fitted["dispatch"], fitted["combine"])


# --------------------------------------------------------------------------------------------- files
def collectives_to_dict(p: NCCLParams | DeepEPNormalParams | DeepEPLowLatencyParams) -> dict[str, Any]:
    """JSON-able document of a parameter set (inverse: the ``*_from_dict`` functions)."""
    if isinstance(p, NCCLParams):
        return {key: {f.name: getattr(c, f.name) for f in fields(c)} for key, c in p.curves}
    return {ph: {f.name: getattr(getattr(p, ph), f.name) for f in fields(DeepEPPhase)} for ph in PHASES}


def _numbers(doc: Any, source: str, prefix: str, names: tuple[str, ...]) -> dict[str, float]:
    check_keys(source, prefix, doc, names)
    out = {}
    for n in names:
        v = doc[n]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise field_error(source, f"{prefix}{n}", f"expected a finite number >= 0, got {v!r}")
        out[n] = float(v)
    return out


def nccl_from_dict(doc: Any, source: str, prefix: str = "nccl.") -> NCCLParams:
    """Validate an ``nccl`` section: ``{"<op>/<n>": {lat, bw, s_half, q}}``."""
    if not isinstance(doc, Mapping) or not doc:
        raise field_error(source, prefix.rstrip("."), f"expected a non-empty mapping, got {doc!r}")
    names = tuple(f.name for f in fields(NCCLCurve))
    curves = []
    for key, sub in doc.items():
        op, _, n = str(key).partition("/")
        if op not in NCCL_OPS or not n.isdigit() or int(n) < 2:
            raise field_error(source, f"{prefix}{key}", f"expected '<op>/<gpus>' with op in {', '.join(NCCL_OPS)}")
        vals = _numbers(sub, source, f"{prefix}{key}.", names)
        if vals["bw"] <= 0:
            raise field_error(source, f"{prefix}{key}.bw", "must be > 0")
        curves.append((str(key), NCCLCurve(**vals)))
    return NCCLParams(tuple(curves))


def _phases_from_dict(doc: Any, source: str, prefix: str) -> dict[str, DeepEPPhase]:
    vals = check_keys(source, prefix, doc, PHASES)
    names = tuple(f.name for f in fields(DeepEPPhase))
    return {ph: DeepEPPhase(**_numbers(vals[ph], source, f"{prefix}{ph}.", names)) for ph in PHASES}


def deepep_normal_from_dict(doc: Any, source: str, prefix: str = "deepep_normal.") -> DeepEPNormalParams:
    """Validate a ``deepep_normal`` section: ``{dispatch: {...}, combine: {...}}``."""
    p = _phases_from_dict(doc, source, prefix)
    return DeepEPNormalParams(p["dispatch"], p["combine"])


def deepep_ll_from_dict(doc: Any, source: str, prefix: str = "deepep_ll.") -> DeepEPLowLatencyParams:
    """Validate a ``deepep_ll`` section: ``{dispatch: {...}, combine: {...}}``."""
    p = _phases_from_dict(doc, source, prefix)
    return DeepEPLowLatencyParams(p["dispatch"], p["combine"])

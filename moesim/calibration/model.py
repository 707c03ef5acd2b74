"""Measured efficiency curves that replace the GPU profile's constant ``gemm_efficiency`` / ``hbm_efficiency``.

A :class:`Calibration` says what fraction of a GPU's datasheet peak its kernels actually reach, as a function of
problem size, and what one kernel launch costs. :mod:`moesim.compute` calls it through its protocol
:class:`moesim.compute.EfficiencyModel`::

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from moesim.compute import MIN_EFFICIENCY
from moesim.schema import require

if TYPE_CHECKING:
    from moesim.collectives import DeepEPLowLatencyParams, DeepEPNormalParams, NCCLParams
    from moesim.fused_moe import FusedMoEParams

__all__ = ["MAX_LAUNCH_OVERHEAD_US", "MIN_EFFICIENCY", "SHAPE_MATCH_LOG2", "Calibration", "Curve"]

# A shape table stands in for another GEMM shape when their weight sizes n*k are within a factor 2**2 = 4:
# a GEMM's efficiency at fixed m depends mostly on its tile count (~ n), and an expert's two GEMMs (2I x H and
# H x I) differ by 2x in n*k. Beyond that (e.g. attention's tiny head_dim GEMMs) the pooled fallback is the
# less wrong guess. Modelling assumption, to be checked against the measurements of issue 7.
SHAPE_MATCH_LOG2 = 2.0
# A kernel launch costs microseconds (the shipped H100/H200 fits: a few us); 10 ms per launch is a limit, not a
# measurement: a larger value is a unit error (seconds or ns written as us) and would swamp every prediction.
MAX_LAUNCH_OVERHEAD_US = 1e4


@dataclass(frozen=True)
class Curve:
    """An efficiency curve: knots ``(log2_x[i], efficiency[i])``, ``log2_x`` strictly increasing."""

    log2_x: tuple[float, ...]
    efficiency: tuple[float, ...]

    def __post_init__(self) -> None:
        """At least one knot, one efficiency per knot, finite strictly increasing ``log2_x``, efficiencies in
        ``(0, 1]`` (a file's curves are checked with their file's field names first, in
        :mod:`moesim.calibration.file_format`)."""
        xs, ys = self.log2_x, self.efficiency
        require("curve", "log2_x", None if len(xs) else "no knots")
        if len(ys) != len(xs):
            require("curve", "efficiency", f"expected {len(xs)} values (one per knot), got {len(ys)}")
        if not all(math.isfinite(x) for x in xs) or any(b <= a for a, b in zip(xs, xs[1:])):
            require("curve", "log2_x", f"must be finite and strictly increasing, got {list(xs)}")
        bad = [y for y in ys if not 0.0 < y <= 1.0]
        if bad:
            require("curve", "efficiency", f"must be in (0, 1], got {bad[0]:g}")

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
    fused_moe: FusedMoEParams | None = None
    deepep_normal: DeepEPNormalParams | None = None
    deepep_ll: DeepEPLowLatencyParams | None = None
    nccl: NCCLParams | None = None
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

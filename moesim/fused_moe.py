"""Calibrated time of one Triton fused-MoE forward (top-k, align, two grouped GEMMs, activation, top-k sum).

This is the kernel model that measured calibrations fit (``moesim validate`` checks it against AIConfigurator's
vLLM and SGLang tables). Dimension legend: ``...`` any batch of (layer, GPU, row, draw); E_l local experts.

Two EP execution modes decide how many rows the kernels walk:

- ``dispatched`` (DeepEP style): only the rows routed to local experts arrive, ``walked = sum_e m_e``.
- ``allgather`` (every rank sees all tokens, as vLLM's EP without an all-to-all backend and AIConfigurator's
  one-rank emulation): the kernels walk all ``T k`` rows; rows of non-local experts cost activation and
  reduction traffic and zero writes, but no GEMM work.

For each GEMM ``j`` in ``(n, kd) = ((1 + gated) N, H)`` (gate+up) and ``(H, N)`` (down), with ``N`` the
per-shard intermediate size, ``a`` active local experts, ``b = sum_e ceil(m_e / BM)`` row blocks,
``mbar = sum_e m_e / a`` rows per active expert, the tile ``(BM, BN, BK)`` the engine runs
(:func:`moesim.vllm_configs.kernel_tile`), SMs ``S``,
peak ``P`` (FLOP/us), HBM bandwidth ``W`` (B/us)::

    tiles   = b * ceil(n / BN)
    t_w     = a n kd w / (W ew min(1, tiles / (S fill)))            # weight stream (us); w bytes per weight
    t_c     = 2 BM b ceil(n / BN) BN ceil(kd / BK) BK / (P ec mbar / (mbar + m_half))   # padded MMA work (us)
    t_k     = ceil(tiles / (S r)) ceil(kd / BK) tau                # waves x K steps, latency-bound (us);
                                                                    # r programs per SM (resident_programs)
    t_j     = u (t_w^p + t_c^p + t_k^p)^(1/p)                      # a smooth max of the three; u = misalign
                                                                    # if kd mod 16 != 0 (no wide loads), else 1

    traffic = walked (4 (1 + gated) N + 4 N + 4 H) + 4 T H          # bytes: GEMM1 out, activation, GEMM2 out,
                                                                    # top-k sum in/out (BF16, read + write)
    t       = t_1 + t_2 + traffic / (W ea)
            + kernels * kernel_us + a * expert_us + E * route_us_per_expert     # fixed costs (us)
            + mapped * map_us                                               # allgather EP's expert map

and ``t = 0`` when no row is walked. ``ew, ec, ea`` are fractions of the datasheet peaks, ``m_half`` the rows per
expert at which the tensor cores reach half of ``ec``, ``fill`` the fraction of SMs a kernel needs busy to
saturate HBM, ``tau`` the time of one K step of one tile, ``p`` the blend exponent. All are fitted
(:func:`fit_fused_moe`); none is a datasheet number.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from moesim.errors import field_error
from moesim.schema import check_keys
from moesim.vllm_configs import TileSource, kernel_tile

if TYPE_CHECKING:
    from moesim.specs import GPUSpec

__all__ = [
    "EP_MODES",
    "FusedMoEParams",
    "KernelStats",
    "fit_fused_moe",
    "fused_moe_kernel_us",
    "kernel_stats",
    "kernel_time_us",
    "resident_programs",
]

EP_MODES = ("dispatched", "allgather")
# Scale c of the soft-L1 loss of every measured fit, in log units: errors beyond ~10% count linearly.
ROBUST_SCALE = 0.1
MAX_WARPS_PER_SM = 64.0  # resident warps per SM on sm_80 and sm_90 (CUDA programming guide, compute capabilities)
# Kernels of one forward: top-k softmax, align/sort, GEMM1, activation, GEMM2, top-k sum.
KERNELS = 6


@dataclass(frozen=True)
class FusedMoEParams:
    """Fitted constants of the fused-MoE kernel model (see the module docstring for each one's role)."""

    kernel_us: float  # fixed cost per kernel of the forward (us)
    expert_us: float  # fixed cost per active local expert (us)
    route_us_per_expert: float  # top-k/align cost per expert of the model (us)
    ew: float  # weight-stream fraction of HBM peak
    ec: float  # tensor-core fraction of peak at large rows per expert
    m_half: float  # rows per expert where the tensor cores reach ec / 2
    ea: float  # activation-traffic fraction of HBM peak
    fill: float  # fraction of SMs whose tiles saturate HBM
    tau: float  # one K step of one wave of tiles (us)
    p: float  # blend exponent of the three GEMM terms
    map_us: float = 0.0  # EP with an expert map (allgather, ep > 1): remap of top-k ids and zero fills (us)
    ez: float = 0.6  # traffic of walked rows of non-local experts (zero fills), fraction of HBM peak
    misalign: float = 1.0  # slowdown of a GEMM whose K (its operands' row stride) is not a multiple of 16

    BOUNDS = {  # noqa: RUF012 -- class constant, not a field: (low, high) the fit searches and a file must obey
        "kernel_us": (0.0, 50.0),
        "expert_us": (0.0, 20.0),
        "route_us_per_expert": (0.0, 1.0),
        "ew": (0.05, 1.0),
        "ec": (0.05, 1.0),
        "m_half": (0.0, 4096.0),
        "ea": (0.05, 1.0),
        "fill": (1e-3, 4.0),
        "tau": (0.0, 10.0),
        "p": (1.0, 16.0),
        "map_us": (0.0, 50.0),
        "ez": (0.05, 4.0),
        "misalign": (1.0, 8.0),
    }

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            lo, hi = self.BOUNDS[f.name]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise field_error("fused_moe", f.name, f"expected a finite number, got {v!r}")
            if not lo <= v <= hi:
                raise field_error("fused_moe", f.name, f"must be in [{lo:g}, {hi:g}], got {v:g}")

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, doc: Any, source: str, prefix: str = "fused_moe.") -> FusedMoEParams:
        """Validate a ``fused_moe`` section; ``SpecError`` ``SOURCE: FIELD: PROBLEM``."""
        names = [f.name for f in fields(cls)]
        later = [f.name for f in fields(cls) if f.default is not MISSING]  # added later: older files still load
        check_keys(source, prefix, doc, [n for n in names if n not in later], later)
        try:
            given = {n: doc[n] for n in names if n in doc}
            given.setdefault("ez", given.get("ea", cls.ez))  # a file from before ez: zero rows cost as others
            return cls(**given)
        except Exception as exc:  # re-label the dataclass's own message with the file and section
            msg = str(exc).split(": ", 2)
            field, problem = (msg[1], msg[2]) if len(msg) == 3 else ("?", str(exc))
            raise field_error(source, f"{prefix}{field}", problem) from None


@dataclass(frozen=True)
class KernelStats:
    """What the kernel model needs of one routing, elementwise over ``...``: independent of the fitted
    constants, so a fit computes it once."""

    active: np.ndarray  # a: local experts with rows
    rows: np.ndarray  # sum_e m_e: local rows
    blocks: np.ndarray  # b = sum_e ceil(m_e / BM)
    bm: np.ndarray  # BM
    bn: np.ndarray  # BN
    bk: np.ndarray  # BK
    warps: np.ndarray  # num_warps of a tile's program
    stages: np.ndarray  # num_stages of its software pipeline
    walked: np.ndarray  # rows the kernels walk (mode-dependent)
    tokens: np.ndarray  # T tokens of the forward
    mapped: np.ndarray  # 1 where an expert map is applied (allgather EP over more than one rank), else 0


def kernel_stats(
    tokens_per_expert: np.ndarray,
    top_k: int,
    ep_mode: str = "dispatched",
    walked_rows: np.ndarray | float | None = None,
    expert_map: bool = False,
    intermediate_shard: int | None = None,
    tile: TileSource | None = None,
) -> KernelStats:
    """Stats of ``[..., E_l]`` local rows per expert (may be fractional expectations).

    ``walked_rows`` (``[...]``): rows the kernels walk in ``allgather`` mode (``T k`` of all tokens the rank
    sees); ignored in ``dispatched`` mode, where it is the local rows. ``expert_map``: the rank holds only
    some experts and maps the others out (allgather EP with ep > 1). The tile is the one the engine of
    ``tile`` runs (:func:`moesim.vllm_configs.kernel_tile`): its tuned file for ``(E_l, intermediate_shard,
    device)`` when the shard is given and the file exists, else its default by batch size.
    """
    if ep_mode not in EP_MODES:
        raise field_error("options", "ep_mode", f"must be one of {', '.join(EP_MODES)}, got {ep_mode!r}")
    m = np.asarray(tokens_per_expert, dtype=np.float64)
    active = (m > 0).sum(axis=-1).astype(np.float64)
    rows = m.sum(axis=-1)
    seen = rows if walked_rows is None else np.broadcast_to(np.asarray(walked_rows, dtype=np.float64), rows.shape)
    src = tile or TileSource()
    if not intermediate_shard:  # no shard, no file name: the engine's default tile
        src = TileSource(src.engine, src.version, None)
    bm, bn, bk, warps, stages = kernel_tile(seen / max(top_k, 1), m.shape[-1], int(intermediate_shard or 0), src)
    blocks = np.ceil(m / bm[..., None] - 1e-9).clip(min=0).sum(axis=-1)
    if ep_mode == "allgather" and walked_rows is not None:
        walked = np.maximum(np.broadcast_to(np.asarray(walked_rows, dtype=np.float64), rows.shape), rows)
    else:
        walked = rows
    mapped = np.full(rows.shape, 1.0 if (expert_map and ep_mode == "allgather") else 0.0)
    return KernelStats(active, rows, blocks, bm, bn, bk, warps, stages, walked, walked / max(top_k, 1), mapped)


def resident_programs(stats: KernelStats, gpu: GPUSpec) -> np.ndarray:
    """Programs (CTAs) of one tile shape an SM holds at once, by shared memory and by warps::

    smem = stages (BM + BN) BK 2          # bytes: the pipelined bf16 A and B tiles
    r    = max(1, min(floor(smem_sm / smem), floor(64 / warps)))      # 64 warps per SM (Ampere, Hopper)
    """
    smem = stats.stages * (stats.bm + stats.bn) * stats.bk * 2.0
    by_smem = np.floor(float(gpu.smem_per_sm_kb) * 1024.0 / np.maximum(smem, 1.0))
    by_warps = np.floor(MAX_WARPS_PER_SM / np.maximum(stats.warps, 1.0))
    return np.maximum(1.0, np.minimum(by_smem, by_warps))


def _gemm_us(
    stats: KernelStats, n: np.ndarray, kd: np.ndarray, gpu: GPUSpec, p: FusedMoEParams, weight_bytes: float
) -> np.ndarray:
    peak = float(gpu.bf16_tflops if weight_bytes > 1 else gpu.fp8_tflops or gpu.bf16_tflops) * 1e6  # FLOP/us
    bw = float(gpu.hbm_bw_gb_s) * 1e3  # B/us
    sms = float(gpu.sm_count)
    col_tiles = np.ceil(n / stats.bn)
    tiles = stats.blocks * col_tiles
    occupancy = np.minimum(1.0, tiles / (sms * p.fill))
    t_w = stats.active * n * kd * weight_bytes / (bw * p.ew * np.maximum(occupancy, 1e-9))
    mbar = stats.rows / np.maximum(stats.active, 1.0)
    eff = p.ec * mbar / (mbar + p.m_half)
    kd_pad = np.ceil(kd / stats.bk) * stats.bk
    t_c = 2.0 * stats.bm * stats.blocks * col_tiles * stats.bn * kd_pad / (peak * np.maximum(eff, 1e-9))
    t_k = np.ceil(tiles / (sms * resident_programs(stats, gpu))) * np.ceil(kd / stats.bk) * p.tau
    # Triton proves 16-element divisibility of integer arguments; a row stride without it gets no wide loads
    slow = np.where(np.mod(kd, 16) == 0, 1.0, p.misalign)
    return slow * (t_w**p.p + t_c**p.p + t_k**p.p) ** (1.0 / p.p)


def kernel_time_us(
    stats: KernelStats,
    gpu: GPUSpec,
    hidden: int | np.ndarray,
    intermediate_shard: int | np.ndarray,
    gated: bool | np.ndarray,
    num_experts: int | np.ndarray,
    params: FusedMoEParams,
    weight_bytes: float = 2.0,
) -> np.ndarray:
    """The fused-MoE time (us) of precomputed :class:`KernelStats` (equation in the module docstring)."""
    h = np.asarray(hidden, dtype=np.float64)
    n = np.asarray(intermediate_shard, dtype=np.float64)
    g = np.asarray(gated, dtype=np.float64)
    t = _gemm_us(stats, (1.0 + g) * n, h, gpu, params, weight_bytes)
    t = t + _gemm_us(stats, h, n, gpu, params, weight_bytes)
    per_row = 4.0 * (1.0 + g) * n + 4.0 * n + 4.0 * h
    bw = float(gpu.hbm_bw_gb_s) * 1e3
    t = t + (stats.rows * per_row + 4.0 * stats.tokens * h) / (bw * params.ea)
    t = t + (stats.walked - stats.rows) * per_row / (bw * params.ez)
    t = t + KERNELS * params.kernel_us + stats.active * params.expert_us + stats.mapped * params.map_us
    t = t + np.asarray(num_experts, dtype=np.float64) * params.route_us_per_expert
    return np.where(stats.walked > 0, t, 0.0)


def fused_moe_kernel_us(
    gpu: GPUSpec,
    tokens_per_expert: np.ndarray,
    hidden: int,
    intermediate_shard: int,
    top_k: int,
    num_experts: int,
    params: FusedMoEParams,
    *,
    gated: bool = True,
    weight_bytes: float = 2.0,
    ep_mode: str = "dispatched",
    walked_rows: np.ndarray | float | None = None,
    expert_map: bool = False,
    tile: TileSource | None = None,
) -> np.ndarray:
    """Fused-MoE forward over ``[..., E_l]`` local rows per expert (us), ``[...]``.

    Args:
        intermediate_shard: per-shard intermediate size ``N = I / tp``.
        num_experts: experts of the whole model (the router and align walk all of them).
        ep_mode: ``dispatched`` | ``allgather`` (module docstring); ``walked_rows`` is the ``T k`` rows an
            all-gather rank walks.
        tile: the engine, version and device whose tile choice applies (None: vLLM's default tile).
    """
    stats = kernel_stats(tokens_per_expert, top_k, ep_mode, walked_rows, expert_map, intermediate_shard, tile)
    return kernel_time_us(stats, gpu, hidden, intermediate_shard, gated, num_experts, params, weight_bytes)


# --------------------------------------------------------------------------------------------- fitting
def _param_vector(p: FusedMoEParams) -> np.ndarray:
    return np.array([getattr(p, f.name) for f in fields(FusedMoEParams)])


def _from_vector(x: np.ndarray) -> FusedMoEParams:
    names = [f.name for f in fields(FusedMoEParams)]
    return FusedMoEParams(**{n: float(v) for n, v in zip(names, x, strict=True)})


INITIAL = FusedMoEParams(
    kernel_us=5.0, expert_us=0.1, route_us_per_expert=0.01, ew=0.8, ec=0.7, m_half=32.0, ea=0.6, fill=0.1,
    tau=0.1, p=2.0, map_us=5.0, ez=0.6, misalign=1.5,
)  # fmt: skip


@dataclass(frozen=True)
class FitRows:
    """Measured rows prepared for :func:`fit_fused_moe`: per row, D draws of stats ``[R, D]`` (rows with
    fewer draws repeat one) and the row's dims ``[R]``."""

    stats: KernelStats  # arrays [R, D]
    hidden: np.ndarray
    intermediate_shard: np.ndarray
    gated: np.ndarray
    num_experts: np.ndarray
    measured_us: np.ndarray

    def predict(self, gpu: GPUSpec, params: FusedMoEParams, weight_bytes: float = 2.0) -> np.ndarray:
        """Mean over draws of the model time (us), ``[R]``: the collector reports the mean of its draws."""
        col = lambda a: np.asarray(a, dtype=np.float64)[:, None]  # noqa: E731 -- a one-line broadcast helper
        t = kernel_time_us(
            self.stats,
            gpu,
            col(self.hidden),
            col(self.intermediate_shard),
            col(self.gated),
            col(self.num_experts),
            params,
            weight_bytes,
        )
        return t.mean(axis=1)

    def subset(self, mask: np.ndarray) -> FitRows:
        s = self.stats
        return FitRows(
            KernelStats(*(getattr(s, f.name)[mask] for f in fields(KernelStats))),
            self.hidden[mask],
            self.intermediate_shard[mask],
            self.gated[mask],
            self.num_experts[mask],
            self.measured_us[mask],
        )


def fit_fused_moe(
    rows: FitRows, gpu: GPUSpec, weight_bytes: float = 2.0, start: FusedMoEParams | None = None
) -> FusedMoEParams:
    """Robust least-squares fit of :class:`FusedMoEParams` on relative error (:data:`ROBUST_SCALE`)::

    r_r = log(predicted_r / measured_r);   minimise sum_r 2 c^2 (sqrt(1 + (r_r / c)^2) - 1)   within BOUNDS

    Soft-L1: quadratic for errors under ``c``, linear above, so a few rows timed far off their neighbours
    (the tables hold some) do not pull the fit.
    """
    from scipy.optimize import least_squares

    names = [f.name for f in fields(FusedMoEParams)]
    lo = np.array([FusedMoEParams.BOUNDS[n][0] for n in names])
    hi = np.array([FusedMoEParams.BOUNDS[n][1] for n in names])
    x0 = np.clip(_param_vector(start or INITIAL), lo + 1e-9 * (hi - lo), hi - 1e-9 * (hi - lo))
    log_meas = np.log(rows.measured_us)

    def residual(x: np.ndarray) -> np.ndarray:
        pred = rows.predict(gpu, _from_vector(np.clip(x, lo, hi)), weight_bytes)
        return np.log(np.maximum(pred, 1e-6)) - log_meas

    robust = {"loss": "soft_l1", "f_scale": ROBUST_SCALE}
    sol = least_squares(residual, x0, bounds=(lo, hi), x_scale="jac", max_nfev=400, **robust)
    return _from_vector(np.clip(sol.x, lo, hi))

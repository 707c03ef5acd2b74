"""Expert compute: roofline of the grouped GEMMs of an MoE layer on one GPU.

Dimension legend: E_local experts (slots) on a GPU; leading ``...`` axes are any batch of (layer, GPU).

Every expert GEMM ``C[m, n] = A[m, k] @ W[k, n]`` costs (microseconds)::

    flops  = 2 * m * n * k                                            # FLOP
    bytes  = (n * k  if m > 0 else 0) * w_bytes                       # each active expert's weights, once
           + (m * k + m * n) * a_bytes                                # activations in and out
    t_gemm = max(flops / (peak_tflops * 1e6 * eff(m, n, k)),          # 1 TFLOP/s = 1e6 FLOP/us
                 bytes / (hbm_bw_gb_s * 1e3 * hbm_eff(bytes)))        # 1 GB/s = 1e3 B/us

and a grouped GEMM is the sum over its experts plus one launch overhead. The weight term is what makes
small-batch (decode) MoE weight-bandwidth bound: each expert that receives any token streams its whole
``n * k`` weight matrix from HBM.

``eff`` and ``hbm_eff`` come from an :class:`EfficiencyModel` when one is given (a
:class:`moesim.calibration.model.Calibration`: curves fitted to measured profiles), otherwise from the GPU
profile's constants ``gemm_efficiency`` / ``hbm_efficiency``. The peak is the FP8 one for 1-byte weights and the
BF16 one otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # the spec modules are only needed for type hints here
    from moesim.fused_moe import FusedMoEParams
    from moesim.specs import GPUSpec

# Modelling assumption, not a published figure: a CUDA kernel launch plus its tail costs a few microseconds
# when not captured in a CUDA graph; measured calibrations replace it with their own ``launch_overhead_us``.
DEFAULT_LAUNCH_OVERHEAD_US = 4.0
# Efficiencies are clipped to (0, 1]; this is the smallest value returned, so a time never divides by zero.
MIN_EFFICIENCY = 1e-6


class EfficiencyModel(Protocol):
    """What the cost model reads of a calibration (:class:`moesim.calibration.model.Calibration` is one)::

        eff     = gemm_efficiency(m, n, k)  # fraction of peak dense TFLOP/s of m x n x k GEMMs, elementwise over m
        hbm_eff = hbm_efficiency(nbytes)    # fraction of peak HBM GB/s moving nbytes (read + write), elementwise
        launch_overhead_us                  # us per kernel launch
        has_curves                          # both curves present (else the GPU profile's constants hold)
        fused_moe                           # fitted fused-MoE kernel model, or None (the roofline below)
        device_name                         # the measured device (picks vLLM's tile configs)

    Efficiencies are clipped to ``[MIN_EFFICIENCY, 1]`` here whatever the model returns.
    """

    @property
    def launch_overhead_us(self) -> float: ...

    @property
    def has_curves(self) -> bool: ...

    @property
    def fused_moe(self) -> FusedMoEParams | None: ...

    @property
    def device_name(self) -> str: ...

    def gemm_efficiency(self, m: np.ndarray | float, n: int, k: int) -> np.ndarray: ...

    def hbm_efficiency(self, nbytes: np.ndarray | float) -> np.ndarray: ...


def peak_tflops(gpu: GPUSpec, dtype_bytes: float) -> float:
    """Dense peak for the GEMM dtype: FP8 for 1-byte operands, BF16 otherwise (TFLOP/s)."""
    return float(gpu.fp8_tflops) if dtype_bytes <= 1 else float(gpu.bf16_tflops)


def launch_overhead_us(calibration: EfficiencyModel | None) -> float:
    """Per-kernel launch overhead (us): the calibration's, or :data:`DEFAULT_LAUNCH_OVERHEAD_US`."""
    if calibration is None:
        return DEFAULT_LAUNCH_OVERHEAD_US
    return float(calibration.launch_overhead_us)


def has_curves(calibration: EfficiencyModel | None) -> bool:
    """Whether ``calibration`` carries GEMM/HBM efficiency curves (a schema-2 file may hold only kernel
    models; then the GPU profile's constants stay in force for the GEMMs outside the fused MoE)."""
    return calibration is not None and bool(getattr(calibration, "has_curves", True))


def fused_moe_params(calibration: EfficiencyModel | None) -> FusedMoEParams | None:
    """The calibration's fitted fused-MoE kernel model (:class:`moesim.fused_moe.FusedMoEParams`), or None."""
    return getattr(calibration, "fused_moe", None) if calibration is not None else None


def gemm_efficiency(
    gpu: GPUSpec, m: np.ndarray, n: int, k: int, calibration: EfficiencyModel | None = None
) -> np.ndarray:
    """Fraction of peak FLOP/s reached by one ``m x n x k`` GEMM (dimensionless, (0, 1]; a calibration's
    value is clipped as :class:`moesim.calibration.model.Curve` clips it, so every :class:`EfficiencyModel`
    obeys the same bounds)."""
    m = np.asarray(m, dtype=np.float64)
    if not has_curves(calibration):
        return np.full(m.shape, float(gpu.gemm_efficiency))
    eff = np.asarray(calibration.gemm_efficiency(np.maximum(m, 1.0), n, k), dtype=np.float64)
    return np.clip(np.broadcast_to(eff, m.shape), MIN_EFFICIENCY, 1.0)


def hbm_efficiency(gpu: GPUSpec, nbytes: np.ndarray, calibration: EfficiencyModel | None = None) -> np.ndarray:
    """Fraction of HBM bandwidth reached when streaming ``nbytes`` (dimensionless, (0, 1]; clipped like
    :func:`gemm_efficiency`)."""
    nbytes = np.asarray(nbytes, dtype=np.float64)
    if not has_curves(calibration):
        return np.full(nbytes.shape, float(gpu.hbm_efficiency))
    eff = np.asarray(calibration.hbm_efficiency(np.maximum(nbytes, 1.0)), dtype=np.float64)
    return np.clip(np.broadcast_to(eff, nbytes.shape), MIN_EFFICIENCY, 1.0)


def memory_us(gpu: GPUSpec, nbytes: np.ndarray | float, calibration: EfficiencyModel | None = None) -> np.ndarray:
    """Time to move ``nbytes`` through HBM (us): ``nbytes / (hbm_bw_gb_s * 1e3 * hbm_eff(nbytes))``."""
    nbytes = np.asarray(nbytes, dtype=np.float64)
    return nbytes / (float(gpu.hbm_bw_gb_s) * 1e3 * hbm_efficiency(gpu, nbytes, calibration))


def gemm_us(
    gpu: GPUSpec,
    m: np.ndarray,
    n: int,
    k: int,
    dtype_bytes: float = 2,
    calibration: EfficiencyModel | None = None,
    act_bytes: float = 2,
) -> np.ndarray:
    """Roofline time (us) of independent ``m x n x k`` GEMMs, elementwise over ``m`` (no launch overhead).

    ``m == 0`` costs nothing (the expert is skipped, its weights are not read).
    """
    m = np.asarray(m, dtype=np.float64)
    active = m > 0
    flops = 2.0 * m * n * k
    nbytes = np.where(active, float(n) * k * dtype_bytes, 0.0) + (m * k + m * n) * act_bytes
    peak = peak_tflops(gpu, dtype_bytes) * 1e6  # FLOP/us
    t_flops = flops / (peak * gemm_efficiency(gpu, m, n, k, calibration))
    t_bytes = memory_us(gpu, nbytes, calibration)
    return np.where(active, np.maximum(t_flops, t_bytes), 0.0)


def grouped_gemm_us(
    gpu: GPUSpec,
    tokens_per_expert: np.ndarray,
    n: int,
    k: int,
    dtype_bytes: float = 2,
    calibration: EfficiencyModel | None = None,
) -> np.ndarray:
    """One grouped GEMM over the local experts (us).

    Args:
        tokens_per_expert: ``[..., E_local]`` rows of each expert's GEMM (padded or not; may be fractional
            expectations).
        n, k: output and reduction dims of every expert GEMM.
        dtype_bytes: bytes per weight element (1 = FP8, 2 = BF16).

    Returns:
        ``[...]``: ``sum_e t_gemm(m_e) + launch_overhead``; a GPU with no tokens at all costs nothing.
    """
    m = np.asarray(tokens_per_expert, dtype=np.float64)
    per_expert = gemm_us(gpu, m, n, k, dtype_bytes, calibration)
    total = per_expert.sum(axis=-1)
    return np.where(m.sum(axis=-1) > 0, total + launch_overhead_us(calibration), 0.0)


def pad_to_block(tokens_per_expert: np.ndarray, block_size_m: int) -> np.ndarray:
    """Rows each expert occupies after padding to the kernel's block: ``ceil(m / B) * B`` (0 stays 0).

    Fractional expected counts are padded as ``ceil`` of the expectation: a modelling simplification of
    ``E[ceil(m / B)] * B`` that is exact for integer counts.
    """
    m = np.asarray(tokens_per_expert, dtype=np.float64)
    if block_size_m <= 1:
        return m
    return np.ceil(m / block_size_m - 1e-9) * block_size_m


def fused_moe_us(
    gpu: GPUSpec,
    tokens_per_expert: np.ndarray,
    hidden: int,
    intermediate: int,
    top_k: int,
    dtype_bytes: float = 2,
    block_size_m: int = 64,
    calibration: EfficiencyModel | None = None,
    *,
    num_experts: int | None = None,
    gated: bool = True,
    ep_mode: str = "dispatched",
    walked_rows: np.ndarray | float | None = None,
    expert_map: bool = False,
) -> np.ndarray:
    """Both GEMMs of a fused MoE layer over the local experts (us), as vLLM's ``fused_moe`` runs them.

    With a calibration that holds a fitted fused-MoE model, this is
    :func:`moesim.fused_moe.fused_moe_kernel_us` (the whole forward: fixed costs, both GEMMs, activation and
    top-k sum, the EP mode's walked rows; ``block_size_m`` is then the kernel's own choice). Otherwise the
    roofline below, where in ``allgather`` EP mode the activation and top-k sum traffic covers
    ``walked_rows``.

    Args:
        tokens_per_expert: ``[..., E_local]`` token-expert assignments per local expert (unpadded).
        hidden: model hidden size H; intermediate: per-expert intermediate size I.
        top_k: choices per token; the final weighted sum over the k expert outputs reads ``M*k`` rows and
            writes ``M`` (``M = sum_e m_e / top_k`` tokens).
        block_size_m: each expert's rows are padded to a multiple of it (the kernel computes the padding).

    Returns ``[...]`` us::

        t = grouped(pad(m), n=2I, k=H)        # gate+up, SiLU*mul fused in the epilogue
          + grouped(pad(m), n=H,  k=I)        # down
          + hbm(m * 2I * 2 + m * I * 2)       # activation round trip of SiLU(gate)*up (BF16)
          + hbm(m * H * 2 * (1 + 1/top_k))    # weighted sum of the k outputs per token
    """
    m = np.asarray(tokens_per_expert, dtype=np.float64)
    params = fused_moe_params(calibration)
    if params is not None:
        from moesim.fused_moe import fused_moe_kernel_us
        from moesim.vllm_configs import TileSource

        return fused_moe_kernel_us(
            gpu,
            m,
            hidden,
            intermediate,
            top_k,
            num_experts if num_experts is not None else m.shape[-1],
            params,
            gated=gated,
            weight_bytes=dtype_bytes,
            ep_mode=ep_mode,
            walked_rows=walked_rows,
            expert_map=expert_map,
            tile=TileSource("vllm", None, getattr(calibration, "device_name", None)),
        )
    padded = pad_to_block(m, block_size_m)
    t = grouped_gemm_us(gpu, padded, (2 if gated else 1) * intermediate, hidden, dtype_bytes, calibration)
    t = t + grouped_gemm_us(gpu, padded, hidden, intermediate, dtype_bytes, calibration)
    rows = m.sum(axis=-1)
    if ep_mode == "allgather" and walked_rows is not None:
        rows = np.maximum(rows, np.asarray(walked_rows, dtype=np.float64))
    act = rows * (2.0 * intermediate * 2 + intermediate * 2) + rows * hidden * 2.0 * (1.0 + 1.0 / max(top_k, 1))
    t = t + np.where(rows > 0, memory_us(gpu, act, calibration) + launch_overhead_us(calibration), 0.0)
    return t


def dense_mlp_us(
    gpu: GPUSpec,
    num_tokens: np.ndarray | float,
    hidden: int,
    intermediate: int,
    dtype_bytes: float = 2,
    calibration: EfficiencyModel | None = None,
) -> np.ndarray:
    """A gated MLP (gate+up then down) over ``num_tokens`` rows: shared experts and dense layers (us)."""
    m = np.asarray(num_tokens, dtype=np.float64)[..., None]
    if intermediate <= 0:
        return np.zeros(m.shape[:-1])
    t = grouped_gemm_us(gpu, m, 2 * intermediate, hidden, dtype_bytes, calibration)
    return t + grouped_gemm_us(gpu, m, hidden, intermediate, dtype_bytes, calibration)

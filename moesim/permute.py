"""Permute and unpermute: gathering received tokens into per-expert blocks and scattering results back.

Dimension legend: G GPUs, E_local experts on a GPU; leading ``...`` axes are any batch of (layer, GPU).

Memory bound on the GPU that hosts the experts. With R received token rows (after per-GPU dedup), A local
token-expert assignments and P = sum_e ceil(m_e / B) * B padded rows (B = the kernel's BLOCK_SIZE_M)::

    permute_bytes   = R * H * b_in  + P * H * b_in     # read each received row, write the padded blocks
                    + P * 4                            # sorted_token_ids (int32), padding included
    unpermute_bytes = A * H * 2     + R * H * 2        # read each expert output (BF16), write one reduced
                                                       # row per received token (sent back by combine)
    t = hbm(permute_bytes) + hbm(unpermute_bytes) + 2 * launch_overhead

``b_in`` is the dispatch dtype's bytes per element (FP8 rows carry a 4-byte scale per 128 channels).
Padding rows are written as in vLLM's ``moe_align_block_size`` + fused kernel: the kernel touches
whole blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from moesim.compute import launch_overhead_us, memory_us

if TYPE_CHECKING:
    from moesim.compute import EfficiencyModel
    from moesim.specs import GPUSpec


def permute_us(
    gpu: GPUSpec,
    received_tokens: np.ndarray,
    assignments: np.ndarray,
    padded_rows: np.ndarray,
    hidden: int,
    in_bytes_per_elem: float = 2.0,
    calibration: EfficiencyModel | None = None,
) -> np.ndarray:
    """Permute + unpermute time (us), elementwise over the batch axes of the three count arrays."""
    r = np.asarray(received_tokens, dtype=np.float64)
    a = np.asarray(assignments, dtype=np.float64)
    p = np.asarray(padded_rows, dtype=np.float64)
    permute_bytes = r * hidden * in_bytes_per_elem + p * hidden * in_bytes_per_elem + p * 4.0
    unpermute_bytes = a * hidden * 2.0 + r * hidden * 2.0
    t = memory_us(gpu, permute_bytes, calibration) + memory_us(gpu, unpermute_bytes, calibration)
    return np.where(a > 0, t + 2.0 * launch_overhead_us(calibration), 0.0)

"""Router cost: the gate GEMM and the (group-limited) top-k, per GPU, in microseconds.

Dimension legend: T tokens on the GPU, H hidden size, E routed experts, k top-k, n_group groups.

Every GPU routes its own T tokens (attention is data parallel, the router sits before dispatch)::

    t_gate = gemm_us(m=T, n=E, k=H)                         # roofline, see compute.py; FP32 logits are small
    t_topk = hbm(T * E * 4 * passes + T * k * (4 + 8))      # read the FP32 scores, write ids + weights
    passes = 2 if n_group > 1 else 1                        # group-limited routing scans the scores twice
                                                            # (group scores, then the masked top-k)
    t      = t_gate + t_topk + launch_overhead * (1 + passes)

The top-k pass is modelled as memory bound (modelling assumption: a fused top-k kernel reads each score once
per pass and is limited by HBM, not by the k-way selection).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from moesim.compute import gemm_us, launch_overhead_us, memory_us

if TYPE_CHECKING:
    from moesim.compute import EfficiencyModel
    from moesim.specs import GPUSpec


def router_us(
    gpu: GPUSpec,
    num_tokens: np.ndarray | float,
    hidden: int,
    num_experts: int,
    top_k: int,
    n_group: int = 1,
    act_bytes: float = 2,
    calibration: EfficiencyModel | None = None,
) -> np.ndarray:
    """Gate GEMM + top-k for ``num_tokens`` tokens (us); elementwise over ``num_tokens``."""
    t_tokens = np.asarray(num_tokens, dtype=np.float64)
    # the gate weight is kept in BF16 in every model we know (DeepSeek-V3 keeps it unquantised)
    t_gate = gemm_us(gpu, t_tokens, num_experts, hidden, dtype_bytes=2, calibration=calibration, act_bytes=act_bytes)
    passes = 2 if n_group > 1 else 1
    topk_bytes = t_tokens * num_experts * 4.0 * passes + t_tokens * top_k * (4.0 + 8.0)
    t_topk = memory_us(gpu, topk_bytes, calibration)
    overhead = launch_overhead_us(calibration) * (1 + passes)
    return np.where(t_tokens > 0, t_gate + t_topk + overhead, 0.0)

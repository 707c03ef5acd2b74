"""Attention and dense layers by a simple roofline, so a step's "share of time in all-to-all" means something.

Attention is data parallel (every GPU runs it on its own T tokens with replicated weights, as DeepSeek-V3's
EP deployments do); so are the dense MLP layers and the LM head. Per GPU, in microseconds::

    attn_proj = gemm(T, n_h*d, H) + gemm(T, 2*n_kv*d, H) + gemm(T, H, n_h*d)      # q, kv, o projections
    attn_core = 4 * T * ctx * n_h * d / (peak * eff)                              # QK^T and PV, FLOP-bound
    ctx       = (seq_len + 1) / 2        # mean causal context of a prefill chunk of seq_len tokens
    dense_mlp = gemm(T, 2*I_dense, H) + gemm(T, H, I_dense)                       # gate+up, down
    lm_head   = gemm(T, vocab, H)

``gemm`` is the roofline of ``moesim.compute``. Modelling assumptions: multi-head attention with the spec's
heads and head_dim stands in for the model's exact attention variant (MLA's low-rank projections are not
modelled); the attention core runs at the GEMM efficiency (FlashAttention-style kernels); norms, rotary and
residual adds are ignored (memory bound, a few percent).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from moesim.compute import dense_mlp_us, gemm_efficiency, gemm_us, launch_overhead_us, peak_tflops

if TYPE_CHECKING:
    from moesim.compute import EfficiencyModel
    from moesim.specs import GPUSpec, ModelSpec


def attention_us(
    gpu: GPUSpec,
    model: ModelSpec,
    num_tokens: float,
    seq_len: int,
    dtype_bytes: float = 2,
    calibration: EfficiencyModel | None = None,
) -> float:
    """One attention block on ``num_tokens`` tokens of sequences ``seq_len`` long (us)."""
    t = float(num_tokens)
    if t <= 0:
        return 0.0
    h = model.hidden_size
    q_dim = model.num_attention_heads * model.head_dim
    kv_dim = 2 * model.num_kv_heads * model.head_dim
    proj = (
        gemm_us(gpu, t, q_dim, h, dtype_bytes, calibration)
        + gemm_us(gpu, t, kv_dim, h, dtype_bytes, calibration)
        + gemm_us(gpu, t, h, q_dim, dtype_bytes, calibration)
    )
    ctx = (max(int(seq_len), 1) + 1) / 2.0
    flops = 4.0 * t * ctx * q_dim
    eff = gemm_efficiency(gpu, np.asarray(t), int(ctx), model.head_dim, calibration)
    core = flops / (peak_tflops(gpu, 2) * 1e6 * float(eff))  # attention math in BF16
    return float(proj + core + 4 * launch_overhead_us(calibration))


def dense_layer_us(
    gpu: GPUSpec,
    model: ModelSpec,
    num_tokens: float,
    dtype_bytes: float = 2,
    calibration: EfficiencyModel | None = None,
) -> float:
    """The MLP of one dense (non-MoE) layer (us); 0 for models without dense layers."""
    return float(
        dense_mlp_us(gpu, num_tokens, model.hidden_size, model.dense_intermediate_size, dtype_bytes, calibration)
    )


def lm_head_us(
    gpu: GPUSpec,
    model: ModelSpec,
    num_tokens: float,
    dtype_bytes: float = 2,
    calibration: EfficiencyModel | None = None,
) -> float:
    """The output projection to the vocabulary, once per step (us)."""
    t = float(num_tokens)
    if t <= 0 or model.vocab_size <= 0:
        return 0.0
    return float(
        gemm_us(gpu, t, model.vocab_size, model.hidden_size, dtype_bytes, calibration) + launch_overhead_us(calibration)
    )

"""Attention, dense MLP and LM head (moesim/dense.py) against hand-computed values of its docstring's equations.

H100 SXM: GEMM 989.4 TFLOP/s x 0.807 = 798,445,800 FLOP/us; HBM 3350 GB/s x 0.896 = 3,001,600 B/us; each GEMM
is ``max(2*m*n*k / peak, (n*k*2 + (m*k + m*n)*2) / hbm)``; launch overhead 4 us per kernel.
"""

from __future__ import annotations

import pytest

from moesim.dense import attention_us, dense_layer_us, lm_head_us

PEAK_FLOP_PER_US = 989.4e6 * 0.807
HBM_B_PER_US = 3350e3 * 0.896


def gemm(m: int, n: int, k: int) -> float:
    """The BF16 roofline of compute.py, written out."""
    return max(2 * m * n * k / PEAK_FLOP_PER_US, (n * k * 2 + (m * k + m * n) * 2) / HBM_B_PER_US)


def test_olmoe_attention_prefill(h100_sxm, olmoe) -> None:
    """T=512, seq_len=4096, H=2048, 16 heads x 128 (q_dim 2048, kv_dim 4096):

    q, o:  gemm(512, 2048, 2048): 4,294,967,296 FLOP -> 5.3792 us (compute bound; bytes 12,582,912 -> 4.1921)
    kv:    gemm(512, 4096, 2048): 10.7583 us
    core:  ctx = (4096 + 1)/2 = 2048.5; 4*512*2048.5*2048 = 8,591,998,976 FLOP -> 10.7609 us
    launch: 4 * 4 = 16 us;  total 48.2776 us
    """
    assert (olmoe.hidden_size, olmoe.num_attention_heads, olmoe.num_kv_heads, olmoe.head_dim) == (2048, 16, 16, 128)
    t = attention_us(h100_sxm, olmoe, 512, seq_len=4096)
    core = 4 * 512 * 2048.5 * 2048 / PEAK_FLOP_PER_US
    assert gemm(512, 2048, 2048) == pytest.approx(5.379159, rel=1e-6)
    assert gemm(512, 4096, 2048) == pytest.approx(10.758319, rel=1e-6)
    assert core == pytest.approx(10.760946, rel=1e-6)
    assert t == pytest.approx(2 * gemm(512, 2048, 2048) + gemm(512, 4096, 2048) + core + 16.0, rel=1e-12)
    assert t == pytest.approx(48.277583, rel=1e-6)


def test_attention_core_grows_with_the_causal_context(h100_sxm, olmoe) -> None:
    """Doubling seq_len adds 4*T*(ctx' - ctx)*q_dim FLOP to the core only: ctx 2048.5 -> 4096.5."""
    t1 = attention_us(h100_sxm, olmoe, 512, seq_len=4096)
    t2 = attention_us(h100_sxm, olmoe, 512, seq_len=8192)
    assert t2 - t1 == pytest.approx(4 * 512 * 2048 * 2048 / PEAK_FLOP_PER_US, rel=1e-9)
    # seq_len 0 counts as 1: ctx = (1 + 1)/2 = 1
    t0 = attention_us(h100_sxm, olmoe, 512, seq_len=0)
    assert t1 - t0 == pytest.approx(4 * 512 * (2048.5 - 1.0) * 2048 / PEAK_FLOP_PER_US, rel=1e-9)


def test_no_tokens_no_time(h100_sxm, olmoe, deepseek_v3) -> None:
    assert attention_us(h100_sxm, olmoe, 0, seq_len=4096) == 0.0
    assert dense_layer_us(h100_sxm, deepseek_v3, 0) == 0.0
    assert lm_head_us(h100_sxm, deepseek_v3, 0) == 0.0


def test_deepseek_v3_dense_mlp(h100_sxm, deepseek_v3) -> None:
    """T=256, H=7168, I_dense=18432: gate+up gemm(256, 36864, 7168) = 183.5777 us (weight bound),
    down gemm(256, 7168, 18432) = 92.4002 us, one launch each: 283.9778 us."""
    assert deepseek_v3.dense_intermediate_size == 18432
    t = dense_layer_us(h100_sxm, deepseek_v3, 256)
    assert gemm(256, 2 * 18432, 7168) == pytest.approx(183.577655, rel=1e-6)
    assert gemm(256, 7168, 18432) == pytest.approx(92.400171, rel=1e-6)
    assert t == pytest.approx(gemm(256, 36864, 7168) + gemm(256, 7168, 18432) + 8.0, rel=1e-12)
    assert t == pytest.approx(283.977825, rel=1e-6)


def test_model_without_dense_layers(h100_sxm, olmoe) -> None:
    assert olmoe.dense_intermediate_size == 0
    assert dense_layer_us(h100_sxm, olmoe, 256) == 0.0


def test_lm_head(h100_sxm, deepseek_v3) -> None:
    """T=256, vocab 129,280, H=7168: gemm = (129280*7168*2 + (256*7168 + 256*129280)*2) / 3,001,600
    = 640.7314 us (weight bound), plus one launch: 644.7314 us."""
    t = lm_head_us(h100_sxm, deepseek_v3, 256)
    assert t == pytest.approx(gemm(256, 129280, 7168) + 4.0, rel=1e-12)
    assert t == pytest.approx(644.731429, rel=1e-6)


def test_fp8_weights_use_the_fp8_peak(h100_sxm, deepseek_v3) -> None:
    """dtype_bytes=1 at T=8192 (compute bound): 2*8192*129280*7168 FLOP / (1978.9e6 * 0.807) + 4 us."""
    t = lm_head_us(h100_sxm, deepseek_v3, 8192, dtype_bytes=1)
    flops = 2 * 8192 * 129280 * 7168
    nbytes = 129280 * 7168 * 1 + (8192 * 7168 + 8192 * 129280) * 2
    assert flops / (1978.9e6 * 0.807) > nbytes / HBM_B_PER_US
    assert t == pytest.approx(flops / (1978.9e6 * 0.807) + 4.0, rel=1e-12)

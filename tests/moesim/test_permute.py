"""Permute/unpermute cost (moesim/permute.py) against hand-computed values of its docstring's equations.

H100 SXM: HBM 3350 GB/s x 0.896 = 3,001,600 B/us; launch overhead 4 us per kernel (two kernels).
"""

from __future__ import annotations

import numpy as np
import pytest

from moesim.compute import pad_to_block
from moesim.permute import permute_us

HBM_B_PER_US = 3350e3 * 0.896


def test_hand_computed_bf16(h100_sxm) -> None:
    """R=100 received rows, A=300 assignments, P=384 padded rows, H=2048, BF16 in:

    permute   = 100*2048*2 + 384*2048*2 + 384*4 = 1,984,000 B
    unpermute = 300*2048*2 + 100*2048*2         = 1,638,400 B
    t = 3,622,400 / 3,001,600 + 2*4 = 9.2068 us
    """
    t = float(permute_us(h100_sxm, np.array(100), np.array(300), np.array(384), hidden=2048))
    assert t == pytest.approx((1_984_000 + 1_638_400) / HBM_B_PER_US + 8.0, rel=1e-12)
    assert t == pytest.approx(9.206823, rel=1e-6)


def test_fp8_rows_carry_their_scales(h100_sxm) -> None:
    """b_in = 1 + 4/128 = 1.03125 B per element: only the permute side's rows shrink (unpermute reads BF16)."""
    t = float(permute_us(h100_sxm, np.array(100), np.array(300), np.array(384), 2048, in_bytes_per_elem=1.03125))
    permute = 100 * 2048 * 1.03125 + 384 * 2048 * 1.03125 + 384 * 4  # 1,023,744 B
    assert permute == 1_023_744
    assert t == pytest.approx((1_023_744 + 1_638_400) / HBM_B_PER_US + 8.0, rel=1e-12)


def test_padding_rows_are_written(h100_sxm) -> None:
    """One more block of 64 padded rows costs 64 * (2048*2 + 4) B more."""
    t0 = float(permute_us(h100_sxm, np.array(100), np.array(300), np.array(384), 2048))
    t1 = float(permute_us(h100_sxm, np.array(100), np.array(300), np.array(448), 2048))
    assert t1 - t0 == pytest.approx(64 * (2048 * 2 + 4) / HBM_B_PER_US, rel=1e-9)


def test_gpu_without_assignments_costs_nothing(h100_sxm) -> None:
    t = permute_us(h100_sxm, np.array([0, 5]), np.array([0, 0]), np.array([0, 64]), 2048)
    assert t.tolist() == [0.0, 0.0]


def test_batch_over_layers_and_gpus_from_a_trace(h100_sxm, olmoe, olmoe_trace) -> None:
    """The trace's 64 experts placed contiguously on 8 GPUs (8 each): per (layer, GPU), R = distinct tokens
    routed to the GPU, A = token-expert pairs on it, P = sum over its experts of ceil(m_e / 64) * 64."""
    ids = olmoe_trace.topk_ids  # [T, L, k]
    T, L, k = ids.shape
    G, B = 8, 64
    gpu_of = ids // (olmoe.num_experts // G)  # [T, L, k]
    on_gpu = gpu_of[..., None] == np.arange(G)  # [T, L, k, G]
    assignments = on_gpu.sum(axis=(0, 2))  # [L, G]
    received = on_gpu.any(axis=2).sum(axis=0)  # [L, G]
    padded = pad_to_block(olmoe_trace.counts, B).reshape(L, G, -1).sum(axis=-1)  # [L, G]
    assert (assignments.sum(axis=1) == T * k).all()
    assert ((received <= assignments) & (received <= T)).all()

    t = permute_us(h100_sxm, received, assignments, padded, olmoe.hidden_size)
    assert t.shape == (L, G)
    H = olmoe.hidden_size
    nbytes = received * H * 2 + padded * H * 2 + padded * 4 + assignments * H * 2 + received * H * 2
    expected = np.where(assignments > 0, nbytes / HBM_B_PER_US + 8.0, 0.0)
    np.testing.assert_allclose(t, expected, rtol=1e-12)
    # one cell by hand, scalar in, scalar out
    r, a, p = int(received[0, 0]), int(assignments[0, 0]), int(padded[0, 0])
    one = float(permute_us(h100_sxm, np.array(r), np.array(a), np.array(p), H))
    assert one == pytest.approx(((r + p) * H * 2 + p * 4 + (a + r) * H * 2) / HBM_B_PER_US + 8.0, rel=1e-12)

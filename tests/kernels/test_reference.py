"""kernels.reference.reference_moe (plain torch, CPU): hand-worked values, an independent per-token loop, the
expert map, the capacity and its drop policies, dtypes and degenerate shapes."""

from __future__ import annotations

import math

import pytest
import torch

from kernels.reference import reference_moe


def _silu(x: float) -> float:
    return x / (1.0 + math.exp(-x))


def _per_token(h, w1, w2, w, ids):
    """out[t] = sum_j w[t, j] * (silu(h[t] @ g_e) * (h[t] @ u_e)) @ w2[e].T, token by token, slot by slot."""
    M, K = h.shape
    N = w1.shape[1] // 2
    out = torch.zeros(M, K, dtype=torch.float64)
    for t in range(M):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            if e < 0:
                continue
            gate = w1[e, :N].double() @ h[t].double()
            up = w1[e, N:].double() @ h[t].double()
            out[t] += float(w[t, j]) * (w2[e].double() @ (torch.nn.functional.silu(gate) * up))
    return out


def _case(M, E, N, K, k, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(M, K, generator=g, dtype=torch.float64)
    w1 = torch.randn(E, 2 * N, K, generator=g, dtype=torch.float64) / K**0.5
    w2 = torch.randn(E, K, N, generator=g, dtype=torch.float64) / N**0.5
    ids = torch.rand(M, E, generator=g).topk(k, dim=1).indices.to(torch.int32)
    w = torch.softmax(torch.randn(M, k, generator=g, dtype=torch.float64), dim=1)
    return h.to(dtype), w1.to(dtype), w2.to(dtype), w, ids


def test_one_token_one_expert_by_hand() -> None:
    # K = N = 1: out = w * silu(h * a) * (h * b) * c with w1[e] = [[a], [b]], w2[e] = [[c]]
    h = torch.tensor([[2.0]], dtype=torch.float64)
    w1 = torch.tensor([[[9.0], [9.0]], [[0.5], [3.0]]], dtype=torch.float64)  # expert 0 unused
    w2 = torch.tensor([[[9.0]], [[-4.0]]], dtype=torch.float64)
    out = reference_moe(h, w1, w2, torch.tensor([[0.25]], dtype=torch.float64), torch.tensor([[1]]))
    expected = 0.25 * _silu(2.0 * 0.5) * (2.0 * 3.0) * -4.0  # = -1.5 * 0.7310585786... * 4 = -4.3863514...
    assert out.shape == (1, 1)
    assert out.item() == pytest.approx(expected, rel=1e-12)
    assert out.item() == pytest.approx(-4.386351471, rel=1e-9)


def test_two_slots_are_weighted_sums_by_hand() -> None:
    # K = 2, N = 1; expert e: gate row g_e, up row u_e, down column d_e; one token routed to both experts
    h = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    w1 = torch.tensor([[[1.0, 0.0], [2.0, 2.0]], [[0.0, -1.0], [1.0, 0.0]]], dtype=torch.float64)
    w2 = torch.tensor([[[1.0], [0.0]], [[0.0], [2.0]]], dtype=torch.float64)
    weights = torch.tensor([[0.75, 0.25]], dtype=torch.float64)
    out = reference_moe(h, w1, w2, weights, torch.tensor([[0, 1]]))
    # expert 0: gate = 1, up = 0 -> 0; expert 1: gate = 1, up = 1 -> silu(1) on output dim 1 times 2
    assert out[0, 0].item() == 0.0
    assert out[0, 1].item() == pytest.approx(0.25 * _silu(1.0) * 1.0 * 2.0, rel=1e-12)


@pytest.mark.parametrize("M,E,N,K,k", [(1, 1, 4, 8, 1), (17, 8, 12, 16, 2), (40, 6, 8, 24, 3), (9, 64, 4, 8, 8)])
def test_matches_an_independent_per_token_loop(M, E, N, K, k) -> None:
    h, w1, w2, w, ids = _case(M, E, N, K, k, seed=M * 100 + E)
    out = reference_moe(h, w1, w2, w, ids)
    assert out.shape == (M, K) and out.dtype == torch.float64
    torch.testing.assert_close(out, _per_token(h, w1, w2, w, ids), rtol=1e-12, atol=1e-12)


def test_linear_in_the_router_weights_and_config_ignored() -> None:
    h, w1, w2, w, ids = _case(12, 4, 8, 16, 2, seed=3)
    base = reference_moe(h, w1, w2, w, ids)
    torch.testing.assert_close(reference_moe(h, w1, w2, 3.0 * w, ids), 3.0 * base, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(reference_moe(h, w1, w2, torch.zeros_like(w), ids), torch.zeros_like(base))
    cfg = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 1}
    assert torch.equal(reference_moe(h, w1, w2, w, ids, config=cfg), base)


def test_negative_and_out_of_range_ids_contribute_zero() -> None:
    h, w1, w2, w, ids = _case(10, 4, 8, 16, 2, seed=5)
    masked = ids.clone()
    masked[::2, 1] = -1  # dropped slot
    masked[1::2, 0] = 4  # no such local expert (E = 4)
    out = reference_moe(h, w1, w2, w, masked)
    keep = masked.clone()
    keep[keep >= 4] = -1
    torch.testing.assert_close(out, _per_token(h, w1, w2, w, keep), rtol=1e-12, atol=1e-12)
    every = torch.full_like(ids, -1)
    assert torch.equal(reference_moe(h, w1, w2, w, every), torch.zeros(10, 16, dtype=torch.float64))


def test_expert_map_sends_global_ids_to_local_experts() -> None:
    # 6 global experts, this rank holds global 1 -> local 0 and global 4 -> local 1; the rest are -1
    h, _, _, w, _ = _case(16, 6, 8, 16, 2, seed=7)
    _, w1, w2, _, _ = _case(1, 2, 8, 16, 1, seed=8)
    g = torch.Generator().manual_seed(9)
    ids = torch.rand(16, 6, generator=g).topk(2, dim=1).indices.to(torch.int32)
    emap = torch.tensor([-1, 0, -1, -1, 1, -1], dtype=torch.int32)
    out = reference_moe(h, w1, w2, w, ids, expert_map=emap)
    local = torch.full_like(ids, -1)
    local[ids == 1] = 0
    local[ids == 4] = 1
    assert (local >= 0).any() and (local < 0).any()
    torch.testing.assert_close(out, _per_token(h, w1, w2, w, local), rtol=1e-12, atol=1e-12)
    # tokens with no local expert come out exactly zero
    none_here = (local < 0).all(dim=1)
    assert none_here.any() and torch.equal(out[none_here], torch.zeros_like(out[none_here]))


def _three_on_expert0():
    h, w1, w2, _, _ = _case(3, 2, 4, 8, 1, seed=11)
    ids = torch.zeros(3, 1, dtype=torch.int32)
    w = torch.tensor([[0.2], [0.9], [0.5]], dtype=torch.float64)
    return h, w1, w2, w, ids


@pytest.mark.parametrize("policy,kept", [("probs", 1), ("position", 0)])
def test_capacity_one_keeps_the_policys_assignment(policy, kept) -> None:
    h, w1, w2, w, ids = _three_on_expert0()
    out = reference_moe(h, w1, w2, w, ids, capacity=1, drop_policy=policy)
    full = reference_moe(h, w1, w2, w, ids)
    for t in range(3):
        if t == kept:  # probs keeps the highest weight (token 1), position the first token
            torch.testing.assert_close(out[t], full[t], rtol=1e-12, atol=1e-12)
        else:
            assert torch.equal(out[t], torch.zeros_like(out[t]))


def test_capacity_large_enough_or_zero() -> None:
    h, w1, w2, w, ids = _three_on_expert0()
    full = reference_moe(h, w1, w2, w, ids)
    assert torch.equal(reference_moe(h, w1, w2, w, ids, capacity=3), full)
    assert torch.equal(reference_moe(h, w1, w2, w, ids, capacity=0), torch.zeros_like(full))


def test_reroute_moves_the_overflow_to_a_free_expert_on_the_same_gpu() -> None:
    h, w1, w2, w, ids = _three_on_expert0()
    gpu = torch.zeros(2, dtype=torch.int64)  # both experts on GPU 0
    out = reference_moe(h, w1, w2, w, ids, capacity=1, drop_policy="reroute", expert_gpu=gpu)
    # token 0 stays on expert 0, token 1 moves to expert 1 (room for one), token 2 finds no room: dropped
    expected = _per_token(h, w1, w2, w, torch.tensor([[0], [1], [-1]]))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(out[2], torch.zeros_like(out[2]))


def test_unknown_drop_policy_is_a_value_error_naming_the_field() -> None:
    h, w1, w2, w, ids = _three_on_expert0()
    with pytest.raises(ValueError, match="drop_policy") as exc:
        reference_moe(h, w1, w2, w, ids, capacity=1, drop_policy="random")
    assert "random" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_computes_in_the_hidden_dtype(dtype) -> None:
    h, w1, w2, w, ids = _case(20, 4, 8, 16, 2, seed=13)
    out = reference_moe(h.to(dtype), w1.to(dtype), w2.to(dtype), w.float(), ids)
    assert out.dtype == dtype and out.shape == (20, 16)
    exact = reference_moe(h.to(dtype).double(), w1.to(dtype).double(), w2.to(dtype).double(), w.double(), ids)
    rel = float((out.double() - exact).norm() / exact.norm())
    assert rel < (5e-3 if dtype == torch.float16 else 1e-5)
    assert rel > 0 or dtype == torch.float32  # fp16 rounds somewhere


def test_no_tokens_gives_an_empty_output() -> None:
    _, w1, w2, _, _ = _case(1, 4, 8, 16, 2, seed=17)
    h = torch.zeros(0, 16, dtype=torch.float64)
    out = reference_moe(h, w1, w2, torch.zeros(0, 2, dtype=torch.float64), torch.zeros(0, 2, dtype=torch.int32))
    assert out.shape == (0, 16) and out.dtype == torch.float64


def test_duplicate_expert_in_one_token_counts_both_slots() -> None:
    h, w1, w2, _, _ = _case(4, 3, 4, 8, 1, seed=19)
    ids = torch.tensor([[2, 2]] * 4, dtype=torch.int32)
    w = torch.tensor([[0.5, 0.25]] * 4, dtype=torch.float64)
    single = reference_moe(h, w1, w2, torch.full((4, 1), 0.75, dtype=torch.float64), ids[:, :1])
    torch.testing.assert_close(reference_moe(h, w1, w2, w, ids), single, rtol=1e-12, atol=1e-12)

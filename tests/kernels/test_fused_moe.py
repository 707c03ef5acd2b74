"""fused_moe (Triton, interpreted on the CPU) against the float64 torch reference.

Small hidden sizes keep the interpreter fast; each case draws fresh random inputs and every output is
pre-poisoned (NaN) where the kernel writes, so an unwritten row shows up as NaN in the result.
"""

from __future__ import annotations

import pytest
import torch

from kernels import default_config, fused_moe, reference_moe

# fp16: 11 mantissa bits, inputs/act/outputs rounded once each -> ~1e-3; fp32 in the interpreter is exact-ish
TOL = {torch.float16: 4e-3, torch.float32: 1e-5}
SMALL = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 4, "num_warps": 4, "num_stages": 2}


def make_case(M, E, N, K, k, dtype, device, gen, ids=None):
    h = torch.randn(M, K, generator=gen).to(device, dtype)
    w1 = (torch.randn(E, 2 * N, K, generator=gen) / K**0.5).to(device, dtype)
    w2 = (torch.randn(E, K, N, generator=gen) / N**0.5).to(device, dtype)
    if ids is None:
        ids = torch.rand(M, E, generator=gen).topk(k, dim=1).indices.to(torch.int32)
    w = torch.softmax(torch.randn(M, k, generator=gen), dim=1)
    return h, w1, w2, w.to(device), ids.to(device)


def rel_err(out, ref):
    return float((out.double().cpu() - ref.cpu()).norm() / ref.norm().clamp_min(1e-300))


def run_checked(monkeypatch, *args, **kw):
    """fused_moe with every buffer the kernels must fill poisoned with NaN first."""
    import sys

    fm = sys.modules["kernels.fused_moe"]
    real = fm._empty
    monkeypatch.setattr(fm, "_empty", lambda *a: real(*a).fill_(float("nan")))
    try:
        return fm.fused_moe(*args, **kw)
    finally:
        monkeypatch.setattr(fm, "_empty", real)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize(
    "M,E,k",
    [(1, 1, 1), (37, 8, 2), (50, 4, 4), (19, 64, 8), (7, 256, 8), (64, 16, 3), (23, 2, 1)],
)
def test_matches_float64_reference(monkeypatch, device, dtype, M, E, k):
    gen = torch.Generator().manual_seed(1000 * M + 10 * E + k)
    N, K = 48, 64  # not multiples of the 32-wide tiles: masks on both dims
    h, w1, w2, w, ids = make_case(M, E, N, K, k, dtype, device, gen)
    ref = reference_moe(h.double(), w1.double(), w2.double(), w.double(), ids)
    out = run_checked(monkeypatch, h, w1, w2, w, ids, config=SMALL)
    assert out.shape == (M, K) and out.dtype == dtype
    assert torch.isfinite(out).all(), "unwritten (poisoned) rows in the output"
    assert rel_err(out, ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_every_token_on_one_expert_and_empty_experts(monkeypatch, device, dtype):
    gen = torch.Generator().manual_seed(7)
    M, E, N, K = 45, 8, 32, 32
    ids = torch.full((M, 1), 5, dtype=torch.int32)  # experts 0-4, 6, 7 get nothing
    h, w1, w2, w, ids = make_case(M, E, N, K, 1, dtype, device, gen, ids=ids)
    ref = reference_moe(h.double(), w1.double(), w2.double(), w.double(), ids)
    out = run_checked(monkeypatch, h, w1, w2, w, ids, config=SMALL)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_expert_map_absent_experts_contribute_zero(monkeypatch, device, dtype):
    gen = torch.Generator().manual_seed(11)
    M, E, N, K, k = 40, 12, 32, 48, 3
    h, w1, w2, w, ids = make_case(M, E, N, K, k, dtype, device, gen)
    held = torch.tensor([1, 2, 7, 11])
    emap = torch.full((E,), -1, dtype=torch.int32)
    emap[held] = torch.arange(held.numel(), dtype=torch.int32)
    w1l, w2l = w1[held.to(device)].contiguous(), w2[held.to(device)].contiguous()
    ref = reference_moe(h.double(), w1l.double(), w2l.double(), w.double(), ids, expert_map=emap)
    out = run_checked(monkeypatch, h, w1l, w2l, w, ids, config=SMALL, expert_map=emap.to(device))
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < TOL[dtype]
    # independent check of the "contributes zero" rule: zero the weights of absent assignments instead
    masked_w = torch.where(emap[ids.cpu().long()] >= 0, w.cpu(), torch.zeros_like(w.cpu())).double()
    full = reference_moe(h.double(), w1.double(), w2.double(), masked_w, ids)
    assert rel_err(out, full) < TOL[dtype]
    # a token whose experts are all absent gets exactly zero
    none_held = (emap[ids.cpu().long()] < 0).all(dim=1)
    if none_held.any():
        assert (out.cpu()[none_held] == 0).all()


def vllm_expert_map(ep_size, ep_rank, num_experts, strategy):
    """vLLM's determine_expert_map restated: int32 [E] global -> local id, -1 elsewhere; the first
    E % ep_size ranks hold one extra expert (linear: contiguous runs; round_robin: r, r+G, ...)."""
    base, rem = divmod(num_experts, ep_size)
    local = base + (ep_rank < rem)
    if strategy == "linear":
        start = ep_rank * base + min(ep_rank, rem)
        held = torch.arange(start, start + local)
    else:
        held = torch.arange(ep_rank, num_experts, ep_size)
    emap = torch.full((num_experts,), -1, dtype=torch.int32)
    emap[held] = torch.arange(local, dtype=torch.int32)
    return emap


@pytest.mark.parametrize(
    "strategy,dtype", [("round_robin", torch.float32), ("round_robin", torch.float16), ("linear", torch.float32)]
)
def test_vllm_expert_maps_over_all_ranks_sum_to_full_layer(monkeypatch, device, strategy, dtype):
    """Each EP rank runs its local weights with vLLM's expert_map (E=10 on 4 ranks: 3, 3, 2, 2 experts); the
    ranks' outputs add up to the whole layer, as vLLM's combine does."""
    gen = torch.Generator().manual_seed(23)
    M, E, N, K, k, G = 29, 10, 32, 48, 3, 4
    h, w1, w2, w, ids = make_case(M, E, N, K, k, dtype, device, gen)
    total = torch.zeros(M, K, dtype=torch.float64)
    for rank in range(G):
        emap = vllm_expert_map(G, rank, E, strategy)
        held = torch.nonzero(emap >= 0).flatten()
        held = held[emap[held].argsort()]  # local order: local id i is held[i]
        w1l, w2l = w1[held.to(device)].contiguous(), w2[held.to(device)].contiguous()
        out = run_checked(monkeypatch, h, w1l, w2l, w, ids, config=SMALL, expert_map=emap.to(device))
        assert torch.isfinite(out).all()
        ref = reference_moe(h.double(), w1l.double(), w2l.double(), w.double(), ids, expert_map=emap)
        assert rel_err(out, ref) < TOL[dtype]
        total += out.double().cpu()
    full = reference_moe(h.double(), w1.double(), w2.double(), w.double(), ids)
    assert rel_err(total, full) < 2 * TOL[dtype]


@pytest.mark.parametrize("policy", ["probs", "position", "reroute"])
def test_capacity_each_policy(monkeypatch, device, policy):
    gen = torch.Generator().manual_seed(hash(policy) % 1000)
    M, E, N, K, k = 60, 8, 32, 32, 2
    # skewed routing so that capacity binds: half of the assignments on experts 0 and 1
    ids = torch.where(
        torch.rand(M, 1, generator=gen) < 0.5,
        torch.tensor([[0, 1]]),
        torch.rand(M, E, generator=gen).topk(k, dim=1).indices,
    ).to(torch.int32)
    h, w1, w2, w, ids = make_case(M, E, N, K, k, torch.float32, device, gen, ids=ids)
    egpu = torch.arange(E) // 4 if policy == "reroute" else None
    kw = {"capacity": 18, "drop_policy": policy, "expert_gpu": egpu}
    ref = reference_moe(h.double(), w1.double(), w2.double(), w.double(), ids, **kw)
    out = run_checked(monkeypatch, h, w1, w2, w, ids, config=SMALL, **kw)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < TOL[torch.float32]
    dropless = reference_moe(h.double(), w1.double(), w2.double(), w.double(), ids)
    assert rel_err(out, dropless) > 1e-2  # the capacity really dropped (or moved) work


def test_default_config_runs_and_depends_on_batch(device):
    gen = torch.Generator().manual_seed(3)
    M, E, N, K, k = 33, 4, 32, 64, 2
    h, w1, w2, w, ids = make_case(M, E, N, K, k, torch.float32, device, gen)
    ref = reference_moe(h.double(), w1.double(), w2.double(), w.double(), ids)
    out = fused_moe(h, w1, w2, w, ids)  # config=None: shipped file if any, else default_config
    assert rel_err(out, ref) < TOL[torch.float32]
    assert default_config(1, 8, 7168, 4096) != default_config(4096, 8, 7168, 4096)


def test_bad_inputs_raise():
    h = torch.zeros(4, 32)
    w1 = torch.zeros(2, 64, 32)
    with pytest.raises(ValueError, match="shapes disagree"):
        fused_moe(h, w1, torch.zeros(2, 32, 16), torch.zeros(4, 1), torch.zeros(4, 1, dtype=torch.int32))
    with pytest.raises(ValueError, match="BLOCK_SIZE_K"):
        fused_moe(
            h,
            w1,
            torch.zeros(2, 32, 32),
            torch.zeros(4, 1),
            torch.zeros(4, 1, dtype=torch.int32),
            config={**SMALL, "BLOCK_SIZE_K": 24},
        )

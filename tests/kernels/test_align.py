"""moe_align_block_size: Triton (interpreted) and torch give identical outputs, and both satisfy the contract."""

from __future__ import annotations

import pytest
import torch

from kernels import moe_align_block_size
from kernels.align import max_padded_len


def check_contract(ids, block, num_experts, expert_map, out):
    sorted_ids, expert_ids, total = (t.cpu() for t in out)
    flat = ids.reshape(-1).long().cpu()
    local = flat if expert_map is None else torch.where(flat >= 0, expert_map.cpu().long()[flat.clamp(min=0)], -1)
    A = flat.numel()
    P = max_padded_len(A, num_experts, block)
    assert sorted_ids.shape == (P,) and expert_ids.shape == (P // block,)
    counts = torch.bincount(local[local >= 0], minlength=num_experts)
    padded = (counts + block - 1) // block * block
    assert int(total) == int(padded.sum())
    start = 0
    for e in range(num_experts):
        run = sorted_ids[start : start + int(padded[e])]
        mine = torch.nonzero(local == e).flatten()
        assert torch.equal(run[: int(counts[e])].long(), mine)  # (token, k) order kept
        assert (run[int(counts[e]) :] == A).all()  # padding is the sentinel
        assert (expert_ids[start // block : (start + int(padded[e])) // block] == e).all()
        start += int(padded[e])
    assert (sorted_ids[start:] == A).all() and (expert_ids[start // block :] == -1).all()


@pytest.mark.parametrize("method", ["triton", "torch"])
@pytest.mark.parametrize(
    "M,E,k,B",
    [
        (1, 1, 1, 16),
        (37, 8, 2, 16),
        (100, 256, 8, 64),
        (300, 3, 1, 32),
        (0, 4, 2, 16),
        (129, 64, 6, 128),
        (1000, 256, 8, 16),
    ],
)
def test_align_contract(device, method, M, E, k, B):
    gen = torch.Generator().manual_seed(M * 7 + E)
    ids = torch.rand(M, E, generator=gen).topk(k, dim=1).indices.to(torch.int32)
    out = moe_align_block_size(ids.to(device), B, E, method=method)
    check_contract(ids, B, E, None, out)


@pytest.mark.parametrize("method", ["triton", "torch"])
def test_align_expert_map_and_dropped_ids(device, method):
    gen = torch.Generator().manual_seed(5)
    E, M, k, B = 16, 50, 4, 16
    ids = torch.rand(M, E, generator=gen).topk(k, dim=1).indices.to(torch.int32)
    ids[::7, 0] = -1  # dropped by a capacity: no work
    emap = torch.full((E,), -1, dtype=torch.int32)
    emap[torch.tensor([2, 3, 10])] = torch.tensor([0, 1, 2], dtype=torch.int32)
    out = moe_align_block_size(ids.to(device), B, 3, emap.to(device), method=method)
    check_contract(ids, B, 3, emap, out)
    sorted_ids = out[0].cpu()
    real = sorted_ids[sorted_ids < M * k].long()
    flat = ids.reshape(-1)
    held = (flat >= 0) & (emap[flat.clamp(min=0).long()] >= 0)
    assert set(real.tolist()) == set(torch.nonzero(held).flatten().tolist())


def test_triton_equals_torch_skewed(device):
    gen = torch.Generator().manual_seed(9)
    E, M, k = 32, 400, 8
    # zipf-like skew: experts with zero tokens, one very hot expert spanning many chunks
    p = 1.0 / torch.arange(1, E + 1).double() ** 1.5
    ids = torch.multinomial(p.expand(M, E), k, replacement=False, generator=gen).to(torch.int32)
    for B in (16, 64):
        a = moe_align_block_size(ids.to(device), B, E, method="triton")
        b = moe_align_block_size(ids.to(device), B, E, method="torch")
        assert all(torch.equal(x, y) for x, y in zip(a, b))

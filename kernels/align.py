"""Align: sort the (token, k) assignments by expert and pad each expert's run to a multiple of BLOCK_SIZE_M.

Dimension legend: M tokens, k top-k, A = M*k assignments (flat index a = t*k + j), E local experts,
B = BLOCK_SIZE_M, P = padded capacity of the sorted buffer.

The grouped GEMM walks the sorted buffer one block of B rows at a time; every block belongs to one expert, so
the program loads that expert's weights once and multiplies B tokens by them. Padding slots hold the sentinel
``A`` (one past the last assignment) and are masked out by the GEMM.

    counts[e]        = #assignments a with local(a) == e          (local(a) = expert_map[topk_ids[a]] or id)
    padded[e]        = ceil(counts[e] / B) * B
    start[e]         = sum_{e' < e} padded[e']
    sorted_ids[start[e] + r] = the r-th assignment of expert e in (token, k) order
    expert_ids[b]    = the expert owning rows [b*B, (b+1)*B), or -1 past the end
    num_tokens_post_padded = sum_e padded[e]

Assignments whose local expert is negative (an ``expert_map`` entry of -1: expert held by another GPU; or an id
set to -1 by a capacity drop) are left out, so they cost no work and contribute nothing.

P = A + min(E, A) * (B - 1), rounded up to B: the most padding any routing can need. Sizes depend on shapes
only, never on the routing, so the whole path has no host synchronisation and can be captured in a CUDA graph.

Two implementations with identical outputs: Triton (used on CUDA) and torch (used on the CPU, and as a
cross-check). The Triton path is three launches over chunks of CHUNK assignments: count per (chunk, expert);
one program turning counts into each (chunk, expert)'s first row, the padded totals and the block owners; then
a scatter where each assignment's row is its (chunk, expert) start plus its rank among the same expert's
assignments earlier in the chunk (a cumulative sum over a [CHUNK, E] one-hot). Deterministic: every expert's
run keeps (token, k) order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def max_padded_len(num_assignments: int, num_experts: int, block_size_m: int) -> int:
    """P: the sorted buffer length that fits any routing (see module docstring)."""
    p = num_assignments + min(num_experts, num_assignments) * (block_size_m - 1)
    return max(triton.cdiv(p, block_size_m) * block_size_m, block_size_m)


def _local_ids(topk_ids: torch.Tensor, expert_map: torch.Tensor | None) -> torch.Tensor:
    flat = topk_ids.reshape(-1).to(torch.int64)
    if expert_map is None:
        return flat
    emap = expert_map.to(device=flat.device, dtype=torch.int64)
    return torch.where(flat >= 0, emap[flat.clamp(min=0)], torch.full_like(flat, -1))


def moe_align_block_size_torch(
    topk_ids: torch.Tensor, block_size_m: int, num_experts: int, expert_map: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Torch implementation of :func:`moe_align_block_size` (any device, no host sync)."""
    dev = topk_ids.device
    local = _local_ids(topk_ids, expert_map)
    num_a = local.numel()
    cap = max_padded_len(num_a, num_experts, block_size_m)
    valid = (local >= 0) & (local < num_experts)
    key = torch.where(valid, local, torch.full_like(local, num_experts))  # invalid sort last
    counts = torch.zeros(num_experts + 1, dtype=torch.int64, device=dev)
    counts.scatter_add_(0, key, torch.ones_like(key))
    counts = counts[:num_experts]
    padded = (counts + block_size_m - 1) // block_size_m * block_size_m
    pad_end = torch.cumsum(padded, 0)
    pad_start = pad_end - padded
    raw_start = torch.cumsum(counts, 0) - counts
    _, order = torch.sort(key, stable=True)
    sorted_key = key[order]
    rank = (
        torch.arange(num_a, device=dev, dtype=torch.int64)
        - raw_start.clamp(max=num_a)[sorted_key.clamp(max=num_experts - 1)]
    )
    dest = torch.where(
        sorted_key < num_experts, pad_start[sorted_key.clamp(max=num_experts - 1)] + rank, torch.full_like(rank, cap)
    )  # invalid ones go to a dump slot past the end
    sorted_ids = torch.full((cap + 1,), num_a, dtype=torch.int32, device=dev)
    sorted_ids.scatter_(0, dest, order.to(torch.int32))
    sorted_ids = sorted_ids[:cap]
    block_start = torch.arange(0, cap, block_size_m, device=dev, dtype=torch.int64)
    total = pad_end[-1:] if num_experts > 0 else torch.zeros(1, dtype=torch.int64, device=dev)
    owner = torch.searchsorted(pad_end, block_start, right=True)
    expert_ids = torch.where(block_start < total, owner, torch.full_like(owner, -1)).to(torch.int32)
    return sorted_ids, expert_ids, total.to(torch.int32)


@triton.jit
def _count_kernel(
    local_ptr,  # [A] int32 local expert per assignment (<0: no work)
    chunk_counts_ptr,  # [C, E_PAD] int32 out: assignments of each expert in each chunk
    num_a,
    num_experts,
    E_PAD: tl.constexpr,  # power of two > num_experts (the last bin collects invalid ids)
    CHUNK: tl.constexpr,
):
    c = tl.program_id(0)
    offs = c * CHUNK + tl.arange(0, CHUNK)
    offs_e = tl.arange(0, E_PAD)
    ids = tl.load(local_ptr + offs, mask=offs < num_a, other=-1)
    ids = tl.where((ids >= 0) & (ids < num_experts), ids, E_PAD - 1)
    counts = tl.sum((ids[:, None] == offs_e[None, :]).to(tl.int32), axis=0)
    tl.store(chunk_counts_ptr + c * E_PAD + offs_e, counts)


@triton.jit
def _offsets_kernel(
    chunk_counts_ptr,  # [C, E_PAD] in: counts; out: row start of each (chunk, expert) in the sorted buffer
    expert_ids_ptr,
    total_ptr,
    num_experts,
    num_blocks,
    num_chunks,
    BLOCK_SIZE_M: tl.constexpr,
    E_PAD: tl.constexpr,
    CB: tl.constexpr,
    FILL: tl.constexpr,
):
    # One program, walking the [C, E_PAD] counts CB chunks at a time (a cumulative sum down each tile), so a
    # few dozen iterations cover the 512 chunks of M=4096, k=8.
    offs_e = tl.arange(0, E_PAD)
    counts = tl.zeros((E_PAD,), dtype=tl.int32)
    for c0 in range(0, num_chunks, CB):
        offs_c = c0 + tl.arange(0, CB)
        tile = tl.load(
            chunk_counts_ptr + offs_c[:, None] * E_PAD + offs_e[None, :], mask=offs_c[:, None] < num_chunks, other=0
        )
        counts += tl.sum(tile, axis=0)
    counts = tl.where(offs_e < num_experts, counts, 0)
    padded = (counts + BLOCK_SIZE_M - 1) // BLOCK_SIZE_M * BLOCK_SIZE_M
    pad_end = tl.cumsum(padded, axis=0)
    running = pad_end - padded  # start of each expert's padded run
    total = tl.sum(padded, axis=0)
    tl.store(total_ptr, total)
    for c0 in range(0, num_chunks, CB):
        offs_c = c0 + tl.arange(0, CB)
        ptrs = chunk_counts_ptr + offs_c[:, None] * E_PAD + offs_e[None, :]
        tile = tl.load(ptrs, mask=offs_c[:, None] < num_chunks, other=0)
        tl.store(ptrs, running[None, :] + tl.cumsum(tile, axis=0) - tile, mask=offs_c[:, None] < num_chunks)
        running += tl.sum(tile, axis=0)
    for b0 in range(0, num_blocks, FILL):
        offs_b = b0 + tl.arange(0, FILL)
        row = offs_b * BLOCK_SIZE_M
        # owner = number of experts whose padded run ends at or before this row
        owner = tl.sum(((pad_end[None, :] <= row[:, None]) & (offs_e[None, :] < num_experts)).to(tl.int32), axis=1)
        owner = tl.where(row < total, owner, -1)
        tl.store(expert_ids_ptr + offs_b, owner, mask=offs_b < num_blocks)


@triton.jit
def _scatter_kernel(
    local_ptr,
    chunk_offsets_ptr,
    sorted_ptr,
    num_a,
    num_experts,
    E_PAD: tl.constexpr,
    CHUNK: tl.constexpr,
):
    c = tl.program_id(0)
    offs = c * CHUNK + tl.arange(0, CHUNK)
    offs_e = tl.arange(0, E_PAD)
    ids = tl.load(local_ptr + offs, mask=offs < num_a, other=-1)
    ok = (ids >= 0) & (ids < num_experts) & (offs < num_a)
    ids = tl.where(ok, ids, E_PAD - 1)
    onehot = (ids[:, None] == offs_e[None, :]).to(tl.int32)
    # rank among earlier assignments of the same expert: chunk's start for that expert + exclusive prefix
    prefix = tl.cumsum(onehot, axis=0) - onehot
    base = tl.load(chunk_offsets_ptr + c * E_PAD + offs_e)
    dest = tl.sum(onehot * (base[None, :] + prefix), axis=1)
    tl.store(sorted_ptr + dest, offs, mask=ok)


def moe_align_block_size(
    topk_ids: torch.Tensor,
    block_size_m: int,
    num_experts: int,
    expert_map: torch.Tensor | None = None,
    method: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort assignments by local expert and pad each expert's run to ``block_size_m``.

    Args:
        topk_ids: ``[M, k]`` int, global expert ids (a negative id means "dropped": no work).
        block_size_m: B, the GEMM's BLOCK_SIZE_M.
        num_experts: E, local experts (``w1.shape[0]``).
        expert_map: optional ``[E_global]`` int, global id -> local id, -1 for experts held elsewhere.
        method: ``"triton"`` or ``"torch"``; default Triton on CUDA (or under TRITON_INTERPRET), torch otherwise.

    Returns:
        ``sorted_token_ids [P] int32`` (flat assignment index t*k+j; padding holds A = M*k),
        ``expert_ids [P/B] int32`` (local expert of each block, -1 past the end),
        ``num_tokens_post_padded [1] int32``.
    """
    if method is None:
        method = "triton" if topk_ids.is_cuda else "torch"
    if method == "torch":
        return moe_align_block_size_torch(topk_ids, block_size_m, num_experts, expert_map)
    if method != "triton":
        raise ValueError(f"moe_align_block_size: method must be 'triton' or 'torch', got {method!r}")
    dev = topk_ids.device
    local = _local_ids(topk_ids, expert_map).to(torch.int32).contiguous()
    num_a = local.numel()
    cap = max_padded_len(num_a, num_experts, block_size_m)
    sorted_ids = torch.full((cap,), num_a, dtype=torch.int32, device=dev)  # padding sentinel
    expert_ids = torch.empty(cap // block_size_m, dtype=torch.int32, device=dev)
    total = torch.empty(1, dtype=torch.int32, device=dev)
    e_pad = max(triton.next_power_of_2(num_experts + 1), 16)
    chunk = max(16, min(256, 16384 // e_pad))  # keeps each program's [CHUNK, E_PAD] one-hot at <= 16K elements
    num_chunks = max(triton.cdiv(num_a, chunk), 1)
    chunk_counts = torch.empty((num_chunks, e_pad), dtype=torch.int32, device=dev)
    _count_kernel[(num_chunks,)](local, chunk_counts, num_a, num_experts, E_PAD=e_pad, CHUNK=chunk, num_warps=4)
    fill = max(16, min(1024, 16384 // e_pad))
    _offsets_kernel[(1,)](
        chunk_counts,
        expert_ids,
        total,
        num_experts,
        cap // block_size_m,
        num_chunks,
        BLOCK_SIZE_M=block_size_m,
        E_PAD=e_pad,
        CB=max(1, min(64, 8192 // e_pad)),
        FILL=fill,
        num_warps=8,
    )
    _scatter_kernel[(num_chunks,)](
        local, chunk_counts, sorted_ids, num_a, num_experts, E_PAD=e_pad, CHUNK=chunk, num_warps=4
    )
    return sorted_ids, expert_ids, total

"""Fused MoE in Triton: two grouped GEMMs over expert-sorted token blocks, with SiLU-and-multiply fused into the
first and the routed weight fused into the second, then a sum over top-k.

Dimension legend: M tokens, K hidden size, N intermediate size per expert (per TP shard; vLLM's N),
E local experts, k top-k, A = M*k assignments, B = BLOCK_SIZE_M, P padded sorted length (see align.py).

    h[M, K], w1[E, 2N, K] (rows [0, N) gate, [N, 2N) up), w2[E, K, N], topk_ids/topk_weights[M, k]
    for each assignment a = (t, j) with e = topk_ids[t, j]:
        act[a]   = silu(h[t] @ w1[e, :N].T) * (h[t] @ w1[e, N:].T)          # [N]   GEMM 1 (fused act)
        y[a]     = topk_weights[t, j] * (act[a] @ w2[e].T)                  # [K]   GEMM 2 (fused weight)
    out[t] = sum_j y[(t, j)]                                                # [K]   combine over top-k

Tiling. ``moe_align_block_size`` lays the assignments out sorted by expert, each expert's run padded to B rows,
so every B-row block of the sorted buffer belongs to one expert. A program owns one (block, column tile) pair:
it gathers the B token rows of its block (indirect loads through sorted_token_ids), streams the expert's weight
tiles along K, and accumulates in fp32. Padding rows carry the sentinel A and are masked.

GEMM 1 fuses the activation: a program's BLOCK_SIZE_N columns of w1 are split into BLOCK_SIZE_N/2 gate columns
and the matching BLOCK_SIZE_N/2 up columns (n and N + n), two fp32 accumulators, and ``silu(gate) * up`` is
applied before the single store of ``act``. Streaming BLOCK_SIZE_N weight columns per K step keeps the shared
memory per stage equal to a plain [B, BK] x [BK, BLOCK_SIZE_N] GEMM, which is what vLLM's tuned configs were
chosen for, so its shipped configs fit as they are (a vLLM config's BLOCK_SIZE_N = 64 means 32 gate + 32 up
columns here; below 32 the halves are kept at 16, the smallest tensor-core tile).

Ordering. Program ids walk "grouped" (Triton matmul tutorial): GROUP_SIZE_M consecutive row blocks share each
column tile before moving on, so the expert weight tile a program loads is still in L2 when its neighbours ask
for it (for E=8 at M=1024, ~32 blocks hit the same expert's weights).

Config keys are vLLM's: BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K, GROUP_SIZE_M, num_warps, num_stages.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from kernels.align import moe_align_block_size
from kernels.capacity import capacity_ids

CONFIG_KEYS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages")
_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


@triton.jit
def _grouped_pid(pid, num_pid_m, num_pid_n, GROUP_SIZE_M: tl.constexpr):
    # L2-friendly order: GROUP_SIZE_M row blocks per column tile before moving to the next column tile.
    num_pid_in_group = GROUP_SIZE_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_SIZE_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_SIZE_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def _gate_up_kernel(
    h_ptr,
    w1_ptr,
    act_ptr,
    sorted_ptr,
    expert_ids_ptr,
    total_ptr,
    N,
    K,
    num_a,
    num_pid_m,
    stride_hm,
    stride_hk,
    stride_we,
    stride_wn,
    stride_wk,
    stride_am,
    stride_an,
    TOP_K: tl.constexpr,
    BLOCK_SIZE_M: tl.constexpr,
    HALF_N: tl.constexpr,
    BLOCK_SIZE_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(N, HALF_N)
    pid_m, pid_n = _grouped_pid(pid, num_pid_m, num_pid_n, GROUP_SIZE_M)
    if pid_m * BLOCK_SIZE_M >= tl.load(total_ptr):
        return
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    if expert < 0:
        return
    offs_m = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    offs_a = tl.load(sorted_ptr + offs_m)
    row_ok = offs_a < num_a
    offs_t = (offs_a // TOP_K).to(tl.int64)  # token row of each assignment
    offs_n = pid_n * HALF_N + tl.arange(0, HALF_N)
    col_ok = offs_n < N
    offs_k = tl.arange(0, BLOCK_SIZE_K)
    h_ptrs = h_ptr + offs_t[:, None] * stride_hm + offs_k[None, :] * stride_hk
    w_base = w1_ptr + expert * stride_we + offs_k[:, None] * stride_wk
    g_ptrs = w_base + offs_n[None, :].to(tl.int64) * stride_wn
    u_ptrs = w_base + (offs_n[None, :] + N).to(tl.int64) * stride_wn
    acc_g = tl.zeros((BLOCK_SIZE_M, HALF_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_SIZE_M, HALF_N), dtype=tl.float32)
    for k0 in range(tl.cdiv(K, BLOCK_SIZE_K)):
        k_ok = offs_k < K - k0 * BLOCK_SIZE_K
        a = tl.load(h_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        g = tl.load(g_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        u = tl.load(u_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc_g = tl.dot(a, g, acc_g, input_precision=PRECISION)
        acc_u = tl.dot(a, u, acc_u, input_precision=PRECISION)
        h_ptrs += BLOCK_SIZE_K * stride_hk
        g_ptrs += BLOCK_SIZE_K * stride_wk
        u_ptrs += BLOCK_SIZE_K * stride_wk
    act = acc_g * tl.sigmoid(acc_g) * acc_u  # silu(gate) * up, in fp32
    a_ptrs = act_ptr + offs_a[:, None].to(tl.int64) * stride_am + offs_n[None, :] * stride_an
    tl.store(a_ptrs, act.to(act_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _down_kernel(
    act_ptr,
    w2_ptr,
    y_ptr,
    topk_w_ptr,
    sorted_ptr,
    expert_ids_ptr,
    total_ptr,
    N,
    K,
    num_a,
    num_pid_m,
    stride_am,
    stride_an,
    stride_we,
    stride_wk,
    stride_wn,
    stride_ym,
    stride_yk,
    BLOCK_SIZE_M: tl.constexpr,
    BLOCK_SIZE_N: tl.constexpr,
    BLOCK_SIZE_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # Output columns are the hidden dim K (tiled by BLOCK_SIZE_N); the reduction runs over N (by BLOCK_SIZE_K).
    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(K, BLOCK_SIZE_N)
    pid_m, pid_n = _grouped_pid(pid, num_pid_m, num_pid_n, GROUP_SIZE_M)
    if pid_m * BLOCK_SIZE_M >= tl.load(total_ptr):
        return
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    if expert < 0:
        return
    offs_m = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    offs_a = tl.load(sorted_ptr + offs_m)
    row_ok = offs_a < num_a
    offs_a64 = offs_a.to(tl.int64)
    offs_c = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    col_ok = offs_c < K
    offs_r = tl.arange(0, BLOCK_SIZE_K)
    a_ptrs = act_ptr + offs_a64[:, None] * stride_am + offs_r[None, :] * stride_an
    w_ptrs = w2_ptr + expert * stride_we + offs_c[None, :].to(tl.int64) * stride_wk + offs_r[:, None] * stride_wn
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    for r0 in range(tl.cdiv(N, BLOCK_SIZE_K)):
        r_ok = offs_r < N - r0 * BLOCK_SIZE_K
        a = tl.load(a_ptrs, mask=row_ok[:, None] & r_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=r_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_SIZE_K * stride_an
        w_ptrs += BLOCK_SIZE_K * stride_wn
    gate_w = tl.load(topk_w_ptr + offs_a, mask=row_ok, other=0.0).to(tl.float32)
    acc = acc * gate_w[:, None]
    y_ptrs = y_ptr + offs_a64[:, None] * stride_ym + offs_c[None, :] * stride_yk
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # one allocation point for the buffers the kernels fill, so tests can poison them (NaN) before a run
    return torch.empty(shape, dtype=dtype, device=device)


def check_config(config: dict[str, Any]) -> dict[str, int]:
    """The six vLLM keys as ints (extra keys such as ROCm's ``kpack`` are ignored); ValueError on a bad one."""
    out: dict[str, int] = {}
    for key in CONFIG_KEYS:
        if key not in config:
            raise ValueError(f"fused_moe config: missing key {key!r} in {config}")
        out[key] = int(config[key])
    for key in ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K"):
        v = out[key]
        if v < 16 or v & (v - 1):
            raise ValueError(f"fused_moe config: {key} must be a power of two >= 16, got {v}")
    if out["GROUP_SIZE_M"] < 1 or out["num_warps"] < 1 or out["num_stages"] < 1:
        raise ValueError(f"fused_moe config: GROUP_SIZE_M, num_warps, num_stages must be >= 1, got {out}")
    return out


def _check_inputs(hidden, w1, w2, topk_weights, topk_ids) -> tuple[int, int, int, int, int]:
    if hidden.dim() != 2 or w1.dim() != 3 or w2.dim() != 3:
        raise ValueError(
            f"fused_moe: need hidden [M, K], w1 [E, 2N, K], w2 [E, K, N]; got "
            f"{tuple(hidden.shape)}, {tuple(w1.shape)}, {tuple(w2.shape)}"
        )
    M, K = hidden.shape
    E, two_n, K1 = w1.shape
    N = two_n // 2
    if K1 != K or two_n % 2 or tuple(w2.shape) != (E, K, N):
        raise ValueError(
            f"fused_moe: shapes disagree: hidden {tuple(hidden.shape)}, w1 {tuple(w1.shape)}, "
            f"w2 {tuple(w2.shape)} (want w1 [E, 2N, K], w2 [E, K, N])"
        )
    if topk_ids.dim() != 2 or topk_ids.shape[0] != M or tuple(topk_weights.shape) != tuple(topk_ids.shape):
        raise ValueError(
            f"fused_moe: topk_ids {tuple(topk_ids.shape)} and topk_weights "
            f"{tuple(topk_weights.shape)} must both be [M={M}, k]"
        )
    if hidden.dtype not in _TL_DTYPES or w1.dtype != hidden.dtype or w2.dtype != hidden.dtype:
        raise ValueError(
            f"fused_moe: dtypes must match and be fp16/bf16/fp32, got {hidden.dtype}, {w1.dtype}, {w2.dtype}"
        )
    return M, K, E, N, topk_ids.shape[1]


def fused_moe(
    hidden: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    config: dict | None = None,
    expert_map: torch.Tensor | None = None,
    capacity: int | None = None,
    drop_policy: str = "probs",
    expert_gpu: torch.Tensor | None = None,
    align_method: str | None = None,
) -> torch.Tensor:
    """One MoE layer's expert computation (see module docstring). Returns ``out [M, K]`` in ``hidden.dtype``.

    Args:
        hidden: ``[M, K]``; w1: ``[E, 2N, K]`` (gate rows then up rows); w2: ``[E, K, N]``.
        topk_weights: ``[M, k]`` router weights; topk_ids: ``[M, k]`` global expert ids in ``[0, E_global)``
            (no negative ids: an assignment without work is expressed by ``expert_map`` or ``capacity``, the two
            cases in which the per-assignment output buffer is zero-filled).
        config: vLLM-style config dict; default: ``kernels.configs.get_config(E, N, M, ...)`` (the shipped vLLM
            file for this device and shape if there is one, else :func:`kernels.configs.default_config`).
        expert_map: ``[E_global]`` global -> local expert id, -1 for experts held elsewhere (no work, no
            contribution); ``w1.shape[0]`` is then the number of local experts.
        capacity: per-expert capacity in assignments (None: dropless), applied on global ids with
            ``drop_policy`` (``probs | position | reroute``) exactly as ``moesim.capacity.apply_capacity``;
            ``expert_gpu`` ``[E_global]`` is reroute's GPU of each expert (default: all on one GPU).
            Capacity decisions are made on the host (data-dependent), so that path is not graph-capturable.
        align_method: ``"triton" | "torch"`` for the align step (default: Triton on CUDA, torch on CPU).

    Without capacity the call does no host synchronisation and can be captured in a CUDA graph.
    """
    M, K, E, N, top_k = _check_inputs(hidden, w1, w2, topk_weights, topk_ids)
    if config is None:
        from kernels.configs import get_config

        config = get_config(E, N, M, K=K, top_k=top_k)
    cfg = check_config(config)
    ids = topk_ids
    partial = expert_map is not None
    if capacity is not None:
        ids = capacity_ids(topk_ids, topk_weights, int(capacity), drop_policy, expert_gpu)
        partial = True
    num_a = M * top_k
    bm = cfg["BLOCK_SIZE_M"]
    sorted_ids, expert_ids, total = moe_align_block_size(ids, bm, E, expert_map, method=align_method)
    num_pid_m = sorted_ids.numel() // bm
    prec = "ieee" if hidden.dtype == torch.float32 else "tf32"
    hidden = hidden.contiguous() if hidden.stride(-1) != 1 else hidden
    act = _empty((num_a, N), hidden.dtype, hidden.device)
    half_n = max(cfg["BLOCK_SIZE_N"] // 2, 16)
    grid1 = (num_pid_m * triton.cdiv(N, half_n),)
    _gate_up_kernel[grid1](
        hidden,
        w1,
        act,
        sorted_ids,
        expert_ids,
        total,
        N,
        K,
        num_a,
        num_pid_m,
        hidden.stride(0),
        hidden.stride(1),
        w1.stride(0),
        w1.stride(1),
        w1.stride(2),
        act.stride(0),
        act.stride(1),
        TOP_K=top_k,
        BLOCK_SIZE_M=bm,
        HALF_N=half_n,
        BLOCK_SIZE_K=cfg["BLOCK_SIZE_K"],
        GROUP_SIZE_M=cfg["GROUP_SIZE_M"],
        PRECISION=prec,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    # Assignments with no work (absent expert, dropped) are never written by the down GEMM: start from zeros.
    if partial:
        y = torch.zeros((M, top_k, K), dtype=hidden.dtype, device=hidden.device)
    else:
        y = _empty((M, top_k, K), hidden.dtype, hidden.device)
    y2 = y.view(num_a, K)
    weights = topk_weights.reshape(-1).contiguous()
    grid2 = (num_pid_m * triton.cdiv(K, cfg["BLOCK_SIZE_N"]),)
    _down_kernel[grid2](
        act,
        w2,
        y2,
        weights,
        sorted_ids,
        expert_ids,
        total,
        N,
        K,
        num_a,
        num_pid_m,
        act.stride(0),
        act.stride(1),
        w2.stride(0),
        w2.stride(1),
        w2.stride(2),
        y2.stride(0),
        y2.stride(1),
        BLOCK_SIZE_M=bm,
        BLOCK_SIZE_N=cfg["BLOCK_SIZE_N"],
        BLOCK_SIZE_K=cfg["BLOCK_SIZE_K"],
        GROUP_SIZE_M=cfg["GROUP_SIZE_M"],
        PRECISION=prec,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    if top_k == 1:
        return y.view(M, K)
    return y.sum(dim=1)


def moe_flops(M: int, N: int, K: int, top_k: int) -> float:
    """FLOPs of one layer: 2*A*K*2N (gate+up) + 2*A*N*K (down) = 6*M*k*N*K (activation and combine ignored)."""
    return 6.0 * M * top_k * N * K


def moe_bytes(M: int, N: int, K: int, top_k: int, experts_hit: int, dtype_bytes: int = 2) -> float:
    """Minimum HBM traffic of one layer (bytes): the weights of the experts that got tokens (3*N*K each), the
    hidden states read once, ``act`` written and read (2*A*N), the per-assignment outputs written and read by
    the combine (2*A*K), the result written (M*K)."""
    a = M * top_k
    return dtype_bytes * (experts_hit * 3.0 * N * K + M * K + 2.0 * a * N + 2.0 * a * K + M * K)

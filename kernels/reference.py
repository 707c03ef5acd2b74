"""Plain torch reference for fused_moe: a loop over experts, in the dtype of its inputs (float64 for tests).

Dimension legend: M tokens, K hidden, N intermediate per expert, E local experts, k top-k.

    out[t] = sum_j w[t, j] * (silu(h[t] @ w1[e, :N].T) * (h[t] @ w1[e, N:].T)) @ w2[e].T,  e = topk_ids[t, j]

Assignments to an expert whose ``expert_map`` entry is -1, and assignments dropped by the capacity, contribute
zero. The loop visits only experts with tokens (a host sync per expert: not for CUDA graphs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.capacity import capacity_ids


def reference_moe(
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
) -> torch.Tensor:
    """Same signature and result as :func:`kernels.fused_moe.fused_moe` (``config`` is ignored).

    Computes in ``hidden.dtype``; pass float64 tensors for a tight reference. Returns ``out [M, K]``.
    """
    del config  # no tiling here
    M, K = hidden.shape
    E, two_n, _ = w1.shape
    N = two_n // 2
    ids = topk_ids.to(torch.int64)
    if capacity is not None:
        ids = capacity_ids(topk_ids, topk_weights, int(capacity), drop_policy, expert_gpu).to(torch.int64)
    if expert_map is not None:
        emap = expert_map.to(device=ids.device, dtype=torch.int64)
        ids = torch.where(ids >= 0, emap[ids.clamp(min=0)], torch.full_like(ids, -1))
    out = torch.zeros((M, K), dtype=hidden.dtype, device=hidden.device)
    weights = topk_weights.to(hidden.dtype)
    for e in torch.unique(ids[(ids >= 0) & (ids < E)]).tolist():
        tok, slot = torch.nonzero(ids == e, as_tuple=True)
        x = hidden[tok]
        gate = x @ w1[e, :N].T
        up = x @ w1[e, N:].T
        y = (F.silu(gate) * up) @ w2[e].T
        out.index_add_(0, tok, y * weights[tok, slot][:, None])
    return out

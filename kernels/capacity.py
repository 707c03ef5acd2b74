"""Per-expert capacity with moesim's drop policies, in torch, for the kernel path.

Dimension legend: T tokens, k top-k, E logical (global) experts.

Semantics are exactly ``moesim.capacity.apply_capacity`` (docs/ARCHITECTURE.md, "Capacity"):

- ``probs``: per expert keep the ``capacity`` highest-weight assignments (ties: lower (token, k) position first);
- ``position``: per expert keep the first ``capacity`` assignments in (token, k) order;
- ``reroute``: as ``position``, then each overflow assignment, in (token, k) order, moves to the least-loaded
  expert on the same GPU (``expert_gpu[E]``) that still has room (ties: lowest id) and is not already among that
  token's experts (as updated by earlier reroutes); if none, it is dropped.

``probs`` and ``position`` are vectorised (a sort and a rank within each expert's run). ``reroute`` is
sequential by definition (each move changes the loads the next one sees); it loops over overflow assignments
only, on the host. Capacity itself comes from ``moesim.capacity.capacity_per_expert`` (Megatron's
ceil(T*k/E*factor)); :func:`capacity_per_expert` here is the same formula for callers without moesim.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

DROP_POLICIES = ("probs", "position", "reroute")


def capacity_per_expert(num_tokens: int, top_k: int, num_experts: int, factor: float) -> int:
    """``ceil(num_tokens * top_k / num_experts * factor)`` in exact rational arithmetic (as moesim's)."""
    return math.ceil(Fraction(num_tokens * top_k, num_experts) * Fraction(str(float(factor))))


def _rank_in_run(sorted_key: torch.Tensor) -> torch.Tensor:
    """Rank of each element within its run of equal keys (``sorted_key`` sorted)."""
    n = sorted_key.numel()
    idx = torch.arange(n, device=sorted_key.device)
    if n == 0:
        return idx
    new_run = torch.ones(n, dtype=torch.bool, device=sorted_key.device)
    new_run[1:] = sorted_key[1:] != sorted_key[:-1]
    run_start = torch.where(new_run, idx, torch.zeros_like(idx))
    run_start = torch.cummax(run_start, dim=0).values
    return idx - run_start


def apply_capacity(
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    capacity: int,
    policy: str,
    expert_gpu: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a per-expert capacity to one layer's routing (torch twin of ``moesim.capacity.apply_capacity``).

    Args:
        topk_ids: ``[T, k]`` int global expert ids; topk_weights: ``[T, k]`` router weights (``probs``).
        capacity: assignments each expert may take (>= 0).
        policy: ``"probs" | "position" | "reroute"``.
        expert_gpu: ``[E]`` GPU of each expert (``reroute``); default: every expert on one GPU.

    Returns:
        ``(new_ids [T, k] same dtype as topk_ids, keep [T, k] bool)``; rerouted assignments are kept with their
        new expert in ``new_ids``.
    """
    if policy not in DROP_POLICIES:
        raise ValueError(f"capacity: drop_policy must be one of {', '.join(DROP_POLICIES)}, got {policy!r}")
    if capacity < 0:
        raise ValueError(f"capacity: capacity must be >= 0, got {capacity}")
    if topk_ids.dim() != 2 or topk_weights.shape != topk_ids.shape:
        raise ValueError(f"capacity: topk_ids {tuple(topk_ids.shape)} and topk_weights "
                         f"{tuple(topk_weights.shape)} must both be [T, k]")
    num_tokens, top_k = topk_ids.shape
    flat = topk_ids.reshape(-1).to(torch.int64)
    n = flat.numel()
    pos = torch.arange(n, device=flat.device)
    if policy == "probs":
        # stable sorts from the least to the most significant key: position, -weight, expert
        w = topk_weights.reshape(-1).to(torch.float64)
        order = torch.argsort(-w, stable=True)  # pos is already ascending, so ties keep position order
        order = order[torch.argsort(flat[order], stable=True)]
    else:
        order = torch.argsort(flat, stable=True)
    rank = torch.empty_like(pos)
    rank[order] = _rank_in_run(flat[order])
    keep_flat = rank < capacity
    new_ids = topk_ids.clone()
    keep = keep_flat.reshape(num_tokens, top_k).clone()
    if policy != "reroute":
        return new_ids, keep

    num_experts = int(expert_gpu.numel()) if expert_gpu is not None else int(flat.max().item()) + 1 if n else 0
    egpu = (expert_gpu.detach().to("cpu", torch.int64) if expert_gpu is not None
            else torch.zeros(num_experts, dtype=torch.int64))
    if n and int(flat.max()) >= num_experts:
        raise ValueError(f"capacity: expert_gpu has {num_experts} entries but ids reach {int(flat.max())}")
    ids_cpu = new_ids.detach().to("cpu", torch.int64)
    keep_cpu = keep.detach().cpu()
    flat_cpu = flat.cpu()
    load = torch.bincount(flat_cpu[keep_flat.cpu()], minlength=num_experts)
    local = {int(g): torch.nonzero(egpu == g).flatten() for g in torch.unique(egpu).tolist()}
    for p in torch.nonzero(~keep_flat.cpu()).flatten().tolist():
        t, j = divmod(p, top_k)
        cand = local[int(egpu[flat_cpu[p]])]
        ok = (load[cand] < capacity) & ~torch.isin(cand, ids_cpu[t])
        if not bool(ok.any()):
            continue
        c = cand[ok]
        target = int(c[int(torch.argmin(load[c]))])  # argmin returns the first minimum: lowest id
        ids_cpu[t, j] = target
        keep_cpu[t, j] = True
        load[target] += 1
    return ids_cpu.to(device=topk_ids.device, dtype=topk_ids.dtype), keep_cpu.to(topk_ids.device)

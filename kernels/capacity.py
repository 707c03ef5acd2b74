"""Per-expert capacity for the kernel path: torch tensors in and out, decisions by ``moesim.capacity``.

Dimension legend: T tokens, k top-k, E logical (global) experts.

The drop policies (``probs``, ``position``, ``reroute``) are defined once, in ``moesim.capacity.apply_capacity``
(docs/ARCHITECTURE.md, "Capacity"), and this module calls it, so simulated and real drops agree by construction.
The decision is data-dependent and made on the host (one device-to-host copy of ``[T, k]`` ids and weights),
so ``fused_moe(capacity=...)`` is not graph-capturable. Two conveniences over moesim's signature, for kernel
callers: ``expert_gpu`` defaults to "every expert on one GPU", and a bad argument raises ``ValueError`` (as the
rest of ``kernels`` does) with moesim's message.
"""

from __future__ import annotations

import numpy as np
import torch

from moesim import capacity as _capacity
from moesim.capacity import DROP_POLICIES, capacity_per_expert
from moesim.errors import SpecError

__all__ = ["DROP_POLICIES", "apply_capacity", "capacity_ids", "capacity_per_expert"]


def apply_capacity(
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    capacity: int,
    policy: str,
    expert_gpu: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a per-expert capacity to one layer's routing (``moesim.capacity.apply_capacity`` on tensors).

    Args:
        topk_ids: ``[T, k]`` int global expert ids; topk_weights: ``[T, k]`` router weights (``probs``).
        capacity: assignments each expert may take (>= 0).
        policy: ``"probs" | "position" | "reroute"``.
        expert_gpu: ``[E]`` GPU of each expert (``reroute``); default: every expert on one GPU.

    Returns:
        ``(new_ids [T, k] same dtype and device as topk_ids, keep [T, k] bool)``; rerouted assignments are kept
        with their new expert in ``new_ids``.
    """
    ids = topk_ids.detach().cpu().numpy()
    weights = topk_weights.detach().to("cpu", torch.float64).numpy()
    if expert_gpu is not None:
        egpu = expert_gpu.detach().cpu().numpy()
    elif policy == "reroute":
        egpu = np.zeros(int(ids.max()) + 1 if ids.size else 0, dtype=np.int64)
    else:
        egpu = None
    try:
        new_ids, keep = _capacity.apply_capacity(ids, weights, int(capacity), policy, egpu)
    except SpecError as exc:
        raise ValueError(str(exc)) from exc
    return (
        torch.from_numpy(new_ids).to(device=topk_ids.device, dtype=topk_ids.dtype),
        torch.from_numpy(keep).to(topk_ids.device),
    )


def capacity_ids(
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    capacity: int,
    policy: str,
    expert_gpu: torch.Tensor | None = None,
) -> torch.Tensor:
    """``topk_ids`` after the capacity, as the kernel and the reference consume it: ``[T, k]``, rerouted
    assignments carry their new expert, dropped ones -1 (no work, no contribution)."""
    new_ids, keep = apply_capacity(topk_ids, topk_weights, capacity, policy, expert_gpu)
    return torch.where(keep, new_ids, torch.full_like(new_ids, -1))

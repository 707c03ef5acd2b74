"""Expert capacity and drop policies, shared by simulator and kernels so simulated and real drops agree.

Dimension legend: T tokens, k top-k, E logical experts, G GPUs.

Capacity follows Megatron-LM's definition (``moe_capacity_factor``)::

    capacity = ceil(T * k / E * factor)          # assignments an expert may take in one layer

A family of drop policies, applied per expert once its assignments exceed ``capacity``: the protocol is
:class:`~moesim.capacity.base.DropPolicy`, one file per member, :data:`DROP_POLICIES` the registry every
choice list derives from (to add a policy: a file with a class that follows ``DropPolicy``, one entry there).

- ``probs``: keep the ``capacity`` assignments with the highest router weight (ties: lower token index first,
  then lower k slot), drop the rest (Megatron's ``moe_token_drop_policy="probs"``).
- ``position``: keep the first ``capacity`` assignments in (token, k) order, drop later tokens
  (Megatron's ``"position"``).
- ``reroute``: as ``position``, then each overflow assignment, taken in (token, k) order, moves to the
  least-loaded expert on the same GPU that still has room (ties: lowest id) and is not already among that
  token's experts; if there is none it is dropped (Capacity-Aware Inference's token rerouting, restricted to
  the GPU the token is already sent to so it costs no extra traffic).

``apply_capacity`` works on per-token ids (exact, used by the kernels' tests); ``apply_capacity_counts``
works on per-expert counts only (used by the simulator's hot path). For ``probs`` and ``position`` both give
the same per-expert kept counts. For ``reroute`` the counts version cannot see which tokens already hold which
experts, so it ignores the "not already among that token's experts" rule (modelling assumption: with E_local
experts per GPU and k choices spread over many GPUs a collision is rare); otherwise it reproduces the greedy
fill exactly: overflow units go one at a time to the least-loaded expert with room (integer water-filling).
"""

from __future__ import annotations

import numpy as np

from moesim.capacity.base import DropPolicy, capacity_per_expert, rank_within_expert
from moesim.capacity.position import Position
from moesim.capacity.probs import Probs
from moesim.capacity.reroute import Reroute
from moesim.errors import field_error

__all__ = [
    "DROP_POLICIES",
    "DropPolicy",
    "apply_capacity",
    "apply_capacity_counts",
    "apply_capacity_counts_batched",
    "capacity_per_expert",
]

# The drop-policy family's registry: policy name -> member (each follows DropPolicy).
DROP_POLICIES: dict[str, DropPolicy] = {p.name: p for p in (Probs(), Position(), Reroute())}


def _policy(policy: str, expert_gpu: np.ndarray | None) -> DropPolicy:
    """The member called ``policy``; ``SpecError`` for an unknown name or a missing ``expert_gpu``."""
    if policy not in DROP_POLICIES:
        raise field_error("capacity", "drop_policy", f"must be one of {', '.join(DROP_POLICIES)}, got {policy!r}")
    member = DROP_POLICIES[policy]
    if member.needs_expert_gpu and expert_gpu is None:
        raise field_error("capacity", "expert_gpu", f"policy {policy!r} needs the GPU of every expert")
    return member


def apply_capacity(
    topk_ids: np.ndarray,
    topk_weights: np.ndarray,
    capacity: int,
    policy: str,
    expert_gpu: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply a per-expert capacity to one layer's routing.

    Args:
        topk_ids: ``[T, k]`` int, the experts each token chose.
        topk_weights: ``[T, k]`` float, router weights (used by ``probs``).
        capacity: assignments each expert may take.
        policy: ``"probs" | "position" | "reroute"`` (see the module docstring).
        expert_gpu: ``[E]`` GPU of each logical expert, required by ``reroute``.

    Returns:
        ``(new_ids [T, k], keep [T, k] bool)``: ``new_ids`` equals ``topk_ids`` except for rerouted
        assignments; ``keep`` is False for dropped assignments (a rerouted assignment is kept).
    """
    member = _policy(policy, expert_gpu)
    ids = np.asarray(topk_ids)
    if ids.ndim != 2:
        raise field_error("capacity", "topk_ids", f"must be [T, k], got shape {ids.shape}")
    weights = np.asarray(topk_weights)
    if weights.shape != ids.shape:
        raise field_error("capacity", "topk_weights", f"shape {weights.shape} differs from topk_ids {ids.shape}")
    if capacity < 0:
        raise field_error("capacity", "capacity", f"must be >= 0, got {capacity}")
    flat = ids.reshape(-1).astype(np.int64)
    keep = (rank_within_expert(flat, member.order(flat, weights)) < capacity).reshape(ids.shape)
    new_ids = ids.copy()
    member.place_overflow(new_ids, keep, capacity, expert_gpu)
    return new_ids, keep


def apply_capacity_counts(
    counts: np.ndarray,
    capacity: int,
    policy: str,
    expert_gpu: np.ndarray | None = None,
) -> tuple[np.ndarray, int, int]:
    """Apply a per-expert capacity to per-expert assignment counts (no token identities).

    Args:
        counts: ``[E]`` int, assignments per logical expert in one layer.
        capacity: assignments each expert may take.
        policy: ``"probs" | "position" | "reroute"``.
        expert_gpu: ``[E]`` GPU of each expert, required by ``reroute``.

    Returns:
        ``(kept [E], dropped, rerouted)``: assignments each expert processes (rerouted ones counted at
        their new expert), and the number of assignments dropped and rerouted;
        ``kept.sum() + dropped == counts.sum()``.
    """
    c = np.asarray(counts)
    kept, dropped, rerouted = apply_capacity_counts_batched(c[None, :], capacity, policy, expert_gpu)
    return kept[0], int(dropped[0]), int(rerouted[0])


def apply_capacity_counts_batched(
    counts: np.ndarray,
    capacity: int | np.ndarray,
    policy: str,
    expert_gpu: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised form of :func:`apply_capacity_counts` over layers.

    Args:
        counts: ``[L, E]`` int assignments per expert.
        capacity: int, or ``[L]`` ints (one capacity per layer).
        expert_gpu: ``[E]`` or ``[L, E]`` GPU of each expert (reroute only).

    Returns:
        ``(kept [L, E] int64, dropped [L] int64, rerouted [L] int64)``.

    ``reroute`` is integer water-filling per (layer, GPU): with ``R`` overflow units and experts of loads
    ``kept_e <= capacity``, the greedy "one unit to the least-loaded expert with room, ties lowest id"
    ends with every expert at ``max(kept_e, min(level, capacity))`` for the largest integer ``level`` that
    fits ``R``,
    plus one unit each for the lowest-id experts sitting exactly at ``level`` (< capacity) while units remain.
    """
    member = _policy(policy, expert_gpu)
    c = np.asarray(counts)
    if c.ndim != 2:
        raise field_error("capacity", "counts", f"must be [L, E], got shape {c.shape}")
    if c.size and np.any(c < 0):
        raise field_error("capacity", "counts", "must be >= 0")
    c = np.rint(c).astype(np.int64)
    num_layers, num_experts = c.shape
    cap = np.broadcast_to(np.asarray(capacity, dtype=np.int64).reshape(-1, 1), (num_layers, 1))
    if np.any(cap < 0):
        raise field_error("capacity", "capacity", "must be >= 0")
    kept = np.minimum(c, cap)
    overflow = c - kept
    return member.place_overflow_counts(kept, overflow, cap, expert_gpu)

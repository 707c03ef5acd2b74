"""Expert capacity and drop policies, shared by simulator and kernels so simulated and real drops agree.

Dimension legend: T tokens, k top-k, E logical experts, G GPUs.

Capacity follows Megatron-LM's definition (``moe_capacity_factor``)::

    capacity = ceil(T * k / E * factor)          # assignments an expert may take in one layer

Three drop policies, applied per expert once its assignments exceed ``capacity``:

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

import math

import numpy as np

from moesim.errors import field_error

DROP_POLICIES = ("probs", "position", "reroute")


def capacity_per_expert(num_tokens: int, top_k: int, num_experts: int, factor: float) -> int:
    """Megatron's expert capacity in assignments: ``ceil(num_tokens * top_k / num_experts * factor)``.

    Computed in exact rational arithmetic where the factor is a short decimal, so that e.g. 4096*8/256*1.25
    gives 160 and not 161 from a floating-point ulp.
    """
    if num_tokens < 0 or top_k < 1 or num_experts < 1:
        raise field_error(
            "capacity",
            "shape",
            f"need tokens>=0, top_k>=1, experts>=1, got {num_tokens}, {top_k}, {num_experts}",
        )
    if not factor > 0:
        raise field_error("capacity", "capacity_factor", f"must be > 0, got {factor}")
    from fractions import Fraction

    exact = Fraction(num_tokens * top_k, num_experts) * Fraction(str(float(factor)))
    return math.ceil(exact)


def _check_policy(policy: str, expert_gpu: np.ndarray | None) -> None:
    if policy not in DROP_POLICIES:
        raise field_error(
            "capacity", "drop_policy", f"must be one of {', '.join(DROP_POLICIES)}, got {policy!r}"
        )
    if policy == "reroute" and expert_gpu is None:
        raise field_error("capacity", "expert_gpu", "policy 'reroute' needs the GPU of every expert")


def _rank_within_expert(flat_ids: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Rank of each assignment among those of its expert, following ``order`` (a permutation sorted by
    expert)."""
    sorted_ids = flat_ids[order]
    n = sorted_ids.size
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]]) if n else np.zeros(0, np.int64)
    run_start = np.zeros(n, dtype=np.int64)
    if n:
        run_start[starts] = starts
        run_start = np.maximum.accumulate(run_start)
    rank_sorted = np.arange(n, dtype=np.int64) - run_start
    rank = np.empty(n, dtype=np.int64)
    rank[order] = rank_sorted
    return rank


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
    _check_policy(policy, expert_gpu)
    ids = np.asarray(topk_ids)
    if ids.ndim != 2:
        raise field_error("capacity", "topk_ids", f"must be [T, k], got shape {ids.shape}")
    weights = np.asarray(topk_weights)
    if weights.shape != ids.shape:
        raise field_error(
            "capacity", "topk_weights", f"shape {weights.shape} differs from topk_ids {ids.shape}"
        )
    if capacity < 0:
        raise field_error("capacity", "capacity", f"must be >= 0, got {capacity}")
    num_tokens, top_k = ids.shape
    flat = ids.reshape(-1).astype(np.int64)
    pos = np.arange(flat.size, dtype=np.int64)  # (token, k) order
    if policy == "probs":
        # lexsort: last key is primary -> expert, then weight descending, then (token, k) position
        order = np.lexsort((pos, -weights.reshape(-1).astype(np.float64), flat))
    else:
        order = np.argsort(flat, kind="stable")
    keep_flat = _rank_within_expert(flat, order) < capacity
    new_ids = ids.copy()
    keep = keep_flat.reshape(num_tokens, top_k)
    if policy != "reroute":
        return new_ids, keep

    egpu = np.asarray(expert_gpu, dtype=np.int64)
    num_experts = egpu.size
    if flat.size and flat.max() >= num_experts:
        raise field_error("capacity", "expert_gpu", f"has {num_experts} entries but ids reach {flat.max()}")
    load = np.bincount(flat[keep_flat], minlength=num_experts).astype(np.int64)
    # experts of each GPU, ascending ids, so argmin over a candidate list breaks ties by lowest id
    local = {int(g): np.flatnonzero(egpu == g) for g in np.unique(egpu)}
    # Sequential by definition (each reroute changes the loads the next one sees); the loop runs over
    # overflow assignments only, not over tokens.
    for p in np.flatnonzero(~keep_flat):
        t, j = divmod(int(p), top_k)
        cand = local[int(egpu[flat[p]])]
        ok = (load[cand] < capacity) & ~np.isin(cand, new_ids[t])
        if not ok.any():
            continue
        c = cand[ok]
        target = int(c[np.argmin(load[c])])
        new_ids[t, j] = target
        keep[t, j] = True
        load[target] += 1
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
    _check_policy(policy, expert_gpu)
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
    if policy != "reroute":
        dropped = overflow.sum(axis=1)
        return kept, dropped, np.zeros(num_layers, dtype=np.int64)

    egpu = np.broadcast_to(np.asarray(expert_gpu, dtype=np.int64), (num_layers, num_experts))
    if egpu.shape[-1] != num_experts:
        raise field_error(
            "capacity", "expert_gpu", f"has {egpu.shape[-1]} entries, counts have {num_experts}"
        )
    # group id per (layer, GPU), dense 0..n_groups-1
    num_gpus = int(egpu.max()) + 1 if egpu.size else 1
    group = (np.arange(num_layers)[:, None] * num_gpus + egpu).reshape(-1)
    n_groups = num_layers * num_gpus
    kept_f = kept.reshape(-1)
    cap_f = np.broadcast_to(cap, (num_layers, num_experts)).reshape(-1)
    room = cap_f - kept_f
    overflow_g = np.bincount(group, weights=overflow.reshape(-1), minlength=n_groups)
    room_g = np.bincount(group, weights=room, minlength=n_groups)
    fill = np.minimum(overflow_g, room_g).astype(np.int64)  # [groups] units rerouted

    # largest integer level with need(level) <= fill, by bisection over [0, cap] for all groups at once
    cap_g = np.zeros(n_groups, dtype=np.int64)
    np.maximum.at(cap_g, group, cap_f)
    lo = np.zeros(n_groups, dtype=np.int64)
    hi = cap_g.copy()
    while True:
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi + 1) // 2
        need = np.bincount(group, weights=np.clip(mid[group] - kept_f, 0, room), minlength=n_groups)
        ok = need <= fill
        lo = np.where(active & ok, mid, lo)
        hi = np.where(active & ~ok, mid - 1, hi)
    level = lo
    new_kept = np.maximum(kept_f, np.minimum(level[group], cap_f))
    used = np.bincount(group, weights=new_kept - kept_f, minlength=n_groups).astype(np.int64)
    left = fill - used  # < number of experts at `level` with room, by maximality of level
    # one more unit for the lowest-id experts sitting at `level` (below capacity): rank them within group
    at_level = (new_kept == level[group]) & (new_kept < cap_f)
    idx = np.flatnonzero(at_level)
    if idx.size:
        order = np.lexsort((idx, group[idx]))  # by group, then flat index (= expert id within a layer)
        sidx = idx[order]
        rank = _rank_within_expert(group[sidx], np.arange(sidx.size))
        bump = rank < left[group[sidx]]
        new_kept[sidx[bump]] += 1
    new_kept = new_kept.reshape(num_layers, num_experts)
    rerouted = fill.reshape(num_layers, num_gpus).sum(axis=1)
    dropped = overflow.sum(axis=1) - rerouted
    return new_kept, dropped, rerouted

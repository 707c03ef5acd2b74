"""``reroute``: as ``position``, then each overflow assignment, taken in (token, k) order, moves to the
least-loaded expert on the same GPU that still has room (ties: lowest id) and is not already among that token's
experts; if there is none it is dropped (Capacity-Aware Inference's token rerouting, restricted to the GPU the
token is already sent to so it costs no extra traffic).

The counts version cannot see which tokens already hold which experts, so it ignores the "not already among
that token's experts" rule (modelling assumption: with E_local experts per GPU and k choices spread over many
GPUs a collision is rare); otherwise it reproduces the greedy fill exactly: overflow units go one at a time to
the least-loaded expert with room (integer water-filling per (layer, GPU)): with ``R`` overflow units and
experts of loads ``kept_e <= capacity``, every expert ends at ``max(kept_e, min(level, capacity))`` for the
largest integer ``level`` that fits ``R``, plus one unit each for the lowest-id experts sitting exactly at
``level`` (< capacity) while units remain.
"""

from __future__ import annotations

import numpy as np

from moesim.capacity.base import DropPolicy, rank_within_expert
from moesim.errors import field_error

__all__ = ["Reroute"]


class Reroute(DropPolicy):
    """Position order; the overflow moves to the least-loaded expert with room on the same GPU."""

    name = "reroute"
    needs_expert_gpu = True

    def order(self, flat_ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return np.argsort(flat_ids, kind="stable")

    def place_overflow(
        self, new_ids: np.ndarray, keep: np.ndarray, capacity: int, expert_gpu: np.ndarray | None
    ) -> None:
        top_k = new_ids.shape[1]
        flat = new_ids.reshape(-1).astype(np.int64)
        keep_flat = keep.reshape(-1).copy()
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

    def place_overflow_counts(
        self, kept: np.ndarray, overflow: np.ndarray, capacity: np.ndarray, expert_gpu: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        num_layers, num_experts = kept.shape
        cap = capacity
        egpu = np.broadcast_to(np.asarray(expert_gpu, dtype=np.int64), (num_layers, num_experts))
        if egpu.shape[-1] != num_experts:
            raise field_error("capacity", "expert_gpu", f"has {egpu.shape[-1]} entries, counts have {num_experts}")
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
            rank = rank_within_expert(group[sidx], np.arange(sidx.size))
            bump = rank < left[group[sidx]]
            new_kept[sidx[bump]] += 1
        new_kept = new_kept.reshape(num_layers, num_experts)
        rerouted = fill.reshape(num_layers, num_gpus).sum(axis=1)
        dropped = overflow.sum(axis=1) - rerouted
        return new_kept, dropped, rerouted

"""Measured fused-MoE records turned into the arrays the kernel model predicts and fits.

A fused-MoE record (docs/ARCHITECTURE.md, measured records) names a shape, tokens per rank, TP, EP and a
routing; :func:`fused_moe_rows` rebuilds each row's local per-expert counts with
:mod:`moesim.traces.collector_routing` (all draws the collector averaged over), reduces them to
:class:`moesim.fused_moe.KernelStats` ``[R, D]`` and returns :class:`moesim.fused_moe.FitRows`. Counts depend on
``(tokens, top_k, experts, ep, distribution)`` only (generated once per key, :func:`local_counts` caches them);
the tile the engine runs also depends on the shard ``I / tp``, the engine and version, and the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import numpy as np

from moesim.fused_moe import FitRows, KernelStats, kernel_stats
from moesim.traces.collector_routing import COLLECTOR_DRAWS, local_counts, touched_tokens
from moesim.vllm_configs import TileSource

__all__ = ["fused_moe_rows", "shape_key"]


def shape_key(rec: dict[str, Any]) -> tuple[Any, ...]:
    """The model shape of a record, the unit of a held-out fold: rows of one shape are never split."""
    kind = rec["kind"]
    if kind == "fused_moe":
        return (rec["hidden"], rec["intermediate"], rec["num_experts"], rec["top_k"])
    if kind in ("deepep_normal", "deepep_ll"):
        return (rec["hidden"], rec["top_k"], rec["num_experts"])
    if kind == "nccl":
        return (rec["message_bytes"],)
    raise KeyError(kind)


def fused_moe_rows(records: Sequence[dict[str, Any]], draws: int = COLLECTOR_DRAWS, seed: int = 0) -> FitRows:
    """:class:`FitRows` of fused-MoE records (in order), stats ``[R, draws]``."""
    n = len(records)
    stats = {f.name: np.zeros((n, draws)) for f in fields(KernelStats)}
    # counts depend on the routing key only; the tile also on the shard, the engine and the device
    by_routing: dict[tuple[Any, ...], dict[tuple[Any, ...], list[int]]] = {}
    for i, r in enumerate(records):
        engine = str(r.get("framework") or "vllm").lower()
        tile = TileSource(engine, r.get("framework_version"), r.get("device_name"))
        routing = (r["tokens"], r["top_k"], r["num_experts"], r["ep"], r["distribution"])
        workload = (r["intermediate"] // r["tp"], tile, r.get("ep_emulation", "all_tokens"))
        by_routing.setdefault(routing, {}).setdefault(workload, []).append(i)
    for (tokens, top_k, experts, ep, dist), groups in by_routing.items():
        counts = local_counts(tokens, top_k, experts, ep, dist, draws, seed)  # [D', E_l]
        counts = np.broadcast_to(counts, (draws, counts.shape[1])) if counts.shape[0] == 1 else counts
        touched = None
        for (shard, tile, emulation), idx in groups.items():
            mode = records[idx[0]].get("ep_mode", "allgather")
            walked: np.ndarray | int = tokens * top_k
            expert_map = ep > 1
            if emulation == "local_tokens" and ep > 1:
                # rank 0 got only the tokens with a local expert, remote slots as id -1: the kernels walk
                # those tokens' k slots, and there is no expert map
                if touched is None:
                    touched = touched_tokens(tokens, top_k, experts, dist, counts)
                walked, expert_map = touched * top_k, False
            ks = kernel_stats(counts, top_k, mode, walked, expert_map, shard, tile)
            for f in fields(KernelStats):
                stats[f.name][idx] = getattr(ks, f.name)
    col = lambda key: np.array([r[key] for r in records], dtype=np.float64)  # noqa: E731
    return FitRows(
        stats=KernelStats(**stats),
        hidden=col("hidden"),
        intermediate_shard=col("intermediate") / col("tp"),
        gated=np.array([bool(r.get("gated", True)) for r in records], dtype=np.float64),
        num_experts=col("num_experts"),
        measured_us=col("median_us"),
    )

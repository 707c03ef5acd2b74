"""The vectorised core of the simulator: one call computes every MoE layer on every GPU.

Dimension legend: L MoE layers, E logical experts, k top-k, G GPUs, S slots per GPU, P = G*S physical
slots, N nodes, J expert groups.

:func:`simulate_arrays` takes per-expert counts ``[L, E]`` and the placement rows ``phy2log [L, P]``,
``shares [L, P]``, normalises the counts to ``A = T*G*k`` assignments, applies the capacity
(:func:`capacity_rows`), and per GPU g prices::

    latency(g) = router + permute(g) + overlap(dispatch(g), compute(g), combine(g))

with the stage models of ``router.py``, ``permute.py``, ``compute.py``, ``dispatch/``, ``overlap/`` and
``capacity/``. :func:`layer_results` turns the ``[L, G]`` arrays into one :class:`LayerResult` per layer
(the tail GPU's phases). ``moesim.simulate`` checks the inputs and assembles the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from moesim.capacity import apply_capacity_counts_batched, capacity_per_expert
from moesim.compute import dense_mlp_us, fused_moe_us, launch_overhead_us, pad_to_block
from moesim.dispatch import (
    bytes_per_token,
    delivery_per_token,
    group_selection,
    link_classes,
    link_times_us,
    make_alltoall,
)
from moesim.options import WEIGHT_DTYPES, SimOptions
from moesim.overlap import make_overlap
from moesim.permute import permute_us
from moesim.results import LayerResult
from moesim.router import router_us

if TYPE_CHECKING:
    from moesim.compute import EfficiencyModel
    from moesim.specs import ClusterSpec, ModelSpec


@dataclass(frozen=True)
class LayerArrays:
    """Per-layer, per-GPU results of the vectorised core."""

    latency: np.ndarray  # [L, G]
    router: np.ndarray  # [L, G]
    permute: np.ndarray
    dispatch: np.ndarray
    compute: np.ndarray
    combine: np.ndarray
    gpu_tokens: np.ndarray  # [L, G]
    dropped: np.ndarray  # [L] fraction
    rerouted: np.ndarray  # [L]
    nvlink_bytes: np.ndarray  # [L]
    network_bytes: np.ndarray  # [L]


def simulate_arrays(
    model: ModelSpec,
    cluster: ClusterSpec,
    counts: np.ndarray,
    phy2log: np.ndarray,
    shares: np.ndarray,
    slots_per_gpu: int,
    options: SimOptions,
    calibration: EfficiencyModel | None,
    rank_weights: np.ndarray | None = None,
    capacity_factors: Sequence[float | None] | None = None,
    drop_policies: Sequence[str] | None = None,
) -> LayerArrays:
    """The vectorised core over L layers (see the module docstring). ``rank_weights [L, G, P]``: each source
    rank's split of an expert's tokens over its replicas (an engine rule, ``moesim.engine_dispatch``); None when
    every rank splits by ``shares``. ``capacity_factors [L]`` / ``drop_policies [L]``: each layer's own capacity
    (None: ``options.capacity_factor`` / ``options.drop_policy`` for every layer).

    Every step works row by row (element-wise, or reduced within a layer's own row), so a layer's result does
    not depend on which other layers share the call: :func:`simulate_layers` relies on that.
    """
    gpu = cluster.gpu
    links = link_classes(cluster)  # cached per cluster
    num_gpus = links.num_gpus
    num_experts, top_k = model.num_experts, model.top_k
    hidden = model.hidden_size
    tokens = float(options.tokens_per_gpu)
    wbytes = WEIGHT_DTYPES[options.weight_dtype]
    counts = np.asarray(counts, dtype=np.float64)
    num_layers = counts.shape[0]
    phy2log = np.asarray(phy2log, dtype=np.int64)
    shares = np.asarray(shares, dtype=np.float64)
    layer_idx = np.arange(num_layers)[:, None]

    # routing distribution, normalised to T*G*k assignments
    total = counts.sum(axis=1, keepdims=True)
    p = counts / total  # [L, E]
    assignments = tokens * num_gpus * top_k

    if capacity_factors is None:
        capacity_factors = [options.capacity_factor] * num_layers
    if drop_policies is None:
        drop_policies = [options.drop_policy] * num_layers
    p_kept, dropped_frac, rerouted_frac = capacity_rows(
        p,
        assignments,
        phy2log,
        slots_per_gpu,
        num_gpus,
        options.tokens_per_gpu,
        top_k,
        capacity_factors,
        drop_policies,
    )

    # slots
    expert_mass = p_kept[layer_idx, phy2log]  # [L, P] the slot's expert's mass, before the split
    slot_mass = expert_mass * shares  # [L, P] fraction of assignments per slot
    n_group = max(1, int(model.n_group))
    group_size = max(1, num_experts // n_group)
    expert_group = np.minimum(np.arange(num_experts) // group_size, n_group - 1)  # [E]
    slot_group = expert_group[phy2log]
    group_mass = np.bincount(
        (layer_idx * n_group + expert_group).ravel(), weights=p.ravel(), minlength=num_layers * n_group
    ).reshape(num_layers, n_group)
    group_sel = group_selection(group_mass, int(model.topk_group) if n_group > 1 else 1)
    slot_gpu = np.arange(phy2log.shape[1]) // slots_per_gpu

    def deliveries(slot_bin: np.ndarray, num_bins: int) -> np.ndarray:
        return delivery_per_token(
            slot_mass,
            shares,
            slot_bin,
            slot_group,
            num_bins,
            group_sel,
            top_k,
            num_experts,
            int(model.topk_group),
            options.dedup,
        )

    by_node = options.alltoall == "hierarchical" and links.multi_node  # node deliveries: only DeepEP's RDMA leg
    u_node = np.zeros((num_layers, links.num_nodes))
    if options.ep_mode == "allgather":
        # every token goes to every GPU (all-gather), and its output comes back from each (reduce-scatter)
        u_gpu = np.ones((num_layers, num_gpus))
        if by_node:
            u_node = np.ones((num_layers, links.num_nodes))
    else:
        u_gpu = deliveries(slot_gpu, num_gpus)
        if by_node:
            u_node = deliveries(slot_gpu // links.gpus_per_node, links.num_nodes)
    u_src = un_src = None
    if rank_weights is not None and options.ep_mode != "allgather":
        # each source rank delivers by its own split: one row of deliveries per (layer, source)
        w = np.asarray(rank_weights, dtype=np.float64)  # [L, G, P]
        rows = num_layers * num_gpus

        def deliveries_by_source(slot_bin: np.ndarray, num_bins: int) -> np.ndarray:
            out = delivery_per_token(
                (expert_mass[:, None, :] * w).reshape(rows, -1),
                w.reshape(rows, -1),
                slot_bin,
                np.repeat(slot_group, num_gpus, axis=0),
                num_bins,
                np.repeat(group_sel, num_gpus, axis=0),
                top_k,
                num_experts,
                int(model.topk_group),
                options.dedup,
            )
            return out.reshape(num_layers, num_gpus, num_bins)

        u_src = deliveries_by_source(slot_gpu, num_gpus)
        un_src = np.zeros((num_layers, num_gpus, links.num_nodes))
        if by_node:
            un_src = deliveries_by_source(slot_gpu // links.gpus_per_node, links.num_nodes)
        u_gpu = u_src.mean(axis=1)  # what a GPU receives, per source on average

    # expert compute
    slot_tokens = (assignments * slot_mass).reshape(num_layers, num_gpus, slots_per_gpu)  # [L, G, S]
    gpu_tokens = slot_tokens.sum(axis=-1)

    # allgather EP: every GPU of the EP group walks the k rows of all the group's tokens
    walked = tokens * num_gpus * top_k

    def routed_us(tokens_per_slot: np.ndarray, share: float = 1.0) -> np.ndarray:
        return fused_moe_us(
            gpu,
            tokens_per_slot,
            hidden,
            model.moe_intermediate_size,
            top_k,
            wbytes,
            options.block_size_m,
            calibration,
            num_experts=num_experts,
            ep_mode=options.ep_mode,
            walked_rows=walked * share,
            expert_map=num_gpus > 1,
        )

    shared_us = 0.0
    if model.num_shared_experts > 0 and model.shared_expert_intermediate_size > 0:
        shared_us = float(dense_mlp_us(gpu, tokens, hidden, model.shared_expert_intermediate_size, wbytes, calibration))
    compute = routed_us(slot_tokens) + shared_us

    # router and permute
    router = np.broadcast_to(
        router_us(gpu, tokens, hidden, num_experts, top_k, n_group, 2.0, calibration), (num_layers, num_gpus)
    )
    received = num_gpus * tokens * u_gpu if options.dedup else gpu_tokens
    padded = pad_to_block(slot_tokens, options.block_size_m).sum(axis=-1)
    d_row = bytes_per_token(hidden, options.dispatch_dtype)
    permute = permute_us(gpu, received, gpu_tokens, padded, hidden, d_row / hidden, calibration)

    # all-to-all
    strategy = make_alltoall(options.alltoall)
    c_row = bytes_per_token(hidden, options.combine_dtype)
    if u_src is not None:
        d_loads = strategy.loads_by_source(links, u_src, un_src, tokens, d_row)
    else:
        d_loads = strategy.loads(links, u_gpu, u_node, tokens, d_row)
    c_loads = d_loads.reversed().scaled(c_row / d_row)
    dispatch = link_times_us(links, d_loads)
    combine = link_times_us(links, c_loads)
    nvlink_bytes = d_loads.nvlink_bytes + c_loads.nvlink_bytes
    network_bytes = d_loads.network_bytes + c_loads.network_bytes

    # overlap
    chunks = int(options.overlap_chunks)
    overlap = make_overlap(chunks, launch_overhead_us(calibration))
    if chunks > 1:
        d1 = link_times_us(links, d_loads.scaled(1.0 / chunks))
        b1 = link_times_us(links, c_loads.scaled(1.0 / chunks))
        c1 = routed_us(slot_tokens / chunks, 1.0 / chunks) + shared_us / chunks
        body = overlap.total_us(d1, c1, b1)
    else:
        body = overlap.total_us(dispatch, compute, combine)
    latency = router + permute + body
    return LayerArrays(
        latency=latency,
        router=router,
        permute=permute,
        dispatch=dispatch,
        compute=compute,
        combine=combine,
        gpu_tokens=gpu_tokens,
        dropped=dropped_frac,
        rerouted=rerouted_frac,
        nvlink_bytes=nvlink_bytes,
        network_bytes=network_bytes,
    )


def capacity_rows(
    p: np.ndarray,
    assignments: float,
    phy2log: np.ndarray,
    slots_per_gpu: int,
    num_gpus: int,
    tokens_per_gpu: int,
    top_k: int,
    capacity_factors: Sequence[float | None],
    drop_policies: Sequence[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each layer's capacity: ``(p_kept [L, E], dropped [L], rerouted [L])``, the distribution the experts
    process and the shares of the ``A = T*G*k`` assignments dropped and rerouted.

    Row l is capped at ``G * capacity_per_expert(T, k, E, capacity_factors[l])`` assignments per expert under
    ``drop_policies[l]`` (``moesim.capacity``), applied to ``rint(p_l * A)``; ``capacity_factors[l]`` None
    leaves the row dropless (``p_kept = p``). Megatron applies capacity per source rank on its T tokens; with
    every source sharing the distribution that is the global count against ``G * capacity(T)``.
    """
    num_layers, num_experts = p.shape
    capped = [i for i, f in enumerate(capacity_factors) if f is not None]
    if not capped:
        return p, np.zeros(num_layers), np.zeros(num_layers)
    layer_idx = np.arange(num_layers)[:, None]
    slot_gpu_l = np.broadcast_to(np.arange(phy2log.shape[1]) // slots_per_gpu, phy2log.shape)
    # primary GPU of each expert: the GPU of its first slot (slots are numbered GPU by GPU)
    expert_gpu = np.full((num_layers, num_experts), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(expert_gpu, (np.broadcast_to(layer_idx, phy2log.shape), phy2log), slot_gpu_l)
    p_kept = p.copy() if len(capped) < num_layers else np.empty_like(p)
    dropped = np.zeros(num_layers)
    rerouted = np.zeros(num_layers)
    caps: dict[float, int] = {}  # capacity_per_expert works in exact fractions: once per distinct factor
    for f in (capacity_factors[i] for i in capped):
        if f not in caps:
            caps[f] = num_gpus * capacity_per_expert(tokens_per_gpu, top_k, num_experts, f)
    # layers sharing a policy are capped in one batched call (apply_capacity_counts_batched is row-wise)
    for policy in dict.fromkeys(drop_policies[i] for i in capped):
        rows = [i for i in capped if drop_policies[i] == policy]
        cap = np.array([caps[capacity_factors[i]] for i in rows], dtype=np.int64)
        kept, drop, rer = apply_capacity_counts_batched(np.rint(p[rows] * assignments), cap, policy, expert_gpu[rows])
        p_kept[rows] = kept / assignments
        dropped[rows] = drop / assignments
        rerouted[rows] = rer / assignments
    return p_kept, dropped, rerouted


def layer_results(arrays: LayerArrays, layer_ids: list[int]) -> list[LayerResult]:
    tail = arrays.latency.argmax(axis=1)
    rows = np.arange(arrays.latency.shape[0])

    def at(a: np.ndarray) -> np.ndarray:
        return a[rows, tail]

    lat, rou, per, dis, com, cmb = (
        at(a)
        for a in (
            arrays.latency,
            arrays.router,
            arrays.permute,
            arrays.dispatch,
            arrays.compute,
            arrays.combine,
        )
    )
    max_tok = arrays.gpu_tokens.max(axis=1)
    mean_tok = arrays.gpu_tokens.mean(axis=1)
    out = []
    for i, layer in enumerate(layer_ids):
        out.append(
            LayerResult(
                layer=int(layer),
                latency_us=float(lat[i]),
                router_us=float(rou[i]),
                permute_us=float(per[i]),
                dispatch_us=float(dis[i]),
                compute_us=float(com[i]),
                combine_us=float(cmb[i]),
                max_gpu_tokens=float(max_tok[i]),
                mean_gpu_tokens=float(mean_tok[i]),
                dropped_fraction=float(arrays.dropped[i]),
                rerouted_fraction=float(arrays.rerouted[i]),
                nvlink_bytes=float(arrays.nvlink_bytes[i]),
                network_bytes=float(arrays.network_bytes[i]),
                tail_gpu=int(tail[i]),
                gpu_latency_us=arrays.latency[i],
                gpu_tokens=arrays.gpu_tokens[i],
                gpu_compute_us=arrays.compute[i],
                gpu_dispatch_us=arrays.dispatch[i],
                gpu_combine_us=arrays.combine[i],
            )
        )
    return out


__all__ = ["LayerArrays", "capacity_rows", "layer_results", "simulate_arrays"]

"""The MoE layer and model-step simulator: route, permute, dispatch, expert compute, combine, per GPU.

Dimension legend: L MoE layers simulated (the trace's layers), E logical experts, k top-k, G GPUs,
S slots per GPU, P = G*S physical slots, N nodes, J expert groups.

For each layer, every GPU holds ``T = options.tokens_per_gpu`` tokens. The trace's per-expert counts
``[L, E]`` are normalised to ``T * G * k`` assignments (the routing distribution; its absolute size does not
matter), the capacity (if any) drops or reroutes assignments, the placement maps experts to slots and GPUs,
and per GPU g::

    latency(g) = router + permute(g) + overlap(dispatch(g), compute(g), combine(g))
    layer latency = max_g latency(g)                          # the tail GPU; phase fields are that GPU's

(stage models: ``router.py``, ``permute.py``, ``compute.py``, ``dispatch.py``, ``overlap.py``,
``capacity.py``). A model step adds attention for every layer, the dense layers' MLP and the LM head
(``dense.py``)::

    step = sum_{MoE layers} layer latency + num_layers * attention + num_dense * dense_mlp + lm_head

MoE layers missing from the trace (traces often record a few layers) take the mean latency of the simulated
ones, so ``moe_share = MoE / step`` covers the whole model. ``alltoall_share`` counts the exposed all-to-all
time: ``layer latency - (router + permute + compute)`` of the tail GPU (with overlap, the hidden part is not
counted).

Everything is vectorised over layers and GPUs: no Python loop over tokens, layers or GPUs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from moesim.capacity import DROP_POLICIES, apply_capacity_counts_batched, capacity_per_expert
from moesim.compute import dense_mlp_us, fused_moe_us, launch_overhead_us, pad_to_block
from moesim.dense import attention_us, dense_layer_us, lm_head_us
from moesim.dispatch import (
    ALLTOALL,
    DTYPES,
    bytes_per_token,
    delivery_per_token,
    group_selection,
    link_classes,
    link_times_us,
    make_alltoall,
)
from moesim.engine_dispatch import ENGINES, engine_view
from moesim.errors import PlacementError, SpecError, TraceError, field_error
from moesim.fused_moe import EP_MODES
from moesim.overlap import make_overlap
from moesim.permute import permute_us
from moesim.placement import Placement, check_memory, check_model, contiguous
from moesim.router import router_us
from moesim.specs import MAX_TOKENS_PER_GPU

if TYPE_CHECKING:
    from moesim.specs import ClusterSpec, ModelSpec
    from moesim.trace import RoutingTrace

WEIGHT_DTYPES = {"bf16": 2.0, "fp8": 1.0}


@dataclass(frozen=True)
class SimOptions:
    """How to run a layer. The first eight fields are the contract in docs/ARCHITECTURE.md."""

    tokens_per_gpu: int = 4096
    capacity_factor: float | None = None  # None = dropless
    drop_policy: str = "probs"  # "probs" | "position" | "reroute"
    overlap_chunks: int = 1  # 1 = sequential
    dispatch_dtype: str = "bf16"  # "fp8" adds per-128-channel FP32 scales
    combine_dtype: str = "bf16"
    dedup: bool = True  # a token going to several experts on one GPU is sent once
    alltoall: str = "flat"  # "flat" | "hierarchical"
    block_size_m: int = 64  # kernel padding of each expert's rows
    weight_dtype: str = "bf16"  # expert, dense and attention weights: "bf16" | "fp8"
    seq_len: int = 4096  # sequence length behind the attention roofline (dense.py)
    check_memory: bool = True  # refuse placements whose expert weights overflow the planner's HBM budget
    ep_mode: str = "dispatched"  # "dispatched" (all-to-all: local rows only) | "allgather" (every GPU walks all rows)
    engine: str = "placement"  # whose replica choice splits an expert's tokens (moesim.engine_dispatch.ENGINES)

    def validate(self) -> None:
        """One-line ``SpecError`` naming the first bad option (in field order)."""
        one_of = {
            "drop_policy": DROP_POLICIES,
            "dispatch_dtype": DTYPES,
            "combine_dtype": DTYPES,
            "alltoall": ALLTOALL,
            "weight_dtype": WEIGHT_DTYPES,
            "ep_mode": EP_MODES,
            "engine": ENGINES,
        }
        for f in fields(self):
            name, value = f.name, getattr(self, f.name)
            if name in ("tokens_per_gpu", "overlap_chunks", "block_size_m", "seq_len") and value < 1:
                problem = f"must be >= 1, got {value}"
            elif name == "tokens_per_gpu" and value > MAX_TOKENS_PER_GPU:
                problem = f"must be <= {MAX_TOKENS_PER_GPU:,} (moesim's limit, see moesim.specs), got {value:,}"
            elif name == "capacity_factor" and value is not None and not (np.isfinite(value) and value > 0):
                problem = f"must be a finite number > 0 (omit it for no capacity limit), got {value}"
            elif name in one_of and value not in one_of[name]:
                problem = f"must be one of {', '.join(one_of[name])}, got {value!r}"
            else:
                continue
            raise field_error("options", name, problem)


@dataclass(frozen=True)
class LayerResult:
    """One MoE layer. Per-phase times (us) are those of the tail GPU (the one with the largest latency)."""

    layer: int  # model layer index
    latency_us: float
    router_us: float
    permute_us: float
    dispatch_us: float
    compute_us: float
    combine_us: float
    max_gpu_tokens: float  # token-expert assignments processed by the busiest GPU
    mean_gpu_tokens: float
    dropped_fraction: float  # of all assignments
    rerouted_fraction: float
    nvlink_bytes: float  # dispatch + combine bytes over intra-node links, all GPUs
    network_bytes: float  # dispatch + combine bytes over the inter-node network, all GPUs
    tail_gpu: int
    gpu_latency_us: np.ndarray = field(repr=False)  # [G]
    gpu_tokens: np.ndarray = field(repr=False)  # [G] assignments per GPU
    gpu_compute_us: np.ndarray = field(repr=False)  # [G]
    gpu_dispatch_us: np.ndarray = field(repr=False)  # [G]
    gpu_combine_us: np.ndarray = field(repr=False)  # [G]

    JSON_FIELDS = (
        "layer",
        "latency_us",
        "router_us",
        "permute_us",
        "dispatch_us",
        "compute_us",
        "combine_us",
        "max_gpu_tokens",
        "mean_gpu_tokens",
        "dropped_fraction",
        "rerouted_fraction",
        "nvlink_bytes",
        "network_bytes",
        "tail_gpu",
    )
    PER_GPU_FIELDS = ("gpu_latency_us", "gpu_tokens", "gpu_compute_us", "gpu_dispatch_us", "gpu_combine_us")

    def to_dict(self, per_gpu: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {name: _py(getattr(self, name)) for name in self.JSON_FIELDS}
        if per_gpu:
            for name in self.PER_GPU_FIELDS:
                out[name] = [float(x) for x in getattr(self, name)]
        return out


@dataclass(frozen=True)
class StepResult:
    """A model step: the simulated MoE layers plus attention, dense layers and the LM head."""

    model: str
    cluster: str
    num_gpus: int
    options: SimOptions
    step_latency_us: float
    moe_us: float  # all MoE layers (unsimulated ones at the simulated mean)
    attention_us: float
    dense_us: float
    lm_head_us: float
    alltoall_us: float  # exposed dispatch + combine over all MoE layers
    moe_share: float
    alltoall_share: float
    layers: tuple[LayerResult, ...]

    def phase_us(self) -> dict[str, float]:
        """Phase times of the tail GPUs summed over the simulated layers (us)."""
        names = ("router_us", "permute_us", "dispatch_us", "compute_us", "combine_us", "latency_us")
        return {n: float(sum(getattr(layer, n) for layer in self.layers)) for n in names}

    def to_dict(self, per_gpu: bool = False) -> dict[str, Any]:
        """JSON-ready: ``step_latency_us``, ``moe_share``, ``alltoall_share``, ``layers`` and the details."""
        return {
            "model": self.model,
            "cluster": self.cluster,
            "num_gpus": self.num_gpus,
            "options": asdict(self.options),
            "step_latency_us": self.step_latency_us,
            "moe_share": self.moe_share,
            "alltoall_share": self.alltoall_share,
            "moe_us": self.moe_us,
            "attention_us": self.attention_us,
            "dense_us": self.dense_us,
            "lm_head_us": self.lm_head_us,
            "alltoall_us": self.alltoall_us,
            "phase_us": self.phase_us(),
            "dropped_fraction": float(np.mean([la.dropped_fraction for la in self.layers])) if self.layers else 0.0,
            "layers": [layer.to_dict(per_gpu) for layer in self.layers],
        }


def _py(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x


# --------------------------------------------------------------------------------------------- placement
def default_placement(num_experts: int, num_gpus: int, num_layers: int) -> Placement:
    """What ``simulate`` uses without a placement: :func:`moesim.placement.contiguous` (valid for any E, G)."""
    return contiguous(num_experts, num_gpus, num_layers)


def check_placement(placement: Placement, model: ModelSpec, num_gpus: int, origin: str = "placement") -> None:
    """``PlacementError`` if the placement does not fit the model/cluster or omits an expert."""
    if placement.num_experts != model.num_experts:
        raise PlacementError(
            f"{origin}: num_experts: {placement.num_experts} but model {model.slug} has {model.num_experts}"
        )
    if placement.num_gpus != num_gpus:
        raise PlacementError(f"{origin}: num_gpus: {placement.num_gpus} but the cluster has {num_gpus}")
    phy2log = np.asarray(placement.phy2log)
    shares = np.asarray(placement.shares, dtype=np.float64)
    if phy2log.ndim != 2 or phy2log.shape[1] != placement.num_physical or shares.shape != phy2log.shape:
        raise PlacementError(
            f"{origin}: phy2log: shape {phy2log.shape} (shares {shares.shape}) does not match "
            f"[layers, {placement.num_physical}]"
        )
    if phy2log.size and (phy2log.min() < 0 or phy2log.max() >= model.num_experts):
        raise PlacementError(f"{origin}: phy2log: expert ids must be in [0, {model.num_experts})")
    num_layers = phy2log.shape[0]
    layer_off = np.arange(num_layers)[:, None] * model.num_experts
    total = np.bincount(
        (layer_off + phy2log).ravel(), weights=shares.ravel(), minlength=num_layers * model.num_experts
    ).reshape(num_layers, model.num_experts)
    missing = np.argwhere(total <= 0)
    if missing.size:
        layer, expert = (int(v) for v in missing[0])
        raise PlacementError(
            f"{origin}: layer row {layer}: expert {expert} is missing "
            f"({len(missing)} (layer, expert) pairs have no slot)"
        )
    bad = np.argwhere(~np.isclose(total, 1.0, atol=1e-6))
    if bad.size:
        layer, expert = (int(v) for v in bad[0])
        raise PlacementError(
            f"{origin}: layer row {layer}: expert {expert}: replica shares sum to {total[layer, expert]:.4g}, not 1"
        )


def _check_memory(
    placement: Placement, model: ModelSpec, cluster: ClusterSpec, weight_bytes: float, user_placement: bool
) -> None:
    """The planner's memory rule (``moesim.placement.check_memory``: routed-expert weights within 75% of HBM),
    so a plan the tuner accepts is one the simulator accepts. ``PlacementError`` for a given placement,
    ``SpecError`` ("cluster too small") for the default one."""
    try:
        check_memory(placement, model, cluster.gpu, weight_bytes)
    except PlacementError as exc:
        if user_placement:
            raise
        raise SpecError(
            f"{cluster.slug}: num_gpus: {cluster.num_gpus} GPUs too few for {model.slug}'s experts "
            f"({str(exc).split(': ', 1)[-1]})"
        ) from None


# --------------------------------------------------------------------------------------------- core
@dataclass(frozen=True)
class _Arrays:
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


def _simulate_arrays(
    model: ModelSpec,
    cluster: ClusterSpec,
    counts: np.ndarray,
    phy2log: np.ndarray,
    shares: np.ndarray,
    slots_per_gpu: int,
    options: SimOptions,
    calibration: Any | None,
    rank_weights: np.ndarray | None = None,
    capacity_factors: Sequence[float | None] | None = None,
    drop_policies: Sequence[str] | None = None,
) -> _Arrays:
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
    p_kept, dropped_frac, rerouted_frac = _capacity_rows(
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
    slot_mass = p_kept[layer_idx, phy2log] * shares  # [L, P] fraction of assignments per slot
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

    if options.ep_mode == "allgather":
        # every token goes to every GPU (all-gather), and its output comes back from each (reduce-scatter)
        u_gpu = np.ones((num_layers, num_gpus))
        u_node = np.ones((num_layers, links.num_nodes)) if links.multi_node else np.zeros((num_layers, 1))
        if not (options.alltoall == "hierarchical" and links.multi_node):
            u_node = np.zeros((num_layers, links.num_nodes))
    else:
        u_gpu = deliveries(slot_gpu, num_gpus)
        if options.alltoall == "hierarchical" and links.multi_node:
            u_node = deliveries(slot_gpu // links.gpus_per_node, links.num_nodes)
        else:
            u_node = np.zeros((num_layers, links.num_nodes))
    u_src = un_src = None
    if rank_weights is not None and options.ep_mode != "allgather":
        # each source rank delivers by its own split: one row of deliveries per (layer, source)
        w = np.asarray(rank_weights, dtype=np.float64)  # [L, G, P]
        rows = num_layers * num_gpus
        slot_mass_kept = p_kept[layer_idx, phy2log]  # [L, P] the expert's mass, before the split

        def deliveries_by_source(slot_bin: np.ndarray, num_bins: int) -> np.ndarray:
            out = delivery_per_token(
                (slot_mass_kept[:, None, :] * w).reshape(rows, -1),
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
        if options.alltoall == "hierarchical" and links.multi_node:
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
    in_bytes = bytes_per_token(hidden, options.dispatch_dtype) / hidden
    permute = permute_us(gpu, received, gpu_tokens, padded, hidden, in_bytes, calibration)

    # all-to-all
    strategy = make_alltoall(options.alltoall)
    d_row = bytes_per_token(hidden, options.dispatch_dtype)
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
    return _Arrays(
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


def _capacity_rows(
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


def _layer_results(arrays: _Arrays, layer_ids: list[int]) -> list[LayerResult]:
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


def _placement_rows(placement: Placement, model: ModelSpec, layers: tuple[int, ...]) -> list[int]:
    """The placement rows for the trace's layers: by the placement's ``meta["layers"]`` (model layer of each
    row) when it has them, else one row per trace layer, or one per model MoE layer."""
    num_rows = np.asarray(placement.phy2log).shape[0]
    meta_layers = (placement.meta or {}).get("layers")
    if meta_layers is not None and len(meta_layers) == num_rows:
        row_of = {int(layer): i for i, layer in enumerate(meta_layers)}
        missing = [layer for layer in layers if layer not in row_of]
        if missing:
            raise PlacementError(f"placement: layers: no row for trace layer {missing[0]} (rows: {list(row_of)})")
        return [row_of[layer] for layer in layers]
    if num_rows == len(layers):
        return list(range(num_rows))
    if num_rows == model.num_moe_layers:
        moe = list(model.moe_layers)
        return [moe.index(layer) for layer in layers]  # trace.check_model guarantees MoE layers
    raise PlacementError(
        f"placement: layers: {num_rows} rows, but the trace has {len(layers)} layers and "
        f"{model.slug} {model.num_moe_layers} MoE layers"
    )


def simulate(
    model: ModelSpec,
    cluster: ClusterSpec,
    trace: RoutingTrace,
    placement: Placement | None = None,
    options: SimOptions = SimOptions(),
    calibration: Any | None = None,
) -> StepResult:
    """Simulate one step of ``model`` on ``cluster`` with the routing of ``trace`` and the given placement.

    Args:
        trace: per-expert counts ``[L, E]`` per recorded MoE layer (``trace.layers``: model layer indices).
        placement: ``None`` = :func:`default_placement` (Megatron's contiguous); otherwise rows for the
            trace's layers, or one row per MoE layer of the model.
        calibration: a ``moesim.calibration.Calibration`` (measured efficiency curves) or ``None``.

    Raises:
        TraceError (trace of another model), PlacementError (missing expert, wrong shape, memory overflow of a
        given placement), SpecError (bad option, cluster too small for the default placement).
    """
    options.validate()
    if hasattr(trace, "check_model"):
        trace.check_model(model, getattr(trace, "source", "") or "trace")
    counts = np.asarray(trace.counts)
    if counts.ndim != 2 or counts.shape[1] != model.num_experts:
        raise TraceError(
            f"trace: counts: shape {counts.shape}, expected [layers, {model.num_experts}] for {model.slug}"
        )
    layers = tuple(int(x) for x in trace.layers)
    if np.any(counts.sum(axis=1) <= 0):
        raise TraceError("trace: counts: a layer has no assignments")
    num_gpus = int(cluster.num_gpus)
    user_placement = placement is not None
    if placement is None:
        placement = default_placement(model.num_experts, num_gpus, len(layers))
    if user_placement:
        check_model(placement, model)
    check_placement(placement, model, num_gpus)
    if options.check_memory:
        wbytes = WEIGHT_DTYPES[options.weight_dtype]
        _check_memory(placement, model, cluster, wbytes, user_placement)
    placement, weights = engine_view(placement, options.engine, int(cluster.gpus_per_node), model, layers)
    idx = _placement_rows(placement, model, layers)
    phy2log = np.asarray(placement.phy2log)[idx]
    shares = np.asarray(placement.shares, dtype=np.float64)[idx]
    arrays = _simulate_arrays(
        model,
        cluster,
        counts,
        phy2log,
        shares,
        placement.slots_per_gpu,
        options,
        calibration,
        None if weights is None else weights[idx],
    )
    layer_results = _layer_results(arrays, list(layers))
    return _step(model, cluster, options, calibration, layer_results)


def _step(
    model: ModelSpec,
    cluster: ClusterSpec,
    options: SimOptions,
    calibration: Any | None,
    layer_results: list[LayerResult],
) -> StepResult:
    gpu = cluster.gpu
    tokens = float(options.tokens_per_gpu)
    wbytes = WEIGHT_DTYPES[options.weight_dtype]
    n_sim = max(len(layer_results), 1)
    scale = model.num_moe_layers / n_sim
    moe = scale * float(sum(la.latency_us for la in layer_results))
    exposed = scale * float(
        sum(max(0.0, la.latency_us - la.router_us - la.permute_us - la.compute_us) for la in layer_results)
    )
    attn = model.num_layers * attention_us(gpu, model, tokens, options.seq_len, wbytes, calibration)
    dense = (model.num_layers - model.num_moe_layers) * dense_layer_us(gpu, model, tokens, wbytes, calibration)
    head = lm_head_us(gpu, model, tokens, wbytes, calibration)
    step = moe + attn + dense + head
    return StepResult(
        model=model.slug,
        cluster=cluster.slug,
        num_gpus=int(cluster.num_gpus),
        options=options,
        step_latency_us=step,
        moe_us=moe,
        attention_us=attn,
        dense_us=dense,
        lm_head_us=head,
        alltoall_us=exposed,
        moe_share=moe / step if step > 0 else 0.0,
        alltoall_share=exposed / step if step > 0 else 0.0,
        layers=tuple(layer_results),
    )


def simulate_layer(
    model: ModelSpec,
    cluster: ClusterSpec,
    layer_counts: np.ndarray,
    placement_layer: Placement | tuple[np.ndarray, np.ndarray],
    options: SimOptions = SimOptions(),
    layer: int = 0,
    calibration: Any | None = None,
) -> LayerResult:
    """One MoE layer from its per-expert counts ``[E]``.

    ``placement_layer``: a one-row :class:`Placement`, or ``(phy2log [P], shares [P])`` with ``P`` a multiple
    of the cluster's GPU count. No memory check (a single layer cannot tell). ``layer`` only labels
    the result.
    """
    options.validate()
    num_gpus = int(cluster.num_gpus)
    if isinstance(placement_layer, Placement):
        if placement_layer.num_layers != 1:
            raise PlacementError(f"placement: layers: simulate_layer needs one row, got {placement_layer.num_layers}")
        pl = placement_layer
    else:
        phy, sh = (np.asarray(x) for x in placement_layer)
        if phy.ndim != 1 or phy.size % num_gpus:
            raise PlacementError(f"placement: phy2log: {phy.size} slots do not divide over {num_gpus} GPUs")
        pl = Placement(
            num_gpus=num_gpus,
            slots_per_gpu=phy.size // num_gpus,
            num_experts=model.num_experts,
            phy2log=phy[None, :].astype(np.int64),
            shares=np.asarray(sh, dtype=np.float64)[None, :],
        )
    check_placement(pl, model, num_gpus)
    counts = np.asarray(layer_counts, dtype=np.float64).reshape(1, -1)
    if counts.shape[1] != model.num_experts or counts.sum() <= 0:
        raise TraceError(f"trace: counts: need {model.num_experts} non-negative counts with a positive sum")
    arrays = _simulate_arrays(model, cluster, counts, pl.phy2log, pl.shares, pl.slots_per_gpu, options, calibration)
    return _layer_results(arrays, [layer])[0]


def simulate_layers(
    model: ModelSpec,
    cluster: ClusterSpec,
    layer_counts: np.ndarray,
    placement_rows: tuple[np.ndarray, np.ndarray],
    options: SimOptions = SimOptions(),
    capacity_factors: Sequence[float | None] | None = None,
    drop_policies: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    calibration: Any | None = None,
) -> list[LayerResult]:
    """Many MoE layers in one vectorised call, each with its own capacity: :func:`simulate_layer` per row.

    Args:
        layer_counts: ``[L, E]`` per-expert counts, one row per layer.
        placement_rows: ``(phy2log [L, P], shares [L, P])``, ``P`` a multiple of the cluster's GPU count.
        capacity_factors: ``[L]`` each row's ``capacity_factor`` (None entries: dropless); None: every row
            ``options.capacity_factor``.
        drop_policies: ``[L]`` each row's ``drop_policy``; None: every row ``options.drop_policy``.
        layers: ``[L]`` labels of the results (default ``0..L-1``).

    Result i equals, bit for bit, ``simulate_layer(model, cluster, layer_counts[i], (phy2log[i], shares[i]),
    replace(options, capacity_factor=capacity_factors[i], drop_policy=drop_policies[i]), layers[i])``: the core
    works row by row, so one call over L rows costs about what one row did instead of L times that. No memory
    check (as :func:`simulate_layer`).
    """
    options.validate()
    num_gpus = int(cluster.num_gpus)
    phy, sh = np.asarray(placement_rows[0]), np.asarray(placement_rows[1], dtype=np.float64)
    if phy.ndim != 2 or phy.shape[1] % num_gpus or sh.shape != phy.shape:
        raise PlacementError(
            f"placement: phy2log: shape {phy.shape} (shares {sh.shape}) is not [layers, slots] with the slots "
            f"dividing over {num_gpus} GPUs"
        )
    counts = np.asarray(layer_counts, dtype=np.float64)
    num_layers = phy.shape[0]
    if counts.shape != (num_layers, model.num_experts) or np.any(counts.sum(axis=1) <= 0):
        raise TraceError(
            f"trace: counts: need [{num_layers}, {model.num_experts}] non-negative counts with a positive sum per "
            f"layer, got shape {counts.shape}"
        )
    factors = [options.capacity_factor] * num_layers if capacity_factors is None else list(capacity_factors)
    policies = [options.drop_policy] * num_layers if drop_policies is None else list(drop_policies)
    labels = list(range(num_layers)) if layers is None else [int(x) for x in layers]
    if not len(factors) == len(policies) == len(labels) == num_layers:
        raise SpecError(
            f"simulate_layers: {num_layers} layers but {len(factors)} capacity factors, {len(policies)} drop "
            f"policies and {len(labels)} labels"
        )
    for factor, policy in dict.fromkeys(zip(factors, policies, strict=True)):
        replace(options, capacity_factor=factor, drop_policy=policy).validate()  # each row's options
    pl = Placement(
        num_gpus=num_gpus,
        slots_per_gpu=phy.shape[1] // num_gpus,
        num_experts=model.num_experts,
        phy2log=phy.astype(np.int64),
        shares=sh,
    )
    check_placement(pl, model, num_gpus)
    arrays = _simulate_arrays(
        model,
        cluster,
        counts,
        pl.phy2log,
        pl.shares,
        pl.slots_per_gpu,
        options,
        calibration,
        capacity_factors=factors,
        drop_policies=policies,
    )
    return _layer_results(arrays, labels)


def step_from_layers(
    model: ModelSpec,
    cluster: ClusterSpec,
    layer_results: list[LayerResult],
    options: SimOptions = SimOptions(),
    calibration: Any | None = None,
) -> StepResult:
    """Assemble a step from layer results computed separately (e.g. by :func:`simulate_layer`)."""
    return _step(model, cluster, options, calibration, list(layer_results))


__all__ = [
    "LayerResult",
    "SimOptions",
    "StepResult",
    "check_placement",
    "default_placement",
    "simulate",
    "simulate_layer",
    "simulate_layers",
    "step_from_layers",
]

"""The MoE layer and model-step simulator: route, permute, dispatch, expert compute, combine, per GPU.

Dimension legend: L MoE layers simulated (the trace's layers), E logical experts, k top-k, G GPUs,
S slots per GPU, P = G*S physical slots, N nodes, J expert groups.

For each layer, every GPU holds ``T = options.tokens_per_gpu`` tokens. The trace's per-expert counts
``[L, E]`` are normalised to ``T * G * k`` assignments (the routing distribution; its absolute size does not
matter), the capacity (if any) drops or reroutes assignments, the placement maps experts to slots and GPUs,
and per GPU g::

    latency(g) = router + permute(g) + overlap(dispatch(g), compute(g), combine(g))
    layer latency = max_g latency(g)                          # the tail GPU; phase fields are that GPU's

(stage models: ``router.py``, ``permute.py``, ``compute.py``, ``dispatch/``, ``overlap/``,
``capacity/``). A model step adds attention for every layer, the dense layers' MLP and the LM head
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
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from moesim.dense import attention_us, dense_layer_us, lm_head_us
from moesim.engine_dispatch import engine_view
from moesim.errors import PlacementError, SpecError, TraceError
from moesim.layer_core import layer_results, simulate_arrays
from moesim.options import WEIGHT_DTYPES, SimOptions
from moesim.placement import Placement, check_memory, check_model, contiguous
from moesim.results import LayerResult, StepResult

if TYPE_CHECKING:
    from moesim.compute import EfficiencyModel
    from moesim.specs import ClusterSpec, ModelSpec
    from moesim.traces.trace import RoutingTrace


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
    placement.validate(origin)  # the one placement rule (moesim.placement)


def _check_memory(
    placement: Placement, model: ModelSpec, cluster: ClusterSpec, weight_bytes: float, user_placement: bool
) -> None:
    """The planner's memory rule (``moesim.placement.check_memory``: routed-expert weights within
    ``1 - DEFAULT_MEMORY_RESERVE`` of HBM), so a plan the tuner accepts is one the simulator accepts.
    ``PlacementError`` for a given placement, ``SpecError`` ("cluster too small") for the default one."""
    try:
        check_memory(placement, model, cluster.gpu, weight_bytes)
    except PlacementError as exc:
        if user_placement:
            raise
        raise SpecError(
            f"{cluster.slug}: num_gpus: {cluster.num_gpus} GPUs too few for {model.slug}'s experts "
            f"({str(exc).split(': ', 1)[-1]})"
        ) from None


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
    calibration: EfficiencyModel | None = None,
) -> StepResult:
    """Simulate one step of ``model`` on ``cluster`` with the routing of ``trace`` and the given placement.

    Args:
        trace: per-expert counts ``[L, E]`` per recorded MoE layer (``trace.layers``: model layer indices).
        placement: ``None`` = :func:`default_placement` (Megatron's contiguous); otherwise rows for the
            trace's layers, or one row per MoE layer of the model.
        calibration: a ``moesim.calibration.model.Calibration`` (measured efficiency curves) or ``None``.

    Raises:
        TraceError (trace of another model), PlacementError (missing expert, wrong shape, memory overflow of a
        given placement), SpecError (cluster too small for the default placement).
    """
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
    arrays = simulate_arrays(
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
    return _step(model, cluster, options, calibration, layer_results(arrays, list(layers)))


def _step(
    model: ModelSpec,
    cluster: ClusterSpec,
    options: SimOptions,
    calibration: EfficiencyModel | None,
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
    calibration: EfficiencyModel | None = None,
) -> LayerResult:
    """One MoE layer from its per-expert counts ``[E]``.

    ``placement_layer``: a one-row :class:`Placement`, or ``(phy2log [P], shares [P])`` with ``P`` a multiple
    of the cluster's GPU count. No memory check (a single layer cannot tell). ``layer`` only labels
    the result.
    """
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
    arrays = simulate_arrays(model, cluster, counts, pl.phy2log, pl.shares, pl.slots_per_gpu, options, calibration)
    return layer_results(arrays, [layer])[0]


def simulate_layers(
    model: ModelSpec,
    cluster: ClusterSpec,
    layer_counts: np.ndarray,
    placement_rows: tuple[np.ndarray, np.ndarray],
    options: SimOptions = SimOptions(),
    capacity_factors: Sequence[float | None] | None = None,
    drop_policies: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    calibration: EfficiencyModel | None = None,
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
        replace(options, capacity_factor=factor, drop_policy=policy)  # each row's options (SpecError if bad)
    pl = Placement(
        num_gpus=num_gpus,
        slots_per_gpu=phy.shape[1] // num_gpus,
        num_experts=model.num_experts,
        phy2log=phy.astype(np.int64),
        shares=sh,
    )
    check_placement(pl, model, num_gpus)
    arrays = simulate_arrays(
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
    return layer_results(arrays, labels)


def step_from_layers(
    model: ModelSpec,
    cluster: ClusterSpec,
    layer_results: list[LayerResult],
    options: SimOptions = SimOptions(),
    calibration: EfficiencyModel | None = None,
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

"""SGLang's ``--init-expert-location FILE.json`` holding ``{"logical_count": [[...], ...]}``: loads, not a map.

SGLang 0.5.14, ``python/sglang/srt/eplb/expert_location.py``: a document with ``logical_count`` (``[L, E]`` or
``[S, L, E]``) goes to ``ExpertLocationMetadata.init_by_eplb``, which runs SGLang's own EPLB at startup
(``python/sglang/srt/eplb/eplb_algorithms/__init__.py`` ``rebalance_experts``: with ``--eplb-algorithm auto`` the
``deepseek_hierarchical`` policy when ``num_groups % nnodes == 0``, else ``deepseek``, on the loads summed over
``S``; ``num_physical_experts = E + --ep-num-redundant-experts`` and ``ep_size`` GPUs). ``L`` is the model's
``num_hidden_layers`` (``get_model_config_for_expert_location``, ``python/sglang/srt/models/deepseek_v2.py``), and
``num_groups`` its ``n_group``.

Written: the loads of the placement's rows at their model layers; the other rows (dense layers, MoE layers the
trace did not record) get each expert's mean load over the recorded rows. An all-zero row would give every
redundant slot to expert 0, and equal loads would leave the map to how torch's sort orders ties (below); mean
loads are nearly uniform and, in practice, distinct.

Read back as ``--current``: the file is no placement, so moesim runs the same EPLB (``tuner/eplb.py``, a rewrite
of the DeepSeek EPLB that SGLang copies in ``eplb_algorithms/deepseek.py``) with SGLang's policy choice and takes
the MoE layers' rows. The two agree wherever the loads of one row are distinct; where loads tie, torch's sort and
numpy's stable sort may order the tied experts differently, so the map SGLang builds can differ in which of the
tied experts goes where (the loads per GPU are the same).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from moesim.errors import PlacementError
from tuner.engine_files.base import (
    EngineFormat,
    check_for_cluster,
    check_slot_count,
    moe_rows_placement,
    placement_layers,
)

if TYPE_CHECKING:
    from moesim.placement import Placement
    from moesim.specs import ClusterSpec, ModelSpec
    from tuner.engine_files.base import RenderRequest

KEY = "logical_count"


def _check_loads(loads: np.ndarray, origin: str) -> None:
    """``PlacementError`` unless every load is finite and >= 0."""
    if not np.all(np.isfinite(loads)) or np.any(loads < 0):
        raise PlacementError(f"{origin}: {KEY}: loads must be finite and >= 0")


def full_counts(placement: Placement, model: ModelSpec, counts: np.ndarray, origin: str) -> np.ndarray:
    """``[num_hidden_layers, E]`` loads: the placement's rows at their model layers, the mean row elsewhere."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape != (placement.num_layers, model.num_experts):
        raise PlacementError(
            f"{origin}: {KEY}: counts of shape {counts.shape}, the placement has {placement.num_layers} layers x "
            f"{model.num_experts} experts"
        )
    _check_loads(counts, origin)
    layers = placement_layers(placement, model, origin)
    out = np.tile(counts.mean(axis=0), (model.num_layers, 1))
    for row, layer in enumerate(layers):
        if not 0 <= int(layer) < model.num_layers:
            raise PlacementError(f"{origin}: layers[{row}]: layer {layer} is not a layer of {model.slug}")
        out[int(layer)] = counts[row]
    return out


def _policy(model: ModelSpec, cluster: ClusterSpec, P: int, origin: str) -> bool:
    """Whether SGLang's ``auto`` picks the hierarchical policy, after the divisibility its EPLB asserts
    (``rebalance_experts_hierarchical`` in ``eplb_algorithms/deepseek.py``)."""
    J, N, G = int(model.n_group), int(cluster.num_nodes), int(cluster.num_gpus)
    hierarchical = J % N == 0
    if P % G:
        raise PlacementError(f"{origin}: {KEY}: {P} physical experts do not divide over {G} GPUs")
    if hierarchical and (model.num_experts % J or G % N):
        raise PlacementError(
            f"{origin}: {KEY}: SGLang's hierarchical EPLB needs experts % groups == 0 and GPUs % "
            f"nodes == 0 ({model.num_experts}, {J}, {G}, {N})"
        )
    return hierarchical


def render(request: RenderRequest) -> bytes:
    placement, model, cluster, origin = request.placement, request.model, request.cluster, request.origin
    counts = request.counts
    if counts is None:
        raise PlacementError(f"{origin}: {KEY}: this format carries expert loads; give counts")
    check_for_cluster(placement, model, cluster, origin)
    _policy(model, cluster, placement.num_physical, origin)
    full = full_counts(placement, model, counts, origin)
    integral = bool(np.all(full == np.round(full)))
    rows = full.astype(np.int64).tolist() if integral else [[round(float(v), 6) for v in r] for r in full]
    return json.dumps({KEY: rows}, separators=(",", ":")).encode()


def eplb_map(loads: np.ndarray, model: ModelSpec, cluster: ClusterSpec, P: int, origin: str) -> np.ndarray:
    """``[rows, P]`` map SGLang's ``init_by_eplb`` builds from ``loads [rows, E]``."""
    from tuner.eplb import rebalance_experts

    hierarchical = _policy(model, cluster, P, origin)
    phy2log, _, _ = rebalance_experts(
        loads, P, int(model.n_group), int(cluster.num_nodes), int(cluster.num_gpus), hierarchical=hierarchical
    )
    return phy2log


def read(path: Path, doc: Any, model: ModelSpec, cluster: ClusterSpec, redundant_experts: int | None) -> Placement:
    src = str(path)
    if not isinstance(doc, dict) or KEY not in doc:
        raise PlacementError(f"{src}: {KEY}: missing")
    raw = doc[KEY]
    if hasattr(raw, "numpy"):
        raw = raw.detach().cpu().numpy() if hasattr(raw, "detach") else raw.numpy()
    try:
        loads = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise PlacementError(f"{src}: {KEY}: expected [layers, experts] numbers (all rows the same length)") from None
    if loads.ndim == 3:  # [S, L, E]: SGLang's deepseek policies sum the S snapshots
        loads = loads.sum(axis=0)
    if loads.ndim != 2 or loads.shape != (model.num_layers, model.num_experts):
        raise PlacementError(
            f"{src}: {KEY}: shape {loads.shape}, {model.slug} needs [{model.num_layers} hidden layers, "
            f"{model.num_experts} experts]"
        )
    _check_loads(loads, src)
    # SGLang takes the physical count from --ep-num-redundant-experts (default 0), not from this file
    R = 0 if redundant_experts is None else int(redundant_experts)
    P = model.num_experts + R
    check_slot_count(src, KEY, P, model, cluster, R)
    rows = eplb_map(loads[list(model.moe_layers)], model, cluster, P, src)
    return moe_rows_placement(rows, model, cluster, src, "sglang-eplb")


class SglangCount:
    """The :class:`~tuner.engine_files.base.EngineFormat` ``sglang-count``."""

    name = "sglang-count"
    engine = "sglang"
    what = "SGLang --init-expert-location loads (logical_count); SGLang runs its EPLB on them"
    suffixes = (".json",)
    needs_counts = True
    needs_torch = False
    render = staticmethod(render)
    read = staticmethod(read)


FORMAT: EngineFormat = SglangCount()

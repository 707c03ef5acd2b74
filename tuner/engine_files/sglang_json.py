"""SGLang's ``--init-expert-location FILE.json``: ``{"physical_to_logical_map": [[...], ...]}``.

The map itself (all ``num_hidden_layers`` rows, trivial rows for dense and unplanned layers) is
:func:`tuner.sglang.physical_to_logical_map`; its docstring has SGLang's rules. Checked against SGLang 0.5.14,
``python/sglang/srt/eplb/expert_location.py``: ``compute_initial_expert_location_metadata`` reads the argument as
a file only when it ends in ``.json`` (``.pt``: :mod:`tuner.engine_files.sglang_pt`) and passes the document's
keys to ``ExpertLocationMetadata.init_by_mapping`` as keyword arguments, so the document holds that one key.
``_init_common`` asserts ``(num_logical_experts + --ep-num-redundant-experts) % ep_size == 0``; the map is one
``[num_layers, num_physical_experts]`` tensor, so every layer has the same number of physical experts.

Read back, the MoE layers' rows are the placement (dense layers' rows are never used by SGLang).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from moesim.errors import PlacementError
from tuner.engine_files.base import (
    EngineFormat,
    as_int_map,
    check_for_cluster,
    check_map,
    check_slot_count,
    moe_rows_placement,
)

if TYPE_CHECKING:
    from moesim.placement import Placement
    from moesim.specs import ClusterSpec, ModelSpec
    from tuner.engine_files.base import RenderRequest

KEY = "physical_to_logical_map"


def full_map(placement: Placement, model: ModelSpec, cluster: ClusterSpec, origin: str) -> np.ndarray:
    """``[num_hidden_layers, P]`` map SGLang loads, after every SGLang rule is checked (:func:`check_map`)."""
    from tuner.sglang import physical_to_logical_map

    check_for_cluster(placement, model, cluster, origin)
    mapping, _ = physical_to_logical_map(placement, model)
    check_map(mapping, model.num_experts, placement.num_gpus, origin, KEY)
    return mapping


def render(request: RenderRequest) -> bytes:
    mapping = full_map(request.placement, request.model, request.cluster, request.origin)
    return json.dumps({KEY: mapping.tolist()}, separators=(",", ":")).encode()


def placement_from_map(
    mapping: Any, path: Path, model: ModelSpec, cluster: ClusterSpec, redundant_experts: int | None
) -> Placement:
    """The placement of SGLang's full map (a nested list or tensor) for ``model`` on ``cluster``."""
    src = str(path)
    arr = as_int_map(mapping, src, KEY)
    if arr.shape[0] != model.num_layers:
        raise PlacementError(
            f"{src}: {KEY}: {arr.shape[0]} layers, {model.slug} has {model.num_layers} hidden layers (SGLang "
            "indexes the map by model layer, dense layers included)"
        )
    check_slot_count(src, KEY, arr.shape[1], model, cluster, redundant_experts)
    check_map(arr, model.num_experts, cluster.num_gpus, src, KEY)
    return moe_rows_placement(arr[list(model.moe_layers)], model, cluster, src, "sglang")


def check_document(doc: Any, path: Path) -> Any:
    """The map of a ``{"physical_to_logical_map": ...}`` document; any other key is a TypeError in SGLang's
    ``init_by_mapping(server_args, model_config, **doc)``."""
    if not isinstance(doc, dict) or KEY not in doc:
        raise PlacementError(f"{path}: {KEY}: missing")
    extra = sorted(str(k) for k in doc if k != KEY)
    if extra:
        raise PlacementError(f"{path}: {extra[0]}: unknown field (SGLang passes every key to init_by_mapping)")
    return doc[KEY]


def read(path: Path, doc: Any, model: ModelSpec, cluster: ClusterSpec, redundant_experts: int | None) -> Placement:
    return placement_from_map(check_document(doc, path), path, model, cluster, redundant_experts)


class SglangJson:
    """The :class:`~tuner.engine_files.base.EngineFormat` ``sglang-json``."""

    name = "sglang-json"
    engine = "sglang"
    what = "SGLang --init-expert-location map, JSON"
    suffixes = (".json",)
    needs_counts = False
    needs_torch = False
    render = staticmethod(render)
    read = staticmethod(read)


FORMAT: EngineFormat = SglangJson()

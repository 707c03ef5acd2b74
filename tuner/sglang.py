"""Export a placement for SGLang's ``--init-expert-location FILE.json``.

SGLang's loader (``python/sglang/srt/eplb/expert_location.py``, ``compute_initial_expert_location_metadata``)
reads the JSON and, when it has the key ``physical_to_logical_map``, calls
``ExpertLocationMetadata.init_by_mapping(server_args, model_config, physical_to_logical_map=...)``. The array is
``[num_layers, num_physical_experts]`` where ``num_layers`` is the model's ``num_hidden_layers`` (every hidden
layer, dense ones included: ``ModelConfigForExpertLocation.num_layers = config.num_hidden_layers``) and
``num_physical_experts = num_logical_experts + ep_num_redundant_experts``, divisible by the EP size; physical
expert p lives on GPU ``p // num_local_physical_experts``. SGLang inverts it into ``logical_to_all_physical_map``,
so every logical expert must appear in every row.

Rows we do not plan take SGLang's own trivial mapping (``init_trivial``: ``arange(P) % E``): dense layers (their
row is never read) and MoE layers the trace did not record. SGLang splits a replicated expert's tokens over its
replicas evenly (static dispatch: a replica on the sender's GPU if any, else a fair random pick), so a plan
made with ``split="continuous"`` loses its uneven shares there; plan with ``split="even"`` for a faithful export.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import numpy as np

from moesim.fileio import atomic_write_text
from moesim.placement import Placement

if TYPE_CHECKING:
    from moesim.specs import ModelSpec


def physical_to_logical_map(placement: Placement, model: ModelSpec) -> tuple[np.ndarray, list[int]]:
    """``[num_layers, P]`` int map for all hidden layers, and the MoE layers filled with the trivial mapping.

    Placement rows are matched to model layers by ``placement.meta["layers"]`` (model layer indices); without
    it the rows must be one per MoE layer in ``model.moe_layers`` order.
    """
    from moesim.errors import PlacementError

    if placement.num_experts != model.num_experts:
        raise PlacementError(f"sglang export: num_experts: placement has {placement.num_experts}, "
                             f"{model.slug} has {model.num_experts}")
    P = placement.num_physical
    trivial = np.arange(P, dtype=np.int64) % model.num_experts
    out = np.tile(trivial, (int(model.num_layers), 1))
    layers = placement.meta.get("layers")
    if layers is None or len(layers) != placement.num_layers:
        if placement.num_layers != model.num_moe_layers:
            raise PlacementError(f"sglang export: layers: {placement.num_layers} rows without layer indices, "
                                 f"{model.slug} has {model.num_moe_layers} MoE layers")
        layers = list(model.moe_layers)
    moe = {int(x) for x in model.moe_layers}
    for row, layer in enumerate(layers):
        layer = int(layer)
        if layer not in moe:
            raise PlacementError(f"sglang export: layers[{row}]: layer {layer} is not an MoE layer of {model.slug}")
        out[layer] = placement.phy2log[row]
    filled = sorted(moe - {int(x) for x in layers})
    return out, filled


def save_sglang(placement: Placement, model: ModelSpec, path: str | os.PathLike) -> list[int]:
    """Write ``{"physical_to_logical_map": [[...], ...]}`` atomically; returns the MoE layers filled trivially."""
    mapping, filled = physical_to_logical_map(placement, model)
    atomic_write_text(path, json.dumps({"physical_to_logical_map": mapping.tolist()}, separators=(",", ":")))
    return filled

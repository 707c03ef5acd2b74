"""Export a placement for SGLang's ``--init-expert-location FILE.json``.

Checked against sgl-project/sglang ``python/sglang/srt/eplb/expert_location.py``
(``compute_initial_expert_location_metadata``, ``ExpertLocationMetadata.init_by_mapping``):

* The argument is read as a file only when it ends in ``.json`` (or ``.pt``, read with
  ``torch.load(weights_only=True)``); any other string is parsed as JSON text itself, so the file name must end in
  ``.json``.
* A document with the key ``physical_to_logical_map`` is passed whole as keyword arguments to
  ``init_by_mapping``, so it must hold that key and no other. (A document with ``logical_count`` [L, E] or
  [S, L, E] instead goes to ``init_by_eplb``, SGLang's own EPLB: ``tuner.engine_files.sglang_count`` writes it.)
* The map is ``[num_layers, num_physical_experts]`` integers. ``num_layers`` is the model's
  ``num_hidden_layers``, dense layers included (``get_model_config_for_expert_location`` in
  ``python/sglang/srt/models/deepseek_v2.py``: ``num_layers=config.num_hidden_layers``), because SGLang indexes
  it by the model layer id. ``num_physical_experts = num_logical_experts + --ep-num-redundant-experts`` and must
  divide by the EP size; physical expert p lives on EP rank ``p // (num_physical_experts / ep_size)``. SGLang
  inverts the map into ``logical_to_all_physical_map``, so every logical expert must appear in every row.
* Only models whose SGLang class defines ``get_model_config_for_expert_location`` use it (DeepSeek-V2/V3 do;
  ``python/sglang/srt/models/olmoe.py`` does not: SGLang keeps no expert locations for OLMoE and
  cannot use the file).

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
        raise PlacementError(
            f"sglang export: num_experts: placement has {placement.num_experts}, {model.slug} has {model.num_experts}"
        )
    P = placement.num_physical
    trivial = np.arange(P, dtype=np.int64) % model.num_experts
    out = np.tile(trivial, (int(model.num_layers), 1))
    layers = placement.meta.get("layers")
    if layers is None or len(layers) != placement.num_layers:
        if placement.num_layers != model.num_moe_layers:
            raise PlacementError(
                f"sglang export: layers: {placement.num_layers} rows without layer indices, "
                f"{model.slug} has {model.num_moe_layers} MoE layers"
            )
        layers = list(model.moe_layers)
    moe = {int(x) for x in model.moe_layers}
    for row, layer in enumerate(layers):
        layer = int(layer)
        if layer not in moe:
            raise PlacementError(f"sglang export: layers[{row}]: layer {layer} is not an MoE layer of {model.slug}")
        out[layer] = placement.phy2log[row]
    filled = sorted(moe - {int(x) for x in layers})
    return out, filled


def check_sglang_path(path: str | os.PathLike) -> None:
    """PlacementError unless ``path`` ends in ``.json``: SGLang parses any other ``--init-expert-location`` value as
    JSON text, not as a file name."""
    from moesim.errors import PlacementError

    if not str(path).endswith(".json"):
        raise PlacementError(
            f"{path}: --sglang: SGLang reads --init-expert-location as a file only when the name ends "
            "in .json (otherwise it parses the argument itself as JSON); use a .json name"
        )


# Whether SGLang's model class keeps expert locations (defines ``get_model_config_for_expert_location``), for
# the models whose SGLang source we read: python/sglang/srt/models/deepseek_v2.py (DeepSeek-V2/V3: yes),
# python/sglang/srt/models/olmoe.py (no). Other models: not checked.
EXPERT_LOCATION_SUPPORT = {"deepseek-v2-lite": True, "deepseek-v3": True, "olmoe-1b-7b": False}


def support_note(model: ModelSpec) -> str | None:
    """A warning when SGLang is known not to use an expert-location file for ``model`` (else None)."""
    if EXPERT_LOCATION_SUPPORT.get(model.slug) is False:
        return (
            f"SGLang keeps no expert locations for {model.slug} (its model class has no "
            "get_model_config_for_expert_location), so it ignores this file; the format is what "
            "DeepSeek-V2/V3 servers load"
        )
    return None


def save_sglang(placement: Placement, model: ModelSpec, path: str | os.PathLike) -> list[int]:
    """Write ``{"physical_to_logical_map": [[...], ...]}`` (that key only: SGLang passes the document's keys to
    ``init_by_mapping`` as keyword arguments) atomically; returns the MoE layers filled trivially."""
    check_sglang_path(path)
    mapping, filled = physical_to_logical_map(placement, model)
    atomic_write_text(path, json.dumps({"physical_to_logical_map": mapping.tolist()}, separators=(",", ":")))
    return filled

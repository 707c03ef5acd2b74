"""TensorRT-LLM's offline EPLB config (``moe_config.load_balancer: FILE.yaml``): written and read back.

Checked against NVIDIA/TensorRT-LLM source (main branch, as of the 1.2 releases; the file is a plain YAML that
TensorRT-LLM cannot load on a CPU-only machine, so the tests hold a cited copy of its rules):

* ``examples/ep_load_balancer/generate_eplb_config.py`` writes ``{num_slots, initial_global_assignments,
  layer_updates_per_iter}`` with ``yaml.dump`` and flow-style lists; ``initial_global_assignments`` maps each MoE
  layer's *model* layer index (DeepSeek-R1: 3..60, ``examples/ep_load_balancer/README.md``) to the expert id of
  every slot, rank after rank (``rank_expert_ids`` concatenated), ``num_slots`` long.
* ``tensorrt_llm/llmapi/llm_args.py``: ``validate_load_balancer`` reads the file with ``yaml.safe_load`` and
  builds ``MoeLoadBalancerConfig(**doc)``, a ``StrictBaseModel`` (unknown keys rejected) with ``num_slots:
  Optional[int]``, ``initial_global_assignments: Optional[Dict[int, List[int]]]``, ``layer_updates_per_iter: int``;
  ``get_layer_initial_global_assignments`` raises ``KeyError`` for a layer not in the dict and ``ValueError`` when
  a list is not ``num_slots`` long.
* ``tensorrt_llm/_torch/modules/fused_moe/interface.py`` (``MoE.__init__`` with a load balancer): ``num_slots %
  ep_size == 0``, ``num_slots >= num_experts``, ``set(assignments) == set(range(num_experts))``; rank r holds
  slots ``[r * num_slots / ep_size, (r + 1) * num_slots / ep_size)``. The C++ ``setInitialWeightAssignments``
  (``cpp/tensorrt_llm/runtime/moeLoadBalancer/moeLoadBalancer.cpp``) checks ``0 <= expertId < expertCount``.
  TensorRT-LLM does not reject two replicas of one expert on one rank, so neither does this format.

``layer_updates_per_iter: 0`` is static routing (no online rebalancing), the placement as planned. MoE layers
the placement does not cover take TensorRT-LLM's own default row, ``(rank * E // ep_size + i) % E`` for local slot
``i`` of each rank (``MoE.__init__``), because every MoE layer must be in the file.
"""

from __future__ import annotations

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
    placement_layers,
)

if TYPE_CHECKING:
    from moesim.placement import Placement
    from moesim.specs import ClusterSpec, ModelSpec
    from tuner.engine_files.base import RenderRequest

KEYS = ("num_slots", "initial_global_assignments", "layer_updates_per_iter")
FIELD = "initial_global_assignments"


def default_row(num_experts: int, ep_size: int, num_slots: int) -> np.ndarray:
    """TensorRT-LLM's assignment when the config has none: local slot i of rank r holds
    ``(r * E // ep_size + i) % E``."""
    local = num_slots // ep_size
    return np.array(
        [(r * num_experts // ep_size + i) % num_experts for r in range(ep_size) for i in range(local)], dtype=np.int64
    )


def assignments(placement: Placement, model: ModelSpec, cluster: ClusterSpec, origin: str) -> dict[int, list[int]]:
    """``{model layer: [expert of every slot]}`` for every MoE layer of ``model``."""
    check_for_cluster(placement, model, cluster, origin)
    layers = placement_layers(placement, model, origin)
    moe = [int(x) for x in model.moe_layers]
    P = placement.num_physical
    rows = {layer: default_row(model.num_experts, placement.num_gpus, P) for layer in moe}
    for row, layer in enumerate(layers):
        if int(layer) not in rows:
            raise PlacementError(f"{origin}: layers[{row}]: layer {layer} is not an MoE layer of {model.slug}")
        rows[int(layer)] = np.asarray(placement.phy2log[row], dtype=np.int64)
    check_map(
        np.stack([rows[layer] for layer in moe]),
        model.num_experts,
        placement.num_gpus,
        origin,
        FIELD,
        row_names=moe,
    )
    return {layer: rows[layer].tolist() for layer in moe}


def render(request: RenderRequest) -> bytes:
    placement, model, cluster, origin = request.placement, request.model, request.cluster, request.origin
    import yaml

    doc = {
        "num_slots": int(placement.num_physical),
        FIELD: assignments(placement, model, cluster, origin),
        "layer_updates_per_iter": 0,
    }

    class Dumper(yaml.SafeDumper):  # one layer per line, as generate_eplb_config.py writes
        pass

    Dumper.add_representer(
        list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
    )
    return yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=float("inf")).encode()


def _int(value: Any, path: str, field: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PlacementError(f"{path}: {field}: expected an integer >= {minimum}, got {value!r}")
    return value


def read(path: Path, doc: Any, model: ModelSpec, cluster: ClusterSpec, redundant_experts: int | None) -> Placement:
    src = str(path)
    if not isinstance(doc, dict):
        raise PlacementError(f"{src}: (top level): expected a mapping")
    extra = sorted(str(k) for k in doc if k not in KEYS)
    if extra:  # StrictBaseModel
        raise PlacementError(
            f"{src}: {extra[0]}: unknown field (TensorRT-LLM's MoeLoadBalancerConfig has {', '.join(KEYS)})"
        )
    num_slots = _int(doc.get("num_slots"), src, "num_slots", 1)
    _int(doc.get("layer_updates_per_iter", 0), src, "layer_updates_per_iter", 0)
    table = doc.get(FIELD)
    if not isinstance(table, dict) or not table:
        raise PlacementError(f"{src}: {FIELD}: expected a mapping of layer index to expert ids")
    by_layer: dict[int, Any] = {}
    for key, row in table.items():
        # pydantic's Dict[int, ...] takes "3" as 3 too
        layer = int(key) if isinstance(key, str) and key.strip().isdigit() else key
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise PlacementError(f"{src}: {FIELD}: layer key {key!r} is not an integer")
        if not isinstance(row, list) or len(row) != num_slots:
            size = len(row) if isinstance(row, list) else type(row).__name__
            raise PlacementError(f"{src}: {FIELD}[{layer}]: {size} entries, num_slots is {num_slots}")
        by_layer[layer] = row
    moe = [int(x) for x in model.moe_layers]
    missing = [layer for layer in moe if layer not in by_layer]
    if missing:
        raise PlacementError(
            f"{src}: {FIELD}: no row for MoE layer {missing[0]} of {model.slug} ({len(missing)} "
            "missing; TensorRT-LLM raises KeyError)"
        )
    stray = sorted(set(by_layer) - set(moe))
    if stray:
        raise PlacementError(f"{src}: {FIELD}[{stray[0]}]: layer {stray[0]} is not an MoE layer of {model.slug}")
    check_slot_count(src, "num_slots", num_slots, model, cluster, redundant_experts)
    rows = as_int_map([by_layer[layer] for layer in moe], src, FIELD)
    check_map(rows, model.num_experts, cluster.num_gpus, src, FIELD, row_names=moe)
    return moe_rows_placement(rows, model, cluster, src, "trtllm")


def looks_like(doc: Any) -> bool:
    """A mapping with TensorRT-LLM's keys."""
    return isinstance(doc, dict) and FIELD in doc and "num_slots" in doc


class TrtllmYaml:
    """The :class:`~tuner.engine_files.base.EngineFormat` ``trtllm``."""

    name = "trtllm"
    engine = "trtllm"
    what = "TensorRT-LLM EPLB config YAML (moe_config.load_balancer)"
    suffixes = (".yaml", ".yml")
    needs_counts = False
    needs_torch = False
    render = staticmethod(render)
    read = staticmethod(read)


FORMAT: EngineFormat = TrtllmYaml()

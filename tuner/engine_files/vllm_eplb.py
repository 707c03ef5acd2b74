"""vLLM's EPLB settings, the rules both vLLM formats share: the ``--eplb-config`` JSON (:mod:`.vllm_json`) and the
flag line that starts vLLM with them (:mod:`.vllm_flags`).

vLLM 0.33 reads no placement file: its initial layout is ``--expert-placement-strategy linear|round_robin`` and
``--enable-eplb`` then rearranges the experts online from the loads it records. So for vLLM moesim writes the
EPLB settings a plan recommends (above all ``num_redundant_experts``, the plan's extra slots), not the placement,
and a vLLM file cannot be read back as ``--current``.

Checked against vLLM 0.33.0 (wheel source):

* ``vllm/config/parallel.py`` ``EPLBConfig`` fields (:data:`FIELDS`): ``window_size`` (int > 0) and
  ``step_interval`` (int > 0), defaults in :mod:`tuner.engine_facts` (:func:`defaults`),
  ``num_redundant_experts`` (int >= 0, default 0),
  ``log_balancedness`` (bool), ``log_balancedness_interval`` (int > 0), ``use_async`` (bool, default True),
  ``policy`` (``"default"``), ``communicator`` (``torch_nccl | torch_gloo | torch_xccl | nixl | pynccl`` or null),
  ``enable_migration_batching`` (bool); its validator rejects ``use_async`` with a policy other than
  ``default`` and with the ``torch_nccl``/``pynccl`` communicators. ``ParallelConfig`` rejects EPLB without
  ``enable_expert_parallel``.
* ``vllm/engine/arg_utils.py``: ``--eplb-config`` is parsed with ``json.loads`` (config dataclass fields) and a
  dict becomes ``EPLBConfig(**dict)``; ``--enable-eplb`` is ``ParallelConfig.enable_eplb``.
* ``vllm/model_executor/layers/fused_moe/layer.py`` (``FusedMoEFactory``): with EPLB, ``(num_experts +
  num_redundant_experts) % ep_size == 0`` ("EPLB currently only supports even distribution of experts").
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from moesim.errors import PlacementError
from tuner.engine_facts import engine_facts
from tuner.engine_files.base import check_for_cluster

if TYPE_CHECKING:
    from moesim.placement import Placement
    from moesim.specs import ClusterSpec, ModelSpec

COMMUNICATORS = ("torch_nccl", "torch_gloo", "torch_xccl", "nixl", "pynccl")

# EPLBConfig's fields in vLLM 0.33: (kind, lower bound for ints: minimum allowed)
FIELDS: dict[str, tuple[str, int | None]] = {
    "window_size": ("int", 1),
    "step_interval": ("int", 1),
    "num_redundant_experts": ("int", 0),
    "log_balancedness": ("bool", None),
    "log_balancedness_interval": ("int", 1),
    "use_async": ("bool", None),
    "policy": ("policy", None),
    "communicator": ("communicator", None),
    "enable_migration_batching": ("bool", None),
}


def defaults() -> dict[str, int]:
    """vLLM's own ``window_size`` and ``step_interval`` (``profiles/reference/engine_rebalance.yaml``), written even
    when the caller does not set them, so the file says which window and interval vLLM will use."""
    facts = engine_facts()["vllm"]
    assert facts.window_steps is not None  # the YAML gives vLLM's window
    return {"window_size": facts.window_steps, "step_interval": facts.interval_steps}


def check_settings(settings: Mapping[str, Any], origin: str) -> None:
    """``PlacementError`` for what ``EPLBConfig`` would reject: an unknown field, a wrong type or bound, or a
    combination its validator refuses."""
    for key, value in settings.items():
        if key not in FIELDS:
            raise PlacementError(
                f"{origin}: eplb_config.{key}: unknown field (vLLM 0.33 EPLBConfig has {', '.join(FIELDS)})"
            )
        kind, low = FIELDS[key]
        ok = {
            "int": isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= (low or 0),
            "bool": isinstance(value, bool),
            "policy": value == "default",
            "communicator": value is None or value in COMMUNICATORS,
        }[kind]
        if not ok:
            want = {
                "int": f"an integer >= {low}",
                "bool": "true or false",
                "policy": "'default'",
                "communicator": f"null or one of {', '.join(COMMUNICATORS)}",
            }[kind]
            raise PlacementError(f"{origin}: eplb_config.{key}: expected {want}, got {value!r}")
    use_async = settings.get("use_async", True)
    if use_async and settings.get("communicator") in ("torch_nccl", "pynccl"):
        raise PlacementError(
            f"{origin}: eplb_config.communicator: {settings['communicator']} is incompatible with "
            "async EPLB (use_async); vLLM rejects it"
        )


def settings_for(
    placement: Placement, model: ModelSpec, cluster: ClusterSpec, eplb: Mapping[str, Any] | None, origin: str
) -> dict[str, Any]:
    """The ``--eplb-config`` dict: vLLM's window and interval (the caller's, else vLLM's defaults), the
    placement's redundant slots, then any other field the caller gives."""
    check_for_cluster(placement, model, cluster, origin)
    redundant = placement.num_physical - placement.num_experts
    given = dict(eplb or {})
    if "num_redundant_experts" in given and given["num_redundant_experts"] != redundant:
        raise PlacementError(
            f"{origin}: eplb_config.num_redundant_experts: {given['num_redundant_experts']!r}, "
            f"but the placement has {redundant} redundant slots"
        )
    out: dict[str, Any] = {k: given.pop(k, v) for k, v in defaults().items()}
    given.pop("num_redundant_experts", None)
    out["num_redundant_experts"] = int(redundant)
    out.update(given)
    check_settings(out, origin)
    if placement.num_physical % cluster.num_gpus:
        raise PlacementError(
            f"{origin}: eplb_config.num_redundant_experts: {placement.num_experts} + {redundant} "
            f"experts do not divide over {cluster.num_gpus} EP ranks"
        )
    return {k: (int(v) if isinstance(v, np.integer) else v) for k, v in out.items()}


def flag_line(settings: Mapping[str, Any]) -> str:
    """``--enable-expert-parallel --enable-eplb --eplb-config '{...}'`` (a shell word for the JSON)."""
    text = json.dumps(dict(settings), separators=(",", ":"))
    return f"--enable-expert-parallel --enable-eplb --eplb-config {shlex.quote(text)}"


def looks_like(doc: Any) -> bool:
    """A JSON mapping whose keys are all ``EPLBConfig`` fields."""
    return isinstance(doc, dict) and bool(doc) and all(str(k) in FIELDS for k in doc)


NO_PLACEMENT = (
    "vLLM has no placement file (vLLM 0.33 places experts by --expert-placement-strategy and "
    "rebalances online with --enable-eplb); give the placement moesim wrote with -o"
)


def no_placement(
    path: Path, doc: Any, model: ModelSpec, cluster: ClusterSpec, redundant_experts: int | None
) -> Placement:
    """The ``read`` of both vLLM formats: one ``PlacementError`` line, :data:`NO_PLACEMENT`."""
    raise PlacementError(f"{path}: format: {NO_PLACEMENT}")

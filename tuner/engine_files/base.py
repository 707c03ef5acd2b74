"""The engine-file family's shared shape: the protocol every format follows, and the map rules they share.

Dimension legend: L rows (model layers for SGLang's map, MoE layers for a :class:`Placement`), E logical
experts, G GPUs (the EP size), S slots per GPU, P = G * S physical experts (slots); slot p lives on EP rank
``p // S`` in every engine here (SGLang, TensorRT-LLM and vLLM all cut the physical experts into equal
contiguous ranges, one per rank).

A format follows the :class:`EngineFormat` protocol: a ``render`` that turns a placement into the file's bytes
(every rule of the engine checked first, so a rejected placement writes nothing) and a ``read`` that turns the
parsed file back into a :class:`Placement` of the model's MoE layers with even shares (the engine rule,
:mod:`moesim.engine_dispatch`, re-scores it later), or says the file holds none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from moesim.errors import PlacementError

if TYPE_CHECKING:
    from moesim.placement import Placement
    from moesim.specs import ClusterSpec, ModelSpec


@dataclass(frozen=True)
class RenderRequest:
    """What a format renders: ``placement`` for ``model`` on ``cluster``; ``counts [L, E]`` expert loads aligned
    with the placement's rows (formats that carry loads); ``eplb`` engine settings the caller recommends (vLLM's
    ``EPLBConfig`` fields); ``origin`` the name every error line starts with."""

    placement: Placement
    model: ModelSpec
    cluster: ClusterSpec
    counts: np.ndarray | None = None
    eplb: Mapping[str, Any] | None = None
    origin: str = "engine file"


class EngineFormat(Protocol):
    """One engine file format (one module each, an instance in :data:`tuner.engine_files.REGISTRY`): its registry
    name, the engine, one line for help texts, the file names the engine reads (``()``: any name), whether it
    carries expert loads (``needs_counts``) or needs torch (``needs_torch``), and how to write and read it."""

    name: str
    engine: str
    what: str
    suffixes: tuple[str, ...]
    needs_counts: bool
    needs_torch: bool

    def render(self, request: RenderRequest) -> bytes:
        """The file's bytes for ``request.placement`` (``PlacementError`` ``ORIGIN: FIELD: ...`` for what the
        engine would reject)."""
        ...

    def read(
        self, path: Path, doc: Any, model: ModelSpec, cluster: ClusterSpec, redundant_experts: int | None
    ) -> Placement:
        """The placement a parsed file ``doc`` deploys: one row per MoE layer of ``model`` (``meta["layers"]``),
        even shares; ``PlacementError`` ``PATH: FIELD: ...`` for a file the engine would reject, one made for
        another model, GPU count or slot count (``redundant_experts`` None: taken from the file), or a format
        that holds no placement (vLLM's settings)."""
        ...


def check_path(fmt: EngineFormat, path: str | Path, option: str = "--export") -> None:
    """``PlacementError`` unless ``path`` has a name the engine of ``fmt`` reads (before any work)."""
    if fmt.suffixes and not str(path).endswith(fmt.suffixes):
        raise PlacementError(f"{path}: {option}: {fmt.name} must be named *{' or *'.join(fmt.suffixes)} ({fmt.what})")


# ------------------------------------------------------------------------------------------------ map rules
def as_int_map(obj: Any, origin: str, field: str) -> np.ndarray:
    """``obj`` (nested lists or a tensor) as an int64 ``[rows, P]`` array; a ragged row is a different
    physical-expert count in one layer, which SGLang rejects (``ExpertLocationMetadata`` is one
    ``[num_layers, num_physical_experts]`` tensor, ``python/sglang/srt/eplb/expert_location.py`` 0.5.14)."""
    if hasattr(obj, "numpy"):  # a torch tensor, read without importing torch here
        obj = obj.detach().cpu().numpy() if hasattr(obj, "detach") else obj.numpy()
    if isinstance(obj, list) and obj and all(isinstance(r, list) for r in obj):
        widths = [len(r) for r in obj]
        for i, w in enumerate(widths):
            if w != widths[0]:
                raise PlacementError(
                    f"{origin}: {field}[{i}]: {w} physical experts, layer 0 has {widths[0]}: every layer needs "
                    "the same number (num_experts + redundant experts)"
                )
    arr = np.asarray(obj)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise PlacementError(f"{origin}: {field}: expected [layers, physical experts] integers, got shape {arr.shape}")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or _integral(arr)):
        raise PlacementError(f"{origin}: {field}: expected integer expert ids, got {arr.dtype}")
    return arr.astype(np.int64)


def _integral(arr: np.ndarray) -> bool:
    return np.issubdtype(arr.dtype, np.floating) and bool(np.all(np.isfinite(arr))) and bool(np.all(arr == arr.round()))


def check_map(
    mapping: np.ndarray,
    num_experts: int,
    ep_size: int,
    origin: str,
    field: str,
    *,
    row_names: Sequence[int] | None = None,
) -> None:
    """The rules a ``[rows, P]`` physical-to-logical map must keep in every engine here: ``P`` divisible by the
    EP size (SGLang ``_init_common``: ``num_physical_experts % ep_size == 0``; TensorRT-LLM ``MoE.__init__``:
    ``num_slots % ep_size``; vLLM ``FusedMoEFactory``), ids in ``[0, E)``, every logical expert in every row
    (SGLang inverts the map into ``logical_to_all_physical_map``; TensorRT-LLM asserts
    ``set(assignments) == set(range(num_experts))``). ``row_names``: the layer index each row is reported as.

    Two replicas of one expert on one rank are not refused: no engine here refuses them. SGLang's own EPLB
    (``eplb_algorithms/deepseek.py``, 0.5.14) packs replicas onto GPUs by load alone and makes such maps, and its
    weight updater handles them (``expert_location_updater.py``, "case 3: free-rider"); TensorRT-LLM's
    ``setInitialWeightAssignments`` counts replicas per expert without a per-rank check."""
    rows, P = mapping.shape
    names = list(row_names) if row_names is not None else list(range(rows))
    if P < num_experts:
        raise PlacementError(f"{origin}: {field}: {P} physical experts for {num_experts} logical ones")
    if P % ep_size:
        raise PlacementError(f"{origin}: {field}: {P} physical experts do not divide over {ep_size} EP ranks (GPUs)")
    if mapping.size and (mapping.min() < 0 or mapping.max() >= num_experts):
        bad = np.argwhere((mapping < 0) | (mapping >= num_experts))[0]
        raise PlacementError(
            f"{origin}: {field}[{names[bad[0]]}]: expert id {int(mapping[bad[0], bad[1]])} at slot {int(bad[1])} "
            f"is outside [0, {num_experts})"
        )
    off = np.arange(rows)[:, None] * num_experts
    present = np.bincount((off + mapping).ravel(), minlength=rows * num_experts).reshape(rows, num_experts)
    missing = np.argwhere(present == 0)
    if missing.size:
        r, e = (int(v) for v in missing[0])
        raise PlacementError(
            f"{origin}: {field}[{names[r]}]: logical expert {e} has no physical expert ({len(missing)} "
            "(layer, expert) pairs missing)"
        )


def check_slot_count(
    path: str, field: str, P: int, model: ModelSpec, cluster: ClusterSpec, redundant_experts: int | None
) -> int:
    """The slots per GPU of a file's ``P`` physical experts on ``cluster``; ``PlacementError`` when ``P`` is not
    ``E + redundant_experts`` or does not divide over the cluster's GPUs."""
    E, G = int(model.num_experts), int(cluster.num_gpus)
    if redundant_experts is not None and P != E + redundant_experts:
        raise PlacementError(
            f"{path}: {field}: {P} physical experts, but this plan has {E} experts + {redundant_experts} redundant "
            f"= {E + redundant_experts} (--redundant-experts)"
        )
    if P % G:
        raise PlacementError(f"{path}: {field}: {P} physical experts do not divide over {cluster.slug}'s {G} GPUs")
    return P // G


def placement_layers(placement: Placement, model: ModelSpec, origin: str) -> list[int]:
    """The model layer of each placement row: ``meta["layers"]``, else one row per MoE layer in order;
    ``PlacementError`` when the rows are neither."""
    layers = placement.meta.get("layers")
    if layers is not None and len(layers) == placement.num_layers:
        return [int(x) for x in layers]
    if placement.num_layers != model.num_moe_layers:
        raise PlacementError(
            f"{origin}: layers: {placement.num_layers} rows without layer indices, {model.slug} has "
            f"{model.num_moe_layers} MoE layers"
        )
    return [int(x) for x in model.moe_layers]


def layer_rows(have: Sequence[int], want: Sequence[int]) -> tuple[list[int], list[int]]:
    """``(rows, missing)``: the index in ``have`` (the model layer of each placement row) of every layer of
    ``want`` it holds, in ``want``'s order, and the layers of ``want`` it does not hold."""
    index = {int(layer): row for row, layer in enumerate(have)}
    rows = [index[int(layer)] for layer in want if int(layer) in index]
    missing = [int(layer) for layer in want if int(layer) not in index]
    return rows, missing


def moe_rows_placement(rows: np.ndarray, model: ModelSpec, cluster: ClusterSpec, path: str, method: str) -> Placement:
    """A :class:`Placement` of ``rows [num_moe_layers, P]`` (one per MoE layer, in ``model.moe_layers`` order)
    with even shares, as SGLang, TensorRT-LLM and vLLM split a replicated expert's tokens."""
    from moesim.placement import Placement, even_shares

    G = int(cluster.num_gpus)
    p = Placement(
        num_gpus=G,
        slots_per_gpu=rows.shape[1] // G,
        num_experts=int(model.num_experts),
        phy2log=rows,
        shares=even_shares(rows, model.num_experts),
        meta={"model": model.slug, "cluster": cluster.slug, "method": method, "layers": list(model.moe_layers)},
    )
    p.validate(path)
    return p


def check_for_cluster(placement: Placement, model: ModelSpec, cluster: ClusterSpec, origin: str) -> None:
    """``PlacementError`` unless ``placement`` was made for ``model``'s experts and ``cluster``'s GPU count."""
    from moesim.placement import check_model

    check_model(placement, model, origin)
    if placement.num_gpus != cluster.num_gpus:
        raise PlacementError(
            f"{origin}: num_gpus: the placement is for {placement.num_gpus} GPUs, {cluster.slug} has {cluster.num_gpus}"
        )

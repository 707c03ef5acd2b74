"""Expert placement: which GPU slot holds which logical expert, per MoE layer, and the replica shares.

Dimension legend: L MoE layers (in the order of ``ModelSpec.moe_layers``, or the trace's recorded layers),
E logical experts, G GPUs, S slots per GPU, P = G*S physical experts (slots). Physical slot p lives on GPU
p // S (SGLang's convention).

- ``phy2log``: int64 ``[L, P]``, the logical expert held in each slot.
- ``shares``: float64 ``[L, P]``, the fraction of its logical expert's tokens that slot serves; for each layer
  and logical expert the shares of its replicas sum to 1. A placement without replicas has all shares 1.
- ``meta``: free-form header. Keys written by the tuner: ``model``, ``cluster``, ``trace``, ``method``,
  ``layers`` (model layer index of each row), ``predicted`` (figures the planner predicted).

This module owns the dataclass, its validation, the contiguous default (Megatron's) and the YAML file format.
Solvers and the other baselines live in ``tuner``.

Native YAML (``format: moesim-placement/1``)::

    format: moesim-placement/1
    model: olmoe-1b-7b            # header: model, cluster, trace, method, predicted figures
    cluster: dgx-h100
    trace: profiles/traces/olmoe_c4.npz
    method: ilp
    num_experts: 64
    num_gpus: 8
    slots_per_gpu: 9
    predicted: {max_mean_load: 1.02, cross_gpu_bytes: 1.2e9, ...}
    layers:
      - layer: 7                  # model layer index
        gpus:                     # one entry per GPU, S slots each: [logical expert, share]
          - [[41, 0.5], [3, 1.0], ...]
          - ...

Memory: a placement fits when the expert weights one GPU holds, ``S * num_moe_layers * expert_bytes``, are at
most ``(1 - reserve) * hbm`` with ``reserve`` = :data:`DEFAULT_MEMORY_RESERVE` of HBM kept for attention and
dense weights, the KV cache, activations and communication buffers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

import numpy as np

from moesim.errors import PlacementError, SpecError
from moesim.fileio import atomic_write_text, read_yaml
from moesim.schema import Fields
from moesim.specs.limits import MAX_EXPERTS, MAX_GPUS, MAX_LAYERS

if TYPE_CHECKING:
    from moesim.specs import GPUSpec, ModelSpec

FORMAT = "moesim-placement/1"

# Fraction of HBM not available to routed-expert weights. An assumption, not a measured or published figure:
# a quarter of HBM kept for attention and dense weights, KV cache, activations and communication buffers;
# pass ``reserve_fraction`` to check a deployment that budgets memory differently.
DEFAULT_MEMORY_RESERVE = 0.25

_SHARE_ATOL = 1e-6


class PlacementMethod(str, Enum):
    """The placement family's names, one per method (implementations: ``tuner.placers``, one file each).

    ``eplb`` is EPLB as SGLang calls it (hierarchical when the expert groups divide over the nodes, else
    global); ``eplb-hierarchical`` and ``eplb-global`` force a policy; ``node-spread`` puts every replica of
    an expert on a different node (for nearest-replica dispatch). Spellings with ``_`` are accepted.
    """

    CONTIGUOUS = "contiguous"
    ROUND_ROBIN = "round-robin"
    EPLB = "eplb"
    EPLB_HIERARCHICAL = "eplb-hierarchical"
    EPLB_GLOBAL = "eplb-global"
    NODE_SPREAD = "node-spread"
    ILP = "ilp"

    @classmethod
    def parse(cls, name: object, origin: str = "placement", field_name: str = "method") -> PlacementMethod:
        """The method called ``name`` (``round_robin`` = ``round-robin``); ``PlacementError`` naming
        ``origin`` and ``field_name`` otherwise."""
        if isinstance(name, cls):
            return name
        key = str(name).strip().lower().replace("_", "-") if isinstance(name, str) else None
        for m in cls:
            if m.value == key:
                return m
        raise PlacementError(
            f"{origin}: {field_name}: unknown placement method {name!r}; expected one of "
            f"{', '.join(m.value for m in cls)}"
        )


@dataclass(frozen=True)
class Placement:
    """Which slot holds which expert, per layer, and the replica shares (see the module docstring).

    ``__post_init__`` enforces the structure (:func:`check_structure`): no instance has impossible shapes, ids
    or shares. :meth:`validate` adds the coverage rule (every expert's shares sum to 1)."""

    num_gpus: int
    slots_per_gpu: int
    num_experts: int
    phy2log: np.ndarray  # [L, P] int64
    shares: np.ndarray  # [L, P] float64
    meta: dict[str, Any] = field(default_factory=dict)  # model, cluster, trace, method, predicted figures

    def __post_init__(self) -> None:
        check_structure(self.num_gpus, self.slots_per_gpu, self.num_experts, self.phy2log, self.shares)

    @property
    def num_layers(self) -> int:
        return int(self.phy2log.shape[0])

    @property
    def num_physical(self) -> int:
        return self.num_gpus * self.slots_per_gpu

    def gpu_of_slot(self) -> np.ndarray:
        """[P] GPU index of each physical slot."""
        return np.arange(self.num_physical) // self.slots_per_gpu

    def expert_gpu_share(self) -> np.ndarray:
        """[L, E, G] fraction of each logical expert's tokens processed on each GPU."""
        out = np.zeros((self.num_layers, self.num_experts, self.num_gpus))
        gpu = self.gpu_of_slot()
        for layer in range(self.num_layers):
            np.add.at(out[layer], (self.phy2log[layer], gpu), self.shares[layer])
        return out

    def replica_counts(self) -> np.ndarray:
        """[L, E] number of slots holding each logical expert."""
        return _per_expert_sum(self.phy2log, self.num_experts)

    def gpu_loads(self, counts: np.ndarray) -> np.ndarray:
        """[L, G] token-expert assignments each GPU processes, from per-expert ``counts [L, E]``."""
        counts = np.asarray(counts, dtype=np.float64)
        rows = np.arange(self.num_layers)[:, None]
        slot_tokens = counts[rows, self.phy2log] * self.shares  # [L, P]
        return slot_tokens.reshape(self.num_layers, self.num_gpus, self.slots_per_gpu).sum(axis=-1)

    def with_meta(self, **meta: Any) -> Placement:
        """A copy with ``meta`` updated."""
        merged = dict(self.meta)
        merged.update(meta)
        return Placement(self.num_gpus, self.slots_per_gpu, self.num_experts, self.phy2log, self.shares, merged)

    def validate(self, origin: str = "placement") -> None:
        """``PlacementError`` naming ``origin`` unless the structure holds (:func:`check_structure`, which
        ``__post_init__`` already enforces) and every expert of every layer has replicas whose shares sum to 1.

        This is the one placement rule: loading (:func:`placement_from_dict`) and the simulator
        (``moesim.simulate.check_placement``) both call it."""
        check_structure(self.num_gpus, self.slots_per_gpu, self.num_experts, self.phy2log, self.shares, origin)
        total = _per_expert_sum(np.asarray(self.phy2log), self.num_experts, np.asarray(self.shares, dtype=np.float64))
        bad = np.argwhere(~np.isclose(total, 1.0, atol=_SHARE_ATOL))
        if bad.size:
            missing = np.argwhere(total <= 0)  # a missing expert first: it is the cause of a neighbour's excess
            row, expert = (int(v) for v in (missing if missing.size else bad)[0])
            if total[row, expert] <= 0:
                what = f"has no replica, so expert {expert} is missing"
            else:
                what = f"has shares summing to {total[row, expert]:.6g}"
            raise PlacementError(
                f"{origin}: layers[{row}]: expert {expert} {what} ({len(bad)} (layer, expert) pairs wrong)"
            )


def check_structure(
    num_gpus: int, slots_per_gpu: int, num_experts: int, phy2log: Any, shares: Any, origin: str = "placement"
) -> None:
    """``PlacementError`` naming ``origin`` unless: the counts are >= 1, ``phy2log`` and ``shares`` are
    ``[L, G*S]``, there are at least ``E`` slots, ids are in ``[0, E)`` and shares are finite in ``[0, 1]``."""
    for name, value in (("num_gpus", num_gpus), ("slots_per_gpu", slots_per_gpu), ("num_experts", num_experts)):
        if int(value) < 1:
            raise PlacementError(f"{origin}: {name}: must be >= 1, got {value}")
    num_physical = int(num_gpus) * int(slots_per_gpu)
    phy2log = np.asarray(phy2log)
    shares = np.asarray(shares, dtype=np.float64)
    if phy2log.ndim != 2 or phy2log.shape[1] != num_physical or shares.shape != phy2log.shape:
        raise PlacementError(
            f"{origin}: phy2log: shape {phy2log.shape} (shares {shares.shape}), expected "
            f"[layers, {num_gpus} GPUs x {slots_per_gpu} slots]"
        )
    if num_physical < num_experts:
        raise PlacementError(
            f"{origin}: slots_per_gpu: {num_physical} slots for {num_experts} experts; every expert needs a slot"
        )
    if phy2log.size and (phy2log.min() < 0 or phy2log.max() >= num_experts):
        raise PlacementError(
            f"{origin}: phy2log: expert ids must be in [0, {num_experts}), got "
            f"{int(phy2log.min())}..{int(phy2log.max())}"
        )
    # a 0 share is a replica that holds weights but gets no tokens (spare slots of an uneven split, or a
    # replica an engine's dispatch rule never picks); the per-expert sum of validate() still needs a positive one
    if not np.all(np.isfinite(shares)) or np.any(shares < 0) or np.any(shares > 1 + _SHARE_ATOL):
        raise PlacementError(f"{origin}: shares: every share must be in [0, 1]")


def _per_expert_sum(phy2log: np.ndarray, num_experts: int, weights: np.ndarray | None = None) -> np.ndarray:
    """[L, E] sum over each layer's slots of ``weights [L, P]`` (slot count without weights), by logical expert."""
    phy2log = np.asarray(phy2log, dtype=np.int64)
    num_layers = phy2log.shape[0]
    layer_off = np.arange(num_layers)[:, None] * num_experts
    total = np.bincount(
        (layer_off + phy2log).ravel(),
        weights=None if weights is None else np.ravel(weights),
        minlength=num_layers * num_experts,
    )
    return total.reshape(num_layers, num_experts)


def slots_per_gpu(num_experts: int, redundant_experts: int, num_gpus: int, origin: str = "placement") -> int:
    """``S = (E + R) / G``; ``PlacementError`` if it does not divide or a slot count is impossible."""
    if redundant_experts < 0:
        raise PlacementError(f"{origin}: redundant_experts: must be >= 0, got {redundant_experts}")
    total = num_experts + redundant_experts
    if num_gpus < 1:
        raise PlacementError(f"{origin}: num_gpus: must be >= 1, got {num_gpus}")
    if total % num_gpus:
        raise PlacementError(
            f"{origin}: redundant_experts: {num_experts} experts + {redundant_experts} redundant "
            f"= {total} slots do not divide evenly over {num_gpus} GPUs"
        )
    if total < num_gpus:
        raise PlacementError(f"{origin}: num_gpus: {num_gpus} GPUs but only {total} expert slots")
    return total // num_gpus


def expert_weight_bytes_per_gpu(slots: int, num_moe_layers: int, expert_bytes: float) -> float:
    """Routed-expert weights one GPU holds (bytes): ``S * L_moe * expert_bytes``."""
    return float(slots) * float(num_moe_layers) * float(expert_bytes)


def check_memory(
    placement: Placement,
    model: ModelSpec,
    gpu: GPUSpec,
    dtype_bytes: float = 2.0,
    reserve_fraction: float = DEFAULT_MEMORY_RESERVE,
    origin: str = "placement",
) -> None:
    """``PlacementError`` if one GPU's expert weights exceed ``(1 - reserve_fraction) * hbm``
    (:func:`check_slots_memory` with the placement's slots per GPU)."""
    check_slots_memory(placement.slots_per_gpu, model, gpu, dtype_bytes, reserve_fraction, origin)


def check_slots_memory(
    slots: int,
    model: ModelSpec,
    gpu: GPUSpec,
    dtype_bytes: float = 2.0,
    reserve_fraction: float = DEFAULT_MEMORY_RESERVE,
    origin: str = "placement",
) -> None:
    """``PlacementError`` if ``slots`` expert slots per GPU exceed ``(1 - reserve_fraction) * hbm``.

    Every MoE layer of the deployed model has ``slots`` slots per GPU, whatever layers a placement's rows
    cover, so the weights are ``S * model.num_moe_layers * model.expert_weight_bytes(dtype_bytes)``.
    """
    need = expert_weight_bytes_per_gpu(slots, model.num_moe_layers, model.expert_weight_bytes(dtype_bytes))
    have = (1.0 - reserve_fraction) * float(gpu.hbm_gb) * 1e9
    if need > have:
        raise PlacementError(
            f"{origin}: GPU memory: {slots} expert slots x {model.num_moe_layers} MoE layers x "
            f"{model.expert_weight_bytes(dtype_bytes) / 1e6:.1f} MB = {need / 1e9:.1f} GB of expert weights per GPU, "
            f"more than {have / 1e9:.1f} GB ({100 * (1 - reserve_fraction):.0f}% of {gpu.slug}'s {gpu.hbm_gb:g} GB)"
        )


def contiguous(num_experts: int, num_gpus: int, num_layers: int) -> Placement:
    """The contiguous default for any ``E`` and ``G``: Megatron's layout (GPU g holds experts
    ``[g*E/G, (g+1)*E/G)``, also vLLM's ``linear``) where G divides E, extended to the shapes it does not
    divide:

    - more GPUs than experts: one slot per GPU, GPU g holds expert ``floor(g*E/G)``, so each expert sits on
      ``G/E`` consecutive GPUs (``floor`` or ``ceil`` of it when G % E != 0) with equal shares (expert-parallel
      replicas: the only way 256 experts fill 1024 GPUs);
    - ``E % G != 0`` with ``E > G``: ``S = ceil(E/G)`` slots per GPU, experts in order, the last GPUs' spare
      slots hold share-0 copies (weights but no tokens).

    ``meta["method"]`` is ``contiguous``, ``contiguous-replicated`` or ``contiguous-uneven``.
    """
    E, G = int(num_experts), int(num_gpus)
    if E < 1 or G < 1 or num_layers < 1:
        raise PlacementError(f"contiguous placement: experts, GPUs and layers must be >= 1, got {E}, {G}, {num_layers}")
    if E % G == 0:
        row = np.arange(E, dtype=np.int64)
        share = np.ones(E)
        slots, method = E // G, "contiguous"
    elif G > E:
        row = (np.arange(G, dtype=np.int64) * E) // G
        share = 1.0 / np.bincount(row, minlength=E)[row]
        slots, method = 1, "contiguous-replicated"
    else:
        slots = -(-E // G)
        row = np.arange(slots * G, dtype=np.int64) % E
        share = (np.arange(slots * G) < E).astype(np.float64)
        method = "contiguous-uneven"
    return Placement(
        num_gpus=G,
        slots_per_gpu=slots,
        num_experts=E,
        phy2log=np.tile(row, (num_layers, 1)),
        shares=np.tile(share, (num_layers, 1)),
        meta={"method": method},
    )


def even_shares(phy2log: np.ndarray, num_experts: int) -> np.ndarray:
    """[L, P] shares that split each expert's tokens evenly over its replicas (what SGLang and vLLM do)."""
    phy2log = np.asarray(phy2log, dtype=np.int64)
    cnt = _per_expert_sum(phy2log, num_experts)
    return 1.0 / np.take_along_axis(cnt, phy2log, axis=1)


# --------------------------------------------------------------------------------------------- file format
def _jsonable(obj: Any) -> Any:
    """Plain Python types for YAML (numpy scalars and arrays become floats, ints and lists)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return obj


def placement_to_dict(p: Placement) -> dict[str, Any]:
    """The native document (see the module docstring)."""
    p.validate()
    meta = dict(p.meta)
    layers = meta.pop("layers", None)
    if layers is None or len(layers) != p.num_layers:
        layers = list(range(p.num_layers))
    doc: dict[str, Any] = {"format": FORMAT}
    for key in ("model", "cluster", "trace", "method"):
        doc[key] = meta.pop(key, "")
    doc.update({"num_experts": int(p.num_experts), "num_gpus": int(p.num_gpus), "slots_per_gpu": int(p.slots_per_gpu)})
    doc["predicted"] = _jsonable(meta.pop("predicted", {}))
    if meta:
        doc["extra"] = _jsonable(meta)
    rows = []
    for row in range(p.num_layers):
        ids = p.phy2log[row].reshape(p.num_gpus, p.slots_per_gpu)
        sh = p.shares[row].reshape(p.num_gpus, p.slots_per_gpu)
        gpus = [[[int(e), round(float(s), 9)] for e, s in zip(ids[g], sh[g])] for g in range(p.num_gpus)]
        rows.append({"layer": int(layers[row]), "gpus": gpus})
    doc["layers"] = rows
    return doc


def _flow_dumper() -> Any:
    """A YAML dumper that writes slot lists in flow style (one GPU per line) and the rest in block style."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def repr_list(dumper: Any, data: list) -> Any:
        flow = (
            bool(data)
            and all(not isinstance(x, dict) for x in data)
            and not (data and isinstance(data[0], list) and data[0] and isinstance(data[0][0], list))
        )
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)

    Dumper.add_representer(list, repr_list)
    return Dumper


def save_placement(p: Placement, path: str | os.PathLike) -> None:
    """Write the native YAML atomically (temp file + rename): a failure leaves nothing half-written."""
    import yaml

    text = yaml.dump(placement_to_dict(p), Dumper=_flow_dumper(), sort_keys=False, width=100000)
    atomic_write_text(path, text)


def placement_from_dict(doc: Any, origin: str = "placement") -> Placement:
    """Parse and validate a native document; ``PlacementError`` names ``origin`` and the bad field."""
    if not isinstance(doc, dict):
        raise PlacementError(f"{origin}: not a placement document (expected a mapping)")
    if doc.get("format") != FORMAT:
        raise PlacementError(f"{origin}: format: expected {FORMAT!r}, got {doc.get('format')!r}")
    f = Fields(origin, doc)
    try:
        num_experts = f.int_("num_experts", minimum=1, maximum=MAX_EXPERTS)
        num_gpus = f.int_("num_gpus", minimum=1, maximum=MAX_GPUS)
        slots = f.int_("slots_per_gpu", minimum=1, maximum=MAX_EXPERTS)
        rows = f.raw("layers")
    except SpecError as exc:
        raise PlacementError(str(exc)) from None
    if isinstance(rows, list) and len(rows) > MAX_LAYERS:
        raise PlacementError(f"{origin}: layers: {len(rows)} rows, more than moesim's limit of {MAX_LAYERS}")
    if not isinstance(rows, list) or not rows:
        raise PlacementError(f"{origin}: layers: expected a non-empty list")
    layer_ids = []
    for i, row in enumerate(rows):  # the shape first: the arrays below are sized by the header's numbers
        where = f"{origin}: layers[{i}]"
        if not isinstance(row, dict) or "gpus" not in row:
            raise PlacementError(f"{where}: expected a mapping with 'layer' and 'gpus'")
        layer = row.get("layer", i)
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < MAX_LAYERS:
            raise PlacementError(f"{where}: layer: expected a layer index in [0, {MAX_LAYERS}), got {layer!r}")
        layer_ids.append(layer)
        gpus = row["gpus"]
        if not isinstance(gpus, list) or len(gpus) != num_gpus:
            raise PlacementError(
                f"{where}: gpus: expected {num_gpus} GPUs, got "
                f"{len(gpus) if isinstance(gpus, list) else type(gpus).__name__}"
            )
        for g, gslots in enumerate(gpus):
            if not isinstance(gslots, list) or len(gslots) != slots:
                raise PlacementError(
                    f"{where}: gpus[{g}]: expected {slots} slots (every GPU the same), got "
                    f"{len(gslots) if isinstance(gslots, list) else gslots!r}"
                )
    # every slot is an entry of the file now, so these are as large as the file, not as the header says
    # (num_gpus: 131072 with slots_per_gpu: 8192 asked for 8 GiB per layer before a single slot was read)
    phy2log = np.zeros((len(rows), num_gpus * slots), dtype=np.int64)
    shares = np.zeros((len(rows), num_gpus * slots), dtype=np.float64)
    for i, row in enumerate(rows):
        where = f"{origin}: layers[{i}]"
        for g, gslots in enumerate(row["gpus"]):
            for s, slot in enumerate(gslots):
                expert, share = (slot[0], slot[1]) if isinstance(slot, list) and len(slot) == 2 else (slot, 1.0)
                ok_expert = isinstance(expert, int) and not isinstance(expert, bool) and 0 <= expert < num_experts
                ok_share = (
                    isinstance(share, (int, float)) and not isinstance(share, bool) and 0 <= share <= 1 + _SHARE_ATOL
                )
                if not (ok_expert and ok_share):
                    raise PlacementError(
                        f"{where}: gpus[{g}][{s}]: expected [expert in 0..{num_experts - 1}, share in [0, 1]], "
                        f"got {slot!r}"
                    )
                phy2log[i, g * slots + s] = expert
                shares[i, g * slots + s] = float(share)
    meta: dict[str, Any] = {k: doc.get(k, "") for k in ("model", "cluster", "trace", "method")}
    meta["predicted"] = doc.get("predicted") or {}
    meta["layers"] = layer_ids
    if isinstance(doc.get("extra"), dict):
        for k, v in doc["extra"].items():
            meta.setdefault(k, v)
    check_structure(num_gpus, slots, num_experts, phy2log, shares, origin)  # before __post_init__ names no file
    p = Placement(
        num_gpus=num_gpus, slots_per_gpu=slots, num_experts=num_experts, phy2log=phy2log, shares=shares, meta=meta
    )
    p.validate(origin)
    return p


def load_placement(path: str | os.PathLike) -> Placement:
    """Read a native placement YAML (``PlacementError`` naming the file on any problem)."""
    origin = str(path)
    try:
        doc = read_yaml(path, origin, mapping=False)
    except SpecError as exc:
        raise PlacementError(str(exc)) from None
    return placement_from_dict(doc, origin)


def check_model(p: Placement, model: ModelSpec, origin: str = "placement") -> None:
    """``PlacementError`` if the placement was made for another model (name or expert count)."""
    if p.num_experts != model.num_experts:
        raise PlacementError(f"{origin}: num_experts: {p.num_experts}, but {model.slug} has {model.num_experts}")
    named = p.meta.get("model")
    if named and named != model.slug:
        raise PlacementError(f"{origin}: model: made for {named!r}, not {model.slug!r}")

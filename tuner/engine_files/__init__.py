"""Engine files: a placement written for every serving engine, and any of them read back as ``--current``.

One format per module, each following the :class:`tuner.engine_files.base.EngineFormat` protocol, all in
:data:`REGISTRY` (the choices of every ``--export`` help and check, :data:`FORMATS`):

* ``sglang-json`` (:mod:`.sglang_json`), ``sglang-pt`` (:mod:`.sglang_pt`): SGLang's
  ``--init-expert-location`` ``physical_to_logical_map``, as JSON or a torch ``.pt``;
* ``sglang-count`` (:mod:`.sglang_count`): the ``{"logical_count": ...}`` JSON SGLang runs its own EPLB on;
* ``trtllm`` (:mod:`.trtllm_yaml`): TensorRT-LLM's offline EPLB YAML;
* ``vllm`` (:mod:`.vllm_json`), ``vllm-flags`` (:mod:`.vllm_flags`): vLLM's ``--eplb-config`` JSON and its flag
  line (vLLM has no placement file; the rules both share: :mod:`.vllm_eplb`).

API (``moesim plan --export`` / ``--current``, and the rebalancer):

* :func:`write_engine_file` ``(fmt, path, placement, model, cluster, *, counts=None, eplb=None)``: check, then
  write atomically; :func:`render_engine_file` gives the bytes without writing (a command renders every output
  before it writes any).
* :func:`read_current` ``(path, model, cluster, redundant_experts=None) -> Placement``: the format detected from
  the content (and the ``.pt`` suffix): moesim's YAML, SGLang ``.json``/``.pt`` map or ``logical_count``,
  TensorRT-LLM YAML; a vLLM file or anything else is one ``PlacementError`` line.
* :func:`parse_export` ``("sglang-pt=plan.pt") -> ("sglang-pt", Path("plan.pt"))`` and
  :func:`check_export_paths`, both before any work.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from moesim.errors import PlacementError
from tuner.engine_files import sglang_count, sglang_json, sglang_pt, trtllm_yaml, vllm_eplb, vllm_flags, vllm_json
from tuner.engine_files.base import EngineFormat, RenderRequest, check_path, layer_rows

if TYPE_CHECKING:
    from moesim.placement import Placement
    from moesim.specs import ClusterSpec, ModelSpec

__all__ = [
    "FORMATS",
    "REGISTRY",
    "EngineFormat",
    "RenderRequest",
    "check_export_paths",
    "get_format",
    "parse_export",
    "read_current",
    "render_engine_file",
    "rows_for_layers",
    "write_engine_file",
]

REGISTRY: dict[str, EngineFormat] = {
    f.name: f
    for f in (
        sglang_json.FORMAT,
        sglang_pt.FORMAT,
        sglang_count.FORMAT,
        trtllm_yaml.FORMAT,
        vllm_json.FORMAT,
        vllm_flags.FORMAT,
    )
}
FORMATS: tuple[str, ...] = tuple(REGISTRY)


def get_format(name: str, origin: str = "engine file", option: str = "--export") -> EngineFormat:
    """The format called ``name``; ``PlacementError`` ``ORIGIN: OPTION: ...`` listing the known ones."""
    if name not in REGISTRY:
        raise PlacementError(f"{origin}: {option}: unknown format {name!r}; expected one of {', '.join(FORMATS)}")
    return REGISTRY[name]


def render_engine_file(
    fmt: str,
    placement: Placement,
    model: ModelSpec,
    cluster: ClusterSpec,
    *,
    counts: np.ndarray | None = None,
    eplb: Mapping[str, Any] | None = None,
    origin: str | None = None,
) -> bytes:
    """The bytes of ``placement`` in format ``fmt`` after every rule of its engine is checked (``PlacementError``
    ``ORIGIN: FIELD: ...``). ``counts [L, E]``: loads aligned with the placement's rows (``sglang-count`` needs
    them); ``eplb``: vLLM ``EPLBConfig`` settings the caller recommends (``window_size``, ``step_interval``, ...)."""
    f = get_format(fmt, origin or fmt)
    if f.needs_counts and counts is None:
        raise PlacementError(f"{origin or fmt}: --export: {fmt} carries expert loads; counts are needed")
    return f.render(RenderRequest(placement, model, cluster, counts=counts, eplb=eplb, origin=origin or fmt))


def write_engine_file(
    fmt: str,
    path: str | os.PathLike,
    placement: Placement,
    model: ModelSpec,
    cluster: ClusterSpec,
    *,
    counts: np.ndarray | None = None,
    eplb: Mapping[str, Any] | None = None,
) -> None:
    """Write ``placement`` to ``path`` in format ``fmt`` (:data:`FORMATS`) atomically; nothing is written when the
    name, the placement or the settings are refused."""
    from moesim.fileio import atomic_write_bytes

    check_path(get_format(fmt, str(path)), path)
    data = render_engine_file(fmt, placement, model, cluster, counts=counts, eplb=eplb, origin=str(path))
    atomic_write_bytes(path, data)


def parse_export(spec: str) -> tuple[str, Path]:
    """``"FORMAT=PATH"`` as ``(FORMAT, Path(PATH))``; ``PlacementError`` for a missing ``=``, an empty side or an
    unknown format."""
    name, sep, path = str(spec).partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
        raise PlacementError(f"{spec}: --export: expected FORMAT=PATH with FORMAT one of {', '.join(FORMATS)}")
    get_format(name, path)
    return name, Path(path)


def check_export_paths(exports: Sequence[tuple[str, Path]]) -> None:
    """Before any work: each export's name is one its engine reads, its folder exists, and torch is here for a
    ``.pt``. (Collisions with inputs and other outputs: :func:`moesim.fileio.check_outputs`.)"""
    for name, path in exports:
        f = get_format(name, str(path))
        check_path(f, path)
        if not Path(path).parent.exists():
            raise PlacementError(f"{path}: --export: directory {Path(path).parent} does not exist")
        if f.needs_torch:
            sglang_pt.require_torch(str(path))


# ---------------------------------------------------------------------------------------------- reading back
def _sniff(path: Path) -> tuple[str, Any]:
    """``(format, parsed document)`` of the file at ``path``: ``moesim``, a registry name, or ``unknown``."""
    from moesim.fileio import parse_json, read_text, read_yaml

    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except FileNotFoundError:
        raise PlacementError(f"{path}: file: no such file") from None
    except IsADirectoryError:
        raise PlacementError(f"{path}: file: is a directory, not a file") from None
    except OSError as exc:
        raise PlacementError(f"{path}: file: cannot read ({exc.strerror or exc})") from None
    if str(path).endswith(".pt") or head.startswith(b"PK\x03\x04"):  # torch.save writes a zip archive
        doc = sglang_pt.load(path)
        if isinstance(doc, dict) and sglang_json.KEY in doc:
            return "sglang-pt", doc
        if isinstance(doc, dict) and sglang_count.KEY in doc:
            return "sglang-count", doc
        return "unknown", doc
    try:
        text = read_text(path, str(path))
    except Exception as exc:  # noqa: BLE001 - SpecError of the reader, re-raised as a placement error
        raise PlacementError(str(exc)) from None
    stripped = text.lstrip()
    if stripped.startswith("--"):
        return "vllm-flags", None
    if stripped.startswith("{"):
        try:
            doc = parse_json(text, str(path))
        except Exception:  # noqa: BLE001 - not JSON: maybe YAML flow style, tried below
            doc = None
        if isinstance(doc, dict):
            if sglang_json.KEY in doc:
                return "sglang-json", doc
            if sglang_count.KEY in doc:
                return "sglang-count", doc
            if vllm_eplb.looks_like(doc):
                return "vllm", doc
    try:
        doc = read_yaml(path, str(path), mapping=False)
    except Exception as exc:  # noqa: BLE001
        raise PlacementError(str(exc)) from None
    if isinstance(doc, dict):
        from moesim.placement import FORMAT

        if doc.get("format") == FORMAT:
            return "moesim", doc
        if trtllm_yaml.looks_like(doc):
            return "trtllm", doc
    return "unknown", doc


def _check_native(cur: Placement, path: Path, model: ModelSpec, cluster: ClusterSpec, redundant: int | None) -> None:
    """moesim's own file: made for this model, and this plan's GPUs and slots."""
    from moesim.placement import check_model, slots_per_gpu

    check_model(cur, model, str(path))
    G = int(cluster.num_gpus)
    if redundant is None:
        S = cur.slots_per_gpu
    else:
        S = slots_per_gpu(model.num_experts, redundant, G, origin="plan")
    if (cur.num_gpus, cur.slots_per_gpu) != (G, S):
        raise PlacementError(
            f"{path}: num_gpus/slots_per_gpu: {cur.num_gpus} GPUs x {cur.slots_per_gpu} slots, but this plan "
            f"has {G} x {S} (--cluster, --redundant-experts)"
        )


def read_current(
    path: str | os.PathLike, model: ModelSpec, cluster: ClusterSpec, redundant_experts: int | None = None
) -> Placement:
    """The placement now deployed, from any file moesim reads: its own YAML, SGLang's ``.json``/``.pt`` map or
    ``logical_count`` JSON (SGLang's EPLB rerun, :mod:`.sglang_count`), TensorRT-LLM's EPLB YAML. Rows: the
    model's MoE layers (``meta["layers"]``; moesim's YAML keeps its own rows), shares even for engine files.
    ``PlacementError`` ``PATH: FIELD: ...`` for a file made for another model, GPU count or slot count
    (``redundant_experts`` None: any slot count the file has), a vLLM file (no placement in it) or a file in no
    known format."""
    p = Path(path)
    fmt, doc = _sniff(p)
    if fmt == "moesim":
        from moesim.placement import placement_from_dict

        cur = placement_from_dict(doc, str(p))
        _check_native(cur, p, model, cluster, redundant_experts)
        return cur
    if fmt == "unknown":
        raise PlacementError(
            f"{p}: format: not a placement moesim reads (moesim YAML, SGLang .json/.pt physical_to_logical_map or "
            "logical_count, TensorRT-LLM EPLB YAML)"
        )
    cur = REGISTRY[fmt].read(p, doc, model, cluster, redundant_experts)  # vLLM's formats: no placement
    _check_native(cur, p, model, cluster, redundant_experts)
    return cur


def rows_for_layers(placement: Placement, layers: Sequence[int], origin: str = "--current") -> Placement:
    """The rows of ``placement`` for model layers ``layers`` (by ``meta["layers"]``), so an engine file's every-
    MoE-layer rows line up with a trace's recorded layers. A placement without layer indices, or with exactly
    these, is returned as it is; ``PlacementError`` when a layer is not in it."""
    from moesim.placement import Placement

    have = placement.meta.get("layers")
    want = [int(x) for x in layers]
    if have is None or len(have) != placement.num_layers or [int(x) for x in have] == want:
        return placement
    rows, missing = layer_rows(have, want)
    if missing:
        raise PlacementError(
            f"{origin}: layers: no row for layer {missing[0]} ({len(missing)} of the trace's "
            f"{len(want)} layers missing)"
        )
    meta = dict(placement.meta)
    meta["layers"] = want
    return Placement(
        placement.num_gpus,
        placement.slots_per_gpu,
        placement.num_experts,
        placement.phy2log[rows],
        placement.shares[rows],
        meta,
    )

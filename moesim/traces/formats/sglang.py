"""Formats ``pt`` and ``pt-dir``: the SGLang expert-distribution recorder's ``torch.save`` dumps.

Dimension legend: T tokens, L layers, E logical experts, P physical expert slots, k top-k, S steps.

SGLang expert-distribution recorder (``python/sglang/srt/eplb/expert_distribution.py``; older releases
``python/sglang/srt/managers/expert_distribution.py``), ``torch.save`` files written to
``SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR`` (default ``/tmp``):
``stat`` mode, rank 0 only, ``expert_distribution_recorder_{time}.pt``: ``{"rank", "logical_count": int32
[S, L_model, E] (per forward pass, all-reduced over ranks; zero rows for unused buffer slots),
"average_utilization_rate_over_window": float | None}`` (the last key only in newer releases). Counts are
summed over steps; there is no top-k in the file, so the model or ``top_k`` is needed. Under plain tensor
parallelism every rank routes every token, so the all-reduce multiplies ``num_tokens`` by the TP size (the
distribution is unaffected).
``per_token``/``per_pass`` mode, one file per rank, ``expert_distribution_recorder_{time}_{rank}.pt``:
``{"records": [{"forward_pass_id", "rank", "gatherer_key", "topk_ids_of_layer": int32 [L_model, T_pass, 8]
(physical ids, -1 unused), "global_physical_count": [L_model, P], input_ids, positions, ...}],
"last_physical_to_logical_map": [L_model, P]}`` (``per_pass`` records carry ``global_physical_count`` only).
A directory of these files is read as one trace: stat dumps are summed; per-rank records are mapped to
logical ids with their own file's map and concatenated, every pass kept: two data-parallel ranks may route
identical tokens in one pass. With ``dedup_ranks`` a pass recorded identically by several ranks (tensor
parallelism: every rank routes the same tokens) is counted once; either way the distribution is the same.
SGLang records every hidden layer; dense layers stay empty and are dropped.

``.pt`` files are read only with ``torch.load(weights_only=True)`` (no code execution); torch is optional.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from moesim.specs.limits import MAX_EXPERTS
from moesim.traces.formats.base import Probe, ReadRequest, from_ids, model_layers
from moesim.traces.trace import RoutingTrace, first_line, int_array, trace_error

if TYPE_CHECKING:
    from moesim.specs import ModelSpec


def _torch_load(path: Path) -> Any:
    try:
        import torch
    except ImportError:
        raise trace_error(str(path), "format", "SGLang .pt dumps need torch: pip install 'moesim[kernels]'") from None
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 213": the load fails or succeeds anyway
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad or unsafe file
        raise trace_error(str(path), "pt", f"torch.load(weights_only=True) failed: {first_line(e)}") from None


def _np(x: Any, origin: str, fld: str) -> np.ndarray:
    """A tensor or nested list as a numpy array; ``TraceError`` for a ragged list, one nested beyond numpy's 64
    dimensions, or a tensor numpy cannot hold (bfloat16)."""
    try:
        return x.numpy() if hasattr(x, "numpy") else np.asarray(x)
    except (TypeError, ValueError, RuntimeError) as e:
        raise trace_error(origin, fld, f"not a rectangular numeric array ({first_line(e)})") from None


def _sglang_kind(obj: Any, origin: str) -> str:
    if isinstance(obj, dict) and "logical_count" in obj:
        return "stat"
    if isinstance(obj, dict) and "records" in obj:
        return "records"
    keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__  # keys may be of mixed types
    raise trace_error(
        origin,
        "format",
        f"torch file holds {keys}; looked for SGLang 'logical_count' (stat mode) or 'records' (per_token mode)",
    )


def _load_sglang(
    paths: list[Path], model: ModelSpec | None, top_k: int | None, origin: str, dedup_ranks: bool = False
) -> RoutingTrace:
    """One SGLang dump, or a directory of them (all of one mode)."""
    objs = [_torch_load(p) for p in paths]
    kinds = {_sglang_kind(o, str(p)) for p, o in zip(paths, objs, strict=True)}
    if len(kinds) > 1:
        raise trace_error(
            origin,
            "format",
            "mixes SGLang stat dumps ('logical_count') with per_token/per_pass dumps ('records'); read them separately",
        )
    if kinds == {"stat"}:
        arrays = [_np(o["logical_count"], origin, "logical_count") for o in objs]
        arrays = [a[None] if a.ndim == 2 else a for a in arrays]
        shapes = {a.shape[1:] for a in arrays}
        if len(shapes) != 1:
            raise trace_error(
                origin, "logical_count", f"dumps disagree on [num_layers, num_logical_experts]: {sorted(shapes)}"
            )
        lc = np.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0]
        return from_sglang_stat(lc, model, top_k, origin)
    return from_sglang_records(objs if len(objs) > 1 else objs[0], model, origin, top_k=top_k, dedup_ranks=dedup_ranks)


def from_sglang_stat(
    logical_count: np.ndarray, model: ModelSpec | None, top_k: int | None, origin: str
) -> RoutingTrace:
    """``logical_count`` [S, L_model, E] -> counts summed over steps.

    Layers with no assignments (dense layers, which SGLang keeps as zero rows) are dropped when no model says
    which are MoE. num_tokens = counts[l].sum() / top_k, so top_k must come from the model or the caller.
    """
    lc = np.asarray(logical_count)
    if lc.ndim == 2:
        lc = lc[None]
    if lc.ndim != 3 or not np.issubdtype(lc.dtype, np.integer):
        raise trace_error(
            origin, "logical_count", f"expected int [steps, num_layers, num_logical_experts], got {lc.dtype} {lc.shape}"
        )
    counts = lc.sum(axis=0, dtype=np.int64)  # [L_model, E]
    k = top_k if top_k is not None else (int(model.top_k) if model is not None else None)
    if k is None:
        raise trace_error(origin, "top_k", "SGLang stat dumps do not record top-k: pass the model (--model SLUG)")
    if model is not None:
        layers, keep = model_layers(counts.shape[0], model, origin)
        if keep is not None:
            counts = counts[keep]
    else:
        nz = np.nonzero(counts.sum(axis=1) > 0)[0]
        layers, counts = tuple(int(x) for x in nz), counts[nz]
    if counts.shape[0] == 0:
        raise trace_error(origin, "logical_count", "no layer recorded any assignment")
    sums = counts.sum(axis=1)
    if sums.min() != sums.max() or sums[0] % k:
        raise trace_error(
            origin,
            "logical_count",
            f"per-layer totals {sorted(set(sums.tolist()))[:4]} are not one multiple of top_k={k}",
        )
    return RoutingTrace(
        model=model.slug if model is not None else "",
        num_experts=counts.shape[1],
        top_k=k,
        origin=origin,
        layers=layers,
        counts=counts,
        num_tokens=int(sums[0]) // k,
        transitions=None,
        topk_ids=None,
        source=f"SGLang expert distribution (stat) {origin}",
    )


def _to_logical(phys: np.ndarray, p2l: np.ndarray | None, origin: str) -> np.ndarray:
    """Physical slot ids [L_model, ...] (-1 unused) -> logical ids by ``p2l`` [L_model, P]; unchanged without a map
    (SGLang's trivial mapping without redundant experts is the identity)."""
    if p2l is None:
        return phys
    if p2l.shape[0] != phys.shape[0]:
        raise trace_error(
            origin, "last_physical_to_logical_map", f"{p2l.shape[0]} layers, records have {phys.shape[0]}"
        )
    if phys.size and phys.max() >= p2l.shape[1]:
        raise trace_error(origin, "topk_ids_of_layer", f"physical id {int(phys.max())} >= {p2l.shape[1]} slots")
    valid = phys >= 0
    flat = np.where(valid, phys, 0).reshape(phys.shape[0], -1)
    mapped = np.take_along_axis(p2l, flat, axis=1).reshape(phys.shape)
    return np.where(valid, mapped, -1)


def _record_part(
    r: dict[str, Any], p2l: np.ndarray | None, model: ModelSpec | None, origin: str
) -> tuple[np.ndarray, str]:
    """One record's logical routing: ``("ids", [L_model, T_pass, 8])`` from ``topk_ids_of_layer`` (per_token
    mode) or ``("counts", [L_model, E])`` from ``global_physical_count`` (per_pass mode), mapped by its dump's
    ``p2l`` [L_model, P]."""
    if "topk_ids_of_layer" in r:
        phys = int_array(
            _np(r["topk_ids_of_layer"], origin, "topk_ids_of_layer"), origin, "topk_ids_of_layer", minimum=-1
        )
        if phys.ndim != 3:
            raise trace_error(origin, "topk_ids_of_layer", f"expected [num_layers, num_tokens, k], got {phys.shape}")
        return _to_logical(phys, p2l, origin), "ids"
    if "global_physical_count" not in r:
        raise trace_error(origin, "records", "records carry neither 'topk_ids_of_layer' nor 'global_physical_count'")
    if p2l is None:
        raise trace_error(origin, "last_physical_to_logical_map", "missing (needed to map physical counts)")
    phys = int_array(
        _np(r["global_physical_count"], origin, "global_physical_count"), origin, "global_physical_count", 0, ndim=2
    )
    if phys.shape != p2l.shape:
        raise trace_error(
            origin,
            "global_physical_count",
            f"shape {phys.shape}, but the last_physical_to_logical_map is {p2l.shape}",
        )
    E = int(model.num_experts) if model is not None else int(p2l.max(initial=0)) + 1
    limit, whose = (E, f"{model.slug}'s experts") if model is not None else (MAX_EXPERTS, "moesim's limit")
    if p2l.size and p2l.max() >= limit:
        raise trace_error(
            origin, "last_physical_to_logical_map", f"logical expert {int(p2l.max())}, beyond the {limit} of {whose}"
        )
    part = np.zeros((phys.shape[0], E), dtype=np.int64)
    np.add.at(part, (np.arange(phys.shape[0])[:, None], p2l), phys)
    return part, "counts"


def from_sglang_records(
    obj: dict[str, Any] | list[dict[str, Any]],
    model: ModelSpec | None,
    origin: str,
    top_k: int | None = None,
    dedup_ranks: bool = False,
) -> RoutingTrace:
    """SGLang ``per_token`` dump(s) -> per-token ids (logical), counts and transitions.

    ``topk_ids_of_layer`` [L_model, T_pass, 8] holds physical slot ids (-1 where unused: dense layers, columns
    beyond the model's top-k); each dump's are mapped to logical experts by its own
    ``last_physical_to_logical_map`` and the passes concatenated. Several dumps (one per rank): every pass is
    kept (data-parallel ranks can route identical tokens); with ``dedup_ranks`` a pass whose ``forward_pass_id``
    and logical ids equal one already read (tensor-parallel ranks route the same tokens) is skipped. Records
    without per-token ids (``per_pass`` mode) contribute counts only (``global_physical_count`` [L_model, P],
    deduplicated the same way).
    """
    dumps = obj if isinstance(obj, list) else [obj]
    seen: set[tuple[Any, ...]] = set()
    ids_parts: list[np.ndarray] = []  # logical [L_model, T_pass, 8]
    count_parts: list[np.ndarray] = []  # logical [L_model, E]
    n_records = 0
    for dump in dumps:
        records = dump.get("records") or []
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise trace_error(origin, "records", "expected a list of record mappings")
        n_records += len(records)
        p2l = dump.get("last_physical_to_logical_map")
        if p2l is not None:  # [L_model, P]
            p2l = int_array(
                _np(p2l, origin, "last_physical_to_logical_map"),
                origin,
                "last_physical_to_logical_map",
                minimum=0,
                ndim=2,
            )
        for r in records:
            part, kind = _record_part(r, p2l, model, origin)
            # repr: the ids may be any value in a damaged file, lists included (unhashable)
            key = (kind, repr(r.get("forward_pass_id")), repr(r.get("gatherer_key")), part.shape, part.tobytes())
            if dedup_ranks and key in seen:
                continue
            seen.add(key)
            (ids_parts if kind == "ids" else count_parts).append(part)
    if n_records == 0:
        raise trace_error(origin, "records", "empty")
    if ids_parts and count_parts:
        raise trace_error(origin, "records", "mixes per_token records ('topk_ids_of_layer') with per_pass records")
    if count_parts:
        E = max(p.shape[1] for p in count_parts)
        logical = np.sum([np.pad(p, ((0, 0), (0, E - p.shape[1]))) for p in count_parts], axis=0)
        return from_sglang_stat(logical[None], model, top_k, origin)
    if len({(p.shape[0], p.shape[2]) for p in ids_parts}) != 1:
        raise trace_error(origin, "topk_ids_of_layer", "records disagree on the number of layers or of columns")
    ids = np.concatenate(ids_parts, axis=1)  # [L_model, T, 8]
    used_layer = (ids >= 0).any(axis=(1, 2))
    if model is not None:
        layers, keep = model_layers(ids.shape[0], model, origin)
        if keep is not None:
            ids = ids[keep]
        k = int(model.top_k)
    else:
        keep = np.nonzero(used_layer)[0]
        layers, ids = tuple(int(x) for x in keep), ids[keep]
        used_cols = (ids >= 0).any(axis=(0, 1))
        k = top_k if top_k is not None else int(used_cols.sum())
    if ids.shape[0] == 0 or k == 0:
        raise trace_error(origin, "topk_ids_of_layer", "no layer has any routed token")
    if ids.shape[2] < k:
        raise trace_error(origin, "topk_ids_of_layer", f"{ids.shape[2]} columns but top_k is {k}")
    ids = ids[:, :, :k]
    # tokens not routed in some kept layer (padding) are dropped whole, so every layer sees the same tokens
    full = (ids >= 0).all(axis=(0, 2))
    ids = ids[:, full, :].transpose(1, 0, 2)  # [T, L, k]
    # no int32 cast here: from_ids checks the ids' range first (a cast would wrap 2**32 + 3 to 3)
    return from_ids(ids, model, layers, origin, f"SGLang expert distribution (per_token) {origin}")


@dataclass(frozen=True)
class SGLangDump:
    """A ``torch.save`` file (a zip holding ``data.pkl``, or a legacy pickle), or a directory of them (``dir``)."""

    name: str = "pt"
    descriptions: tuple[str, ...] = ("SGLang stat .pt", "SGLang per_token .pt")
    dir: bool = False

    def matches(self, probe: Probe) -> bool:
        if self.dir:
            return probe.has_pt
        if probe.zip_names is not None:  # torch.save writes a zip whose entries live under "<archive>/data.pkl"
            return any(n.endswith("data.pkl") for n in probe.zip_names)
        # legacy (non-zip) pickle: torch.save(_use_new_zipfile_serialization=False)
        return not probe.is_dir and probe.head[:1] == b"\x80"

    def read(self, path: str | os.PathLike[str], request: ReadRequest) -> RoutingTrace:
        origin = str(path)
        if not self.dir:
            return _load_sglang([Path(path)], request.model, request.top_k, origin, request.dedup_ranks)
        files = sorted(Path(path).glob("*.pt"))
        return _load_sglang(files, request.model, request.top_k, f"{origin} ({len(files)} files)", request.dedup_ranks)


FORMAT = SGLangDump()
DIR_FORMAT = SGLangDump(name="pt-dir", descriptions=("SGLang .pt dumps (directory)",), dir=True)

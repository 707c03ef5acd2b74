"""Read routing traces written by other tools; format detected from the file's content.

Dimension legend: T tokens, L layers, E logical experts, P physical expert slots, k top-k, S steps.

Formats:

* native (``moesim.trace``): ``.npz`` with a ``meta`` entry, or JSON with ``"format": "moesim-trace"``.
* OLMoE routing analysis JSON (allenai/OLMoE ``scripts/routing_output``, converted to JSON; see
  ``profiles/traces/README.md``): ``expert_counts [3][E]`` for model layers ``[0, 7, 15]`` and rank-paired
  ``expert_counts_crosslayer.counts [2][E][E]`` between recorded layers (7 apart, not adjacent).
* SGLang expert-distribution recorder (``python/sglang/srt/eplb/expert_distribution.py``; older releases
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
* vLLM per-request ``routed_experts`` (``CompletionOutput.routed_experts``, a numpy array; saved with
  ``np.save``), ``.npy`` int ``[seq_len, num_layers, top_k]`` of logical ids; a directory of them is
  concatenated along tokens (files in name order). The layer axis is every hidden layer in
  ``vllm/model_executor/layers/fused_moe/routed_experts_capturer.py`` (int32 buffer sized by
  ``num_hidden_layers``, indexed by the model layer id; layers without routing stay 0), MoE layers only (int16)
  in vLLM 0.21's documentation; with the model both are recognised by their length, without it all-zero layers
  are dropped as dense.

``.pt`` files are read only with ``torch.load(weights_only=True)`` (no code execution); torch is optional.
"""

from __future__ import annotations

import itertools
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from moesim.errors import TraceError
from moesim.trace import RoutingTrace, _err, _first_line, int_array, load_native_npz, trace_from_native

if TYPE_CHECKING:
    from moesim.specs import ModelSpec

OLMOE_ATTRIBUTION = ("allenai/OLMoE scripts/routing_output/ (commit 357454f, Apache-2.0, Copyright Allen "
                     "Institute for AI)")
# Hugging Face model ids in the OLMoE analysis JSON -> our model slugs
HF_TO_SLUG = {"allenai/olmoe-1b-7b-0924": "olmoe-1b-7b", "mistralai/mixtral-8x7b-v0.1": "mixtral-8x7b"}
FORMATS = ("native .npz", "native JSON", "OLMoE routing-analysis JSON", "SGLang stat .pt", "SGLang per_token .pt",
           "SGLang .pt dumps (directory)", "vLLM routed_experts .npy (file or directory)")


# ----------------------------------------------------------------------------------------------------------
# detection
# ----------------------------------------------------------------------------------------------------------
def detect_format(path: str | os.PathLike[str]) -> str:
    """Return one of ``npz``, ``json``, ``pt``, ``npy``, ``npy-dir``, ``pt-dir`` from the file's first bytes (not
    its name; a directory by the suffixes of its files)."""
    p = Path(path)
    origin = str(p)
    if p.is_dir():
        has_npy, has_pt = any(p.glob("*.npy")), any(p.glob("*.pt"))
        if has_npy and has_pt:
            raise _err(origin, "format", "directory holds both .npy and .pt files; put vLLM arrays and SGLang dumps "
                       "in separate directories")
        if has_npy:
            return "npy-dir"
        if has_pt:
            return "pt-dir"
        raise _err(origin, "format", "directory holds no .npy or .pt files (expected vLLM routed_experts arrays or "
                   "SGLang expert distribution dumps)")
    if not p.exists():
        raise _err(origin, "file", "does not exist")
    with open(p, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        # a damaged directory: bad magic, a name that is not UTF-8, an offset past the end, a made-up version
        except (zipfile.BadZipFile, UnicodeDecodeError, ValueError, OSError, EOFError, NotImplementedError):
            raise _err(origin, "format", "looks like a zip archive but cannot be opened") from None
        # torch.save writes a zip whose entries live under "<archive>/data.pkl"; np.savez writes "*.npy"
        if any(n.endswith("data.pkl") for n in names):
            return "pt"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        raise _err(origin, "format", f"zip archive that is neither .npz nor a torch.save file (entries {names[:3]})")
    if head.lstrip()[:1] in (b"{", b"["):
        return "json"
    if head[:1] == b"\x80":  # legacy (non-zip) pickle: torch.save(_use_new_zipfile_serialization=False)
        return "pt"
    raise _err(origin, "format", "not recognised; looked for " + ", ".join(FORMATS))


def import_trace(path: str | os.PathLike[str], model: ModelSpec | None = None,
                 top_k: int | None = None, dedup_ranks: bool = False) -> RoutingTrace:
    """Read any supported trace; fill in and check against ``model`` when given (see module docstring).
    ``dedup_ranks``: count a pass that several SGLang ranks recorded identically once."""
    origin = str(path)
    fmt = detect_format(path)
    if fmt == "npz":
        trace = load_native_npz(path)
    elif fmt == "json":
        trace = _load_json(Path(path))
    elif fmt == "pt":
        trace = _load_sglang([Path(path)], model, top_k, origin, dedup_ranks)
    elif fmt == "pt-dir":
        files = sorted(Path(path).glob("*.pt"))
        trace = _load_sglang(files, model, top_k, f"{origin} ({len(files)} files)", dedup_ranks)
    elif fmt == "npy":
        trace = from_routed_experts([_load_npy(Path(path))], model, origin)
    else:
        files = sorted(Path(path).glob("*.npy"))
        trace = from_routed_experts([_load_npy(f) for f in files], model, f"{origin} ({len(files)} files)")
    if model is not None:
        trace.check_model(model, origin)
        if not trace.model:
            trace = trace.with_model(model.slug)
    return trace


# ----------------------------------------------------------------------------------------------------------
# JSON: native or OLMoE analysis
# ----------------------------------------------------------------------------------------------------------
def _load_json(path: Path) -> RoutingTrace:
    from moesim.errors import SpecError
    from moesim.fileio import parse_json, read_text

    origin = str(path)
    try:
        doc = parse_json(read_text(path, origin), origin, "json")
    except SpecError as exc:
        raise TraceError(str(exc)) from None
    if not isinstance(doc, dict):
        raise _err(origin, "json", "top level is not an object; looked for " + ", ".join(FORMATS))
    if doc.get("format") == "moesim-trace":
        return trace_from_native(doc, origin)
    if "expert_counts" in doc and "layers" in doc:
        return from_olmoe_json(doc, origin)
    raise _err(origin, "format", "JSON is neither a moesim trace ('format': 'moesim-trace') nor an OLMoE routing "
               "analysis ('expert_counts', 'layers')")


def from_olmoe_json(doc: dict[str, Any], origin: str) -> RoutingTrace:
    """Convert one OLMoE routing-analysis document (one model, one text domain).

    counts = ``expert_counts`` [3, E] (all top-k choices); transitions = ``expert_counts_crosslayer.counts``
    [2, E, E], rank-paired, between recorded layers 0->7 and 7->15.
    """
    from moesim.schema import Fields
    from moesim.specs import MAX_EXPERTS, MAX_LAYERS

    f = Fields(origin, doc, error=TraceError)
    E = f.int_("num_experts", minimum=1, maximum=MAX_EXPERTS)
    k = f.int_("top_k", minimum=1, maximum=E)
    layers = tuple(int(x) for x in int_array(f.raw("layers"), origin, "layers", 0, MAX_LAYERS - 1, ndim=1))
    counts = int_array(f.raw("expert_counts"), origin, "expert_counts", minimum=0, ndim=2)
    cross = doc.get("expert_counts_crosslayer")
    if cross is not None and not isinstance(cross, dict):
        raise _err(origin, "expert_counts_crosslayer", f"expected a mapping, got {type(cross).__name__}")
    if counts.shape != (len(layers), E):
        raise _err(origin, "expert_counts", f"shape {counts.shape}, expected [{len(layers)}, {E}]")
    sums = counts.sum(axis=1)
    if sums.min() != sums.max() or sums[0] % k:
        raise _err(origin, "expert_counts", f"row sums {sums.tolist()} are not one multiple of top_k={k}")
    transitions = None
    if cross is not None:
        raw_pairs = int_array(cross.get("layer_pairs", []), origin, "expert_counts_crosslayer.layer_pairs", 0)
        pairs = [tuple(int(x) for x in pr) for pr in raw_pairs.reshape(-1, 2)] if raw_pairs.size % 2 == 0 else []
        want = list(itertools.pairwise(layers))
        if pairs != want:
            raise _err(origin, "expert_counts_crosslayer.layer_pairs", f"{pairs}, expected consecutive recorded "
                       f"layers {want}")
        if "counts" not in cross:
            raise _err(origin, "expert_counts_crosslayer.counts", "missing")
        transitions = int_array(cross["counts"], origin, "expert_counts_crosslayer.counts", minimum=0, ndim=3)
    hf = str(doc.get("model", ""))
    slug = HF_TO_SLUG.get(hf.lower(), "")
    domain = doc.get("domain", "")
    source = f"{hf} routing on {domain} text, {OLMOE_ATTRIBUTION}" if hf else origin
    return RoutingTrace(model=slug, num_experts=E, top_k=k, layers=layers, counts=counts, origin=origin,
                        num_tokens=int(sums[0]) // k, transitions=transitions, topk_ids=None, source=source)


# ----------------------------------------------------------------------------------------------------------
# vLLM routed_experts
# ----------------------------------------------------------------------------------------------------------
def _load_npy(path: Path) -> np.ndarray:
    import tokenize

    try:
        arr = np.load(path, allow_pickle=False)
    # a corrupt header surfaces from numpy's header parser as a tokenizer or syntax error, short data as EOF
    except (OSError, ValueError, EOFError, SyntaxError, tokenize.TokenError) as e:
        raise _err(str(path), "npy", f"cannot read: {_first_line(e)}") from None
    if arr.ndim != 3 or not np.issubdtype(arr.dtype, np.integer):
        raise _err(str(path), "routed_experts", f"expected an int array [seq_len, num_layers, top_k], got "
                   f"{arr.dtype} {arr.shape}")
    return arr


def _model_layers(num_layers_in_file: int, model: ModelSpec | None, origin: str) -> tuple[tuple[int, ...], Any]:
    """Which model layers the layer axis of a file covers. Returns (layers, index of kept rows or None)."""
    if model is None:
        return tuple(range(num_layers_in_file)), None
    moe = tuple(int(x) for x in model.moe_layers)
    if num_layers_in_file == len(moe):
        return moe, None
    if num_layers_in_file == model.num_layers:
        return moe, np.asarray(moe)
    raise _err(origin, "num_layers", f"file has {num_layers_in_file} layers; model {model.slug} has "
               f"{model.num_layers} layers of which {len(moe)} are MoE")


def from_routed_experts(arrays: list[np.ndarray], model: ModelSpec | None, origin: str) -> RoutingTrace:
    """Concatenate per-request ``[seq_len, L, k]`` arrays along tokens into a trace.

    The layer axis is taken as the model's MoE layers (or all its layers, then dense ones are dropped);
    without a model, as layers 0..L-1 less those that are all zero (vLLM's capture buffer leaves dense layers
    at 0; with k > 1 a real router never picks one expert k times) and E = max id + 1.
    """
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) != 1:
        raise _err(origin, "routed_experts", f"requests disagree on [num_layers, top_k]: {sorted(shapes)}")
    ids = np.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0]
    if model is not None:
        layers, keep = _model_layers(ids.shape[1], model, origin)
    else:
        keep = np.arange(ids.shape[1])
        if ids.shape[2] > 1 and ids.shape[0] > 0:
            keep = np.nonzero(ids.any(axis=(0, 2)))[0]
            if keep.size == 0:
                raise _err(origin, "routed_experts", "every layer is all zeros (no routing recorded)")
        layers = tuple(int(x) for x in keep)
        if keep.size == ids.shape[1]:
            keep = None
    if keep is not None:
        ids = ids[:, keep]
    return _from_ids(ids, model, layers, origin, f"vLLM routed_experts {origin}")


# Largest transitions array [L-1, E, E] built from a file's ids (entries; int64, so 2 GiB). A limit, not a need:
# DeepSeek-V3 (57 layer pairs, 256 experts) needs 3.7 M entries, Qwen3-235B (93 pairs, 128) 1.5 M; without it a
# 10 kB .npy naming expert 8191 in 1024 layers asks for 550 GB.
MAX_TRANSITION_ENTRIES = 1 << 28


def _from_ids(ids: np.ndarray, model: ModelSpec | None, layers: tuple[int, ...], origin: str,
              source: str) -> RoutingTrace:
    from moesim.specs import MAX_EXPERTS, MAX_LAYERS

    if ids.size and ids.min() < 0:
        raise _err(origin, "routed_experts", f"negative expert id {int(ids.min())}")
    if ids.size and model is None and ids.max() >= MAX_EXPERTS:
        raise _err(origin, "routed_experts", f"expert id {int(ids.max())}, more than moesim's limit of "
                   f"{MAX_EXPERTS} experts")
    E = int(model.num_experts) if model is not None else int(ids.max()) + 1 if ids.size else 1
    if ids.size and ids.max() >= E:
        raise _err(origin, "num_experts", f"trace has expert id {int(ids.max())} but model {model.slug} has "
                   f"{E} experts" if model is not None else f"expert id {int(ids.max())} out of range")
    L = ids.shape[1]
    if L > MAX_LAYERS:
        raise _err(origin, "routed_experts", f"{L} layers, more than moesim's limit of {MAX_LAYERS}")
    if (L - 1) * E * E > MAX_TRANSITION_ENTRIES:
        raise _err(origin, "routed_experts", f"{L} layers of {E} experts need {(L - 1) * E * E:,} transition "
                   f"counts, more than moesim's limit of {MAX_TRANSITION_ENTRIES:,}")
    # ids are now in [0, E) with E <= MAX_EXPERTS: int32 whatever the file's integer type (uint64 cannot be
    # counted by np.bincount)
    return RoutingTrace.from_topk_ids(ids.astype(np.int32, copy=False), E, layers=layers,
                                      model=model.slug if model is not None else "", source=source)


# ----------------------------------------------------------------------------------------------------------
# SGLang expert distribution recorder
# ----------------------------------------------------------------------------------------------------------
def _torch_load(path: Path) -> Any:
    try:
        import torch
    except ImportError:
        raise _err(str(path), "format", "SGLang .pt dumps need torch: pip install 'moesim[kernels]'") from None
    import warnings

    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 213": the load fails or succeeds anyway
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad or unsafe file
        raise _err(str(path), "pt", f"torch.load(weights_only=True) failed: {_first_line(e)}") from None


def _np(x: Any, origin: str, fld: str) -> np.ndarray:
    """A tensor or nested list as a numpy array; ``TraceError`` for a ragged list, one nested beyond numpy's 64
    dimensions, or a tensor numpy cannot hold (bfloat16)."""
    try:
        return x.numpy() if hasattr(x, "numpy") else np.asarray(x)
    except (TypeError, ValueError, RuntimeError) as e:
        raise _err(origin, fld, f"not a rectangular numeric array ({_first_line(e)})") from None


def _sglang_kind(obj: Any, origin: str) -> str:
    if isinstance(obj, dict) and "logical_count" in obj:
        return "stat"
    if isinstance(obj, dict) and "records" in obj:
        return "records"
    keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__  # keys may be of mixed types
    raise _err(origin, "format", f"torch file holds {keys}; looked for SGLang 'logical_count' (stat mode) or "
               "'records' (per_token mode)")


def _load_sglang(paths: list[Path], model: ModelSpec | None, top_k: int | None, origin: str,
                 dedup_ranks: bool = False) -> RoutingTrace:
    """One SGLang dump, or a directory of them (all of one mode)."""
    objs = [_torch_load(p) for p in paths]
    kinds = {_sglang_kind(o, str(p)) for p, o in zip(paths, objs, strict=True)}
    if len(kinds) > 1:
        raise _err(origin, "format", "mixes SGLang stat dumps ('logical_count') with per_token/per_pass dumps "
                   "('records'); read them separately")
    if kinds == {"stat"}:
        arrays = [_np(o["logical_count"], origin, "logical_count") for o in objs]
        arrays = [a[None] if a.ndim == 2 else a for a in arrays]
        shapes = {a.shape[1:] for a in arrays}
        if len(shapes) != 1:
            raise _err(origin, "logical_count", f"dumps disagree on [num_layers, num_logical_experts]: "
                       f"{sorted(shapes)}")
        lc = np.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0]
        return from_sglang_stat(lc, model, top_k, origin)
    return from_sglang_records(objs if len(objs) > 1 else objs[0], model, origin, top_k=top_k,
                               dedup_ranks=dedup_ranks)


def from_sglang_stat(logical_count: np.ndarray, model: ModelSpec | None, top_k: int | None,
                     origin: str) -> RoutingTrace:
    """``logical_count`` [S, L_model, E] -> counts summed over steps.

    Layers with no assignments (dense layers, which SGLang keeps as zero rows) are dropped when no model says
    which are MoE. num_tokens = counts[l].sum() / top_k, so top_k must come from the model or the caller.
    """
    lc = np.asarray(logical_count)
    if lc.ndim == 2:
        lc = lc[None]
    if lc.ndim != 3 or not np.issubdtype(lc.dtype, np.integer):
        raise _err(origin, "logical_count", f"expected int [steps, num_layers, num_logical_experts], got "
                   f"{lc.dtype} {lc.shape}")
    counts = lc.sum(axis=0, dtype=np.int64)  # [L_model, E]
    k = top_k if top_k is not None else (int(model.top_k) if model is not None else None)
    if k is None:
        raise _err(origin, "top_k", "SGLang stat dumps do not record top-k: pass the model (--model SLUG)")
    if model is not None:
        layers, keep = _model_layers(counts.shape[0], model, origin)
        if keep is not None:
            counts = counts[keep]
    else:
        nz = np.nonzero(counts.sum(axis=1) > 0)[0]
        layers, counts = tuple(int(x) for x in nz), counts[nz]
    if counts.shape[0] == 0:
        raise _err(origin, "logical_count", "no layer recorded any assignment")
    sums = counts.sum(axis=1)
    if sums.min() != sums.max() or sums[0] % k:
        raise _err(origin, "logical_count", f"per-layer totals {sorted(set(sums.tolist()))[:4]} are not one "
                   f"multiple of top_k={k}")
    return RoutingTrace(model=model.slug if model is not None else "", num_experts=counts.shape[1], top_k=k,
                        origin=origin, layers=layers, counts=counts, num_tokens=int(sums[0]) // k, transitions=None,
                        topk_ids=None, source=f"SGLang expert distribution (stat) {origin}")


def _to_logical(phys: np.ndarray, p2l: np.ndarray | None, origin: str) -> np.ndarray:
    """Physical slot ids [L_model, ...] (-1 unused) -> logical ids by ``p2l`` [L_model, P]; unchanged without a map
    (SGLang's trivial mapping without redundant experts is the identity)."""
    if p2l is None:
        return phys
    if p2l.shape[0] != phys.shape[0]:
        raise _err(origin, "last_physical_to_logical_map", f"{p2l.shape[0]} layers, records have {phys.shape[0]}")
    if phys.size and phys.max() >= p2l.shape[1]:
        raise _err(origin, "topk_ids_of_layer", f"physical id {int(phys.max())} >= {p2l.shape[1]} slots")
    valid = phys >= 0
    flat = np.where(valid, phys, 0).reshape(phys.shape[0], -1)
    mapped = np.take_along_axis(p2l, flat, axis=1).reshape(phys.shape)
    return np.where(valid, mapped, -1)


def from_sglang_records(obj: dict[str, Any] | list[dict[str, Any]], model: ModelSpec | None, origin: str,
                        top_k: int | None = None, dedup_ranks: bool = False) -> RoutingTrace:
    """SGLang ``per_token`` dump(s) -> per-token ids (logical), counts and transitions.

    ``topk_ids_of_layer`` [L_model, T_pass, 8] holds physical slot ids (-1 where unused: dense layers, columns
    beyond the model's top-k); each dump's are mapped to logical experts by its own
    ``last_physical_to_logical_map`` and the passes concatenated. Several dumps (one per rank): every pass is
    kept (data-parallel ranks can route identical tokens); with ``dedup_ranks`` a pass whose ``forward_pass_id``
    and logical ids equal one already read (tensor-parallel ranks route the same tokens) is skipped. Records
    without per-token ids (``per_pass`` mode) contribute counts only (``global_physical_count`` [L_model, P],
    deduplicated the same way).
    """
    from moesim.specs import MAX_EXPERTS

    dumps = obj if isinstance(obj, list) else [obj]
    seen: set[tuple[Any, ...]] = set()
    ids_parts: list[np.ndarray] = []   # logical [L_model, T_pass, 8]
    count_parts: list[np.ndarray] = []  # logical [L_model, E]
    n_records = 0
    for dump in dumps:
        records = dump.get("records") or []
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise _err(origin, "records", "expected a list of record mappings")
        n_records += len(records)
        p2l = dump.get("last_physical_to_logical_map")
        if p2l is not None:  # [L_model, P]
            p2l = int_array(_np(p2l, origin, "last_physical_to_logical_map"), origin, "last_physical_to_logical_map",
                            minimum=0, ndim=2)
        for r in records:
            if "topk_ids_of_layer" in r:
                phys = int_array(_np(r["topk_ids_of_layer"], origin, "topk_ids_of_layer"), origin, "topk_ids_of_layer",
                                 minimum=-1)
                if phys.ndim != 3:
                    raise _err(origin, "topk_ids_of_layer", f"expected [num_layers, num_tokens, k], got {phys.shape}")
                part, kind = _to_logical(phys, p2l, origin), "ids"
            elif "global_physical_count" in r:
                if p2l is None:
                    raise _err(origin, "last_physical_to_logical_map", "missing (needed to map physical counts)")
                phys = int_array(_np(r["global_physical_count"], origin, "global_physical_count"), origin,
                                 "global_physical_count", 0, ndim=2)
                if phys.shape != p2l.shape:
                    raise _err(origin, "global_physical_count", f"shape {phys.shape}, but the "
                               f"last_physical_to_logical_map is {p2l.shape}")
                E = int(model.num_experts) if model is not None else int(p2l.max(initial=0)) + 1
                limit, whose = (E, f"{model.slug}'s experts") if model is not None else (MAX_EXPERTS, "moesim's limit")
                if p2l.size and p2l.max() >= limit:
                    raise _err(origin, "last_physical_to_logical_map", f"logical expert {int(p2l.max())}, beyond "
                               f"the {limit} of {whose}")
                part = np.zeros((phys.shape[0], E), dtype=np.int64)
                np.add.at(part, (np.arange(phys.shape[0])[:, None], p2l), phys)
                kind = "counts"
            else:
                raise _err(origin, "records", "records carry neither 'topk_ids_of_layer' nor 'global_physical_count'")
            # repr: the ids may be any value in a damaged file, lists included (unhashable)
            key = (kind, repr(r.get("forward_pass_id")), repr(r.get("gatherer_key")), part.shape, part.tobytes())
            if dedup_ranks and key in seen:
                continue
            seen.add(key)
            (ids_parts if kind == "ids" else count_parts).append(part)
    if n_records == 0:
        raise _err(origin, "records", "empty")
    if ids_parts and count_parts:
        raise _err(origin, "records", "mixes per_token records ('topk_ids_of_layer') with per_pass records")
    if count_parts:
        E = max(p.shape[1] for p in count_parts)
        logical = np.sum([np.pad(p, ((0, 0), (0, E - p.shape[1]))) for p in count_parts], axis=0)
        return from_sglang_stat(logical[None], model, top_k, origin)
    if len({(p.shape[0], p.shape[2]) for p in ids_parts}) != 1:
        raise _err(origin, "topk_ids_of_layer", "records disagree on the number of layers or of columns")
    ids = np.concatenate(ids_parts, axis=1)  # [L_model, T, 8]
    used_layer = (ids >= 0).any(axis=(1, 2))
    if model is not None:
        layers, keep = _model_layers(ids.shape[0], model, origin)
        if keep is not None:
            ids = ids[keep]
        k = int(model.top_k)
    else:
        keep = np.nonzero(used_layer)[0]
        layers, ids = tuple(int(x) for x in keep), ids[keep]
        used_cols = (ids >= 0).any(axis=(0, 1))
        k = top_k if top_k is not None else int(used_cols.sum())
    if ids.shape[0] == 0 or k == 0:
        raise _err(origin, "topk_ids_of_layer", "no layer has any routed token")
    if ids.shape[2] < k:
        raise _err(origin, "topk_ids_of_layer", f"{ids.shape[2]} columns but top_k is {k}")
    ids = ids[:, :, :k]
    # tokens not routed in some kept layer (padding) are dropped whole, so every layer sees the same tokens
    full = (ids >= 0).all(axis=(0, 2))
    ids = ids[:, full, :].transpose(1, 0, 2)  # [T, L, k]
    # no int32 cast here: _from_ids checks the ids' range first (a cast would wrap 2**32 + 3 to 3)
    return _from_ids(ids, model, layers, origin, f"SGLang expert distribution (per_token) {origin}")


def convert_olmoe_analysis(src_dir: str | os.PathLike[str], dst_dir: str | os.PathLike[str],
                           copy_json: bool = True) -> list[Path]:
    """Convert every ``{olmoe,mistral}_<domain>.json`` of the OLMoE routing analysis in ``src_dir`` into
    native ``{olmoe,mixtral}_<domain>.npz`` in ``dst_dir`` (and copy the JSON beside them). Returns the
    written .npz paths. Used by ``tools/make_shipped_traces.py`` to regenerate ``profiles/traces/``."""
    import shutil

    from moesim.trace import save_trace

    src, dst = Path(src_dir), Path(dst_dir)
    files = sorted(src.glob("olmoe_*.json")) + sorted(src.glob("mistral_*.json"))
    if not files:
        raise _err(str(src), "files", "no olmoe_*.json or mistral_*.json here")
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        trace = _load_json(f)
        name = f.stem.replace("mistral_", "mixtral_", 1)
        target = dst / f"{name}.npz"
        save_trace(trace, target)
        if copy_json and f.resolve() != (dst / f.name).resolve():
            shutil.copyfile(f, dst / f.name)
        out.append(target)
    return out

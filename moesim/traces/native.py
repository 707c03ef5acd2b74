"""moesim's own trace format: ``.npz`` (compressed; a ``meta`` JSON entry plus the arrays) or JSON.

Dimension legend: T tokens, L recorded MoE layers, E logical experts, k top-k.

Both hold the same keys: ``format`` (``"moesim-trace"``), ``version``, ``model``, ``num_experts``, ``top_k``,
``layers``, ``num_tokens``, ``source``, ``counts [L, E]`` and the optional ``transitions [L-1, E, E]`` and
``topk_ids [T, L, k]`` (uint8 in the ``.npz`` when E <= 256).
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from moesim.errors import SpecError, TraceError
from moesim.fileio import atomic_write, atomic_write_text, parse_json, read_text
from moesim.schema import Fields
from moesim.specs.limits import MAX_EXPERTS, MAX_LAYERS
from moesim.traces.trace import RoutingTrace, first_line, int_array, trace_error

__all__ = [
    "NATIVE_FORMAT",
    "NATIVE_VERSION",
    "load_native_npz",
    "read_json_document",
    "save_trace",
    "trace_from_native",
]

NATIVE_FORMAT = "moesim-trace"
NATIVE_VERSION = 1


def _meta(trace: RoutingTrace) -> dict[str, Any]:
    return {
        "format": NATIVE_FORMAT,
        "version": NATIVE_VERSION,
        "model": trace.model,
        "num_experts": trace.num_experts,
        "top_k": trace.top_k,
        "layers": list(trace.layers),
        "num_tokens": trace.num_tokens,
        "source": trace.source,
    }


def save_trace(trace: RoutingTrace, path: str | os.PathLike[str]) -> None:
    """Write ``trace`` in the native format: ``.npz`` (compressed; default) or ``.json`` (by suffix).

    Written to a temp file in the same directory and renamed, so a failure leaves nothing behind.
    """
    path = Path(path)
    meta = _meta(trace)
    if path.suffix.lower() == ".json":
        doc = dict(meta)
        doc["counts"] = trace.counts.tolist()
        doc["transitions"] = None if trace.transitions is None else trace.transitions.tolist()
        doc["topk_ids"] = None if trace.topk_ids is None else trace.topk_ids.tolist()
        atomic_write_text(path, json.dumps(doc))
        return
    arrays: dict[str, np.ndarray] = {
        "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        "counts": trace.counts,
    }
    if trace.transitions is not None:
        arrays["transitions"] = trace.transitions
    if trace.topk_ids is not None:
        # uint8 when it fits: 524288 x 58 x 8 ids are 243 MB as int32, 61 MB as uint8
        ids = trace.topk_ids
        arrays["topk_ids"] = ids.astype(np.uint8) if trace.num_experts <= 256 else ids
    atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))


def trace_from_native(doc: dict[str, Any], origin: str) -> RoutingTrace:
    """Build a trace from the native key/value layout (shared by the .npz and JSON readers)."""
    if doc.get("format") != NATIVE_FORMAT:
        raise trace_error(origin, "format", f"expected {NATIVE_FORMAT!r}, got {doc.get('format')!r}")
    f = Fields(origin, doc, error=TraceError)
    version = f.int_("version", 1, minimum=1)
    if version > NATIVE_VERSION:
        raise trace_error(origin, "version", f"file is version {version}, this moesim reads <= {NATIVE_VERSION}")
    E = f.int_("num_experts", minimum=1, maximum=MAX_EXPERTS)
    k = f.int_("top_k", minimum=1, maximum=E)
    num_tokens = f.int_("num_tokens", minimum=0)
    layers = tuple(int(x) for x in int_array(f.raw("layers"), origin, "layers", 0, MAX_LAYERS - 1, ndim=1))
    L = len(layers)
    counts = int_array(f.raw("counts"), origin, "counts", minimum=0)

    def opt(key: str, dtype: Any, tail: tuple[int, ...]) -> np.ndarray | None:
        v = doc.get(key)
        if v is None:
            return None
        a = int_array(v, origin, key, minimum=0, dtype=dtype)
        return a.reshape((0, *tail)) if a.size == 0 else a  # JSON "[]" loses the trailing dims

    return RoutingTrace(
        model=str(doc.get("model", "")),
        num_experts=E,
        top_k=k,
        layers=layers,
        counts=counts,
        num_tokens=num_tokens,
        transitions=opt("transitions", np.int64, (E, E)),
        topk_ids=opt("topk_ids", np.int32, (L, k)),
        source=str(doc.get("source", "")),
        origin=origin,
    )


def load_native_npz(path: str | os.PathLike[str]) -> RoutingTrace:
    """Read a native ``.npz`` (a ``meta`` JSON entry plus the arrays); ``TraceError`` naming the file."""
    origin = str(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if "meta" not in z.files:
                raise trace_error(origin, "meta", "missing: not a moesim trace (.npz without 'meta')")
            meta = z["meta"]
            if meta.dtype != np.uint8 or meta.ndim != 1:
                raise trace_error(
                    origin, "meta", f"expected the uint8 bytes of a JSON object, got {meta.dtype} {meta.shape}"
                )
            doc = parse_json(meta.tobytes().decode("utf-8"), origin, "meta")
            if not isinstance(doc, dict):
                raise trace_error(origin, "meta", f"expected a JSON object, got {type(doc).__name__}")
            for key in ("counts", "transitions", "topk_ids"):
                if key in z.files:
                    doc[key] = z[key]
    except TraceError:
        raise
    except SpecError as e:
        raise TraceError(str(e)) from None
    # a corrupt archive surfaces from inside np.load / z[key] as a zip, zlib or EOF error, or as
    # NotImplementedError for a damaged version or compression field
    except (OSError, ValueError, EOFError, NotImplementedError, zipfile.BadZipFile, zlib.error) as e:
        raise trace_error(origin, "npz", f"cannot read: {first_line(e)}") from None
    return trace_from_native(doc, origin)


def read_json_document(path: Path) -> Any:
    """The parsed JSON of ``path`` (``TraceError`` naming the file for unreadable or malformed JSON)."""
    origin = str(path)
    try:
        return parse_json(read_text(path, origin), origin, "json")
    except SpecError as exc:
        raise TraceError(str(exc)) from None

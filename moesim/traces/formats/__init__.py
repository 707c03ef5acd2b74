"""Trace file formats, one module per format, all in :data:`REGISTRY`; the format is detected from the file's
content (first bytes, zip entries, a directory's file suffixes), never its name.

* ``npz`` (:mod:`.native_npz`): moesim's native ``.npz``;
* ``json`` (:mod:`.json_doc`): moesim's native JSON, or the OLMoE routing-analysis JSON (:mod:`.olmoe`);
* ``pt``, ``pt-dir`` (:mod:`.sglang`): SGLang expert-distribution dumps, a file or a directory of them;
* ``npy``, ``npy-dir`` (:mod:`.vllm`): vLLM ``routed_experts`` arrays, a file or a directory of them.

To add a format: one module with a :class:`~moesim.traces.formats.base.TraceFormat` member ``FORMAT``, listed in
:data:`REGISTRY` below; :func:`detect_format`, :func:`load_trace` and the "looked for" error list follow.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from moesim.traces.formats import json_doc, native_npz, sglang, vllm
from moesim.traces.formats.base import Probe, ReadRequest, TraceFormat
from moesim.traces.trace import trace_error

if TYPE_CHECKING:
    from moesim.specs import ModelSpec
    from moesim.traces.trace import RoutingTrace

__all__ = ["FORMATS", "REGISTRY", "TraceFormat", "detect_format", "load_trace"]

REGISTRY: dict[str, TraceFormat] = {
    f.name: f
    for f in (native_npz.FORMAT, json_doc.FORMAT, sglang.FORMAT, sglang.DIR_FORMAT, vllm.FORMAT, vllm.DIR_FORMAT)
}
# what an unrecognised file's error says was looked for, in registry order
FORMATS: tuple[str, ...] = tuple(d for f in REGISTRY.values() for d in f.descriptions)


def _detect(probe: Probe) -> TraceFormat:
    for fmt in REGISTRY.values():
        if fmt.matches(probe):
            return fmt
    origin = str(probe.path)
    if probe.is_dir:
        raise trace_error(
            origin,
            "format",
            "directory holds no .npy or .pt files (expected vLLM routed_experts "
            "arrays or SGLang expert distribution dumps)",
        )
    if probe.zip_names is not None:
        raise trace_error(
            origin,
            "format",
            f"zip archive that is neither .npz nor a torch.save file (entries {list(probe.zip_names[:3])})",
        )
    raise trace_error(origin, "format", "not recognised; looked for " + ", ".join(FORMATS))


def detect_format(path: str | os.PathLike[str]) -> str:
    """The :data:`REGISTRY` name of the format of ``path`` (``npz``, ``json``, ``pt``, ``pt-dir``, ``npy``,
    ``npy-dir``), from its first bytes (not its name; a directory by the suffixes of its files); ``TraceError``
    naming the file when no format matches."""
    return _detect(Probe.of(path)).name


def load_trace(
    path: str | os.PathLike[str],
    model: ModelSpec | None = None,
    dedup_ranks: bool = False,
    *,
    top_k: int | None = None,
) -> RoutingTrace:
    """Read a routing trace, format auto-detected (module docstring).

    ``model`` fills in what a format does not record (top-k of an SGLang ``stat`` dump, the model slug) and is
    checked against the trace; ``top_k`` gives the top-k without a model. ``dedup_ranks``: a pass several SGLang
    ranks recorded identically counts once (tensor parallelism). Raises TraceError naming the file when the
    format is not recognised.
    """
    fmt = _detect(Probe.of(path))
    trace = fmt.read(path, ReadRequest(model=model, top_k=top_k, dedup_ranks=dedup_ranks, looked_for=FORMATS))
    if model is not None:
        trace.check_model(model, str(path))
        if not trace.model:
            trace = trace.with_model(model.slug)
    return trace

"""Format ``json``: a JSON document, moesim's native trace (``"format": "moesim-trace"``) or an OLMoE routing
analysis (``expert_counts`` and ``layers``; :mod:`moesim.traces.formats.olmoe`), told apart by its keys."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from moesim.traces.formats.base import Probe, ReadRequest
from moesim.traces.formats.olmoe import from_olmoe_json
from moesim.traces.native import NATIVE_FORMAT, read_json_document, trace_from_native
from moesim.traces.trace import RoutingTrace, trace_error


def read_json_trace(path: Path, looked_for: tuple[str, ...]) -> RoutingTrace:
    """The native or OLMoE-analysis trace in the JSON file ``path``; ``looked_for`` names the formats tried
    (for a document whose top level is not an object)."""
    origin = str(path)
    doc = read_json_document(path)
    if not isinstance(doc, dict):
        raise trace_error(origin, "json", "top level is not an object; looked for " + ", ".join(looked_for))
    if doc.get("format") == NATIVE_FORMAT:
        return trace_from_native(doc, origin)
    if "expert_counts" in doc and "layers" in doc:
        return from_olmoe_json(doc, origin)
    raise trace_error(
        origin,
        "format",
        "JSON is neither a moesim trace ('format': 'moesim-trace') nor an OLMoE "
        "routing analysis ('expert_counts', 'layers')",
    )


@dataclass(frozen=True)
class JsonDocument:
    """A file whose first non-blank byte opens a JSON object or array."""

    name: str = "json"
    descriptions: tuple[str, ...] = ("native JSON", "OLMoE routing-analysis JSON")

    def matches(self, probe: Probe) -> bool:
        return not probe.is_dir and probe.zip_names is None and probe.head.lstrip()[:1] in (b"{", b"[")

    def read(self, path: str | os.PathLike[str], request: ReadRequest) -> RoutingTrace:
        return read_json_trace(Path(path), request.looked_for)


FORMAT = JsonDocument()

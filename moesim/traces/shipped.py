"""The shipped traces: the ``profiles/traces/`` folder, trace names, and how the folder is regenerated."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from moesim.errors import TraceError
from moesim.specs.files import profiles_dir
from moesim.traces.formats import FORMATS
from moesim.traces.formats.json_doc import read_json_trace
from moesim.traces.native import save_trace
from moesim.traces.trace import trace_error

__all__ = ["convert_olmoe_analysis", "resolve_trace", "shipped_traces_dir"]


def shipped_traces_dir() -> Path:
    """The shipped ``profiles/traces/`` folder (package data of the installed ``profiles`` package)."""
    return profiles_dir() / "traces"


def resolve_trace(name: str | os.PathLike[str]) -> Path:
    """A trace file path as given, or a shipped trace's name (``olmoe_c4`` -> ``profiles/traces/olmoe_c4.npz``)."""
    path = Path(name)
    if path.exists():
        return path
    shipped = shipped_traces_dir()
    for candidate in (shipped / str(name), shipped / f"{name}.npz"):
        if candidate.exists():
            return candidate
    names = sorted(p.stem for p in shipped.glob("*.npz"))
    raise TraceError(f"{name}: file: no such file or shipped trace (shipped: {', '.join(names) or 'none'})")


def convert_olmoe_analysis(
    src_dir: str | os.PathLike[str], dst_dir: str | os.PathLike[str], copy_json: bool = True
) -> list[Path]:
    """Convert every ``{olmoe,mistral}_<domain>.json`` of the OLMoE routing analysis in ``src_dir`` into
    native ``{olmoe,mixtral}_<domain>.npz`` in ``dst_dir`` (and copy the JSON beside them). Returns the
    written .npz paths. Used by ``tools/make_shipped_traces.py`` to regenerate ``profiles/traces/``."""
    src, dst = Path(src_dir), Path(dst_dir)
    files = sorted(src.glob("olmoe_*.json")) + sorted(src.glob("mistral_*.json"))
    if not files:
        raise trace_error(str(src), "files", "no olmoe_*.json or mistral_*.json here")
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        trace = read_json_trace(f, FORMATS)
        name = f.stem.replace("mistral_", "mixtral_", 1)
        target = dst / f"{name}.npz"
        save_trace(trace, target)
        if copy_json and f.resolve() != (dst / f.name).resolve():
            shutil.copyfile(f, dst / f.name)
        out.append(target)
    return out

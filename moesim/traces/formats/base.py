"""The trace-format family's shared shape: what a format is told about a file, and the protocol it follows.

A format (one module of :mod:`moesim.traces.formats` each) is a :class:`TraceFormat`: a registry ``name`` (what
:func:`moesim.traces.formats.detect_format` returns), the ``descriptions`` an unrecognised file's error lists,
``matches`` (from a :class:`Probe` of the file's first bytes, never its name) and ``read`` (given a
:class:`ReadRequest`: the model, the caller's top-k, rank deduplication and the registry's descriptions).
The per-token formats (vLLM, SGLang) share :func:`model_layers` and :func:`from_ids`.

Dimension legend: T tokens, L layers, E logical experts, k top-k.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from moesim.specs.limits import MAX_EXPERTS, MAX_LAYERS
from moesim.traces.trace import RoutingTrace, trace_error

if TYPE_CHECKING:
    from moesim.specs import ModelSpec


@dataclass(frozen=True)
class Probe:
    """What detection looks at: a directory's file suffixes, or a file's first 8 bytes and, for a zip archive,
    its entry names."""

    path: Path
    is_dir: bool
    has_npy: bool = False  # directory holds *.npy files
    has_pt: bool = False  # directory holds *.pt files
    head: bytes = b""  # a file's first 8 bytes
    zip_names: tuple[str, ...] | None = None  # entry names when the file is a zip archive

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> Probe:
        """Probe ``path``; ``TraceError`` for a missing file, a damaged zip, or a directory mixing .npy and .pt."""
        p = Path(path)
        origin = str(p)
        if p.is_dir():
            has_npy, has_pt = any(p.glob("*.npy")), any(p.glob("*.pt"))
            if has_npy and has_pt:
                raise trace_error(
                    origin,
                    "format",
                    "directory holds both .npy and .pt files; put vLLM arrays and SGLang dumps in separate directories",
                )
            return cls(p, True, has_npy=has_npy, has_pt=has_pt)
        if not p.exists():
            raise trace_error(origin, "file", "does not exist")
        with open(p, "rb") as fh:
            head = fh.read(8)
        names = None
        if head.startswith(b"PK"):
            try:
                with zipfile.ZipFile(p) as z:
                    names = tuple(z.namelist())
            # a damaged directory: bad magic, a name that is not UTF-8, an offset past the end, a made-up version
            except (zipfile.BadZipFile, UnicodeDecodeError, ValueError, OSError, EOFError, NotImplementedError):
                raise trace_error(origin, "format", "looks like a zip archive but cannot be opened") from None
        return cls(p, False, head=head, zip_names=names)


@dataclass(frozen=True)
class ReadRequest:
    """What a format's ``read`` is given besides the path: ``model`` fills in what a format does not record
    (top-k of an SGLang ``stat`` dump, which layers are MoE), ``top_k`` overrides it, ``dedup_ranks`` counts a
    pass several SGLang ranks recorded identically once, ``looked_for`` lists every registered format's
    descriptions (for the error of a file no format reads)."""

    model: ModelSpec | None = None
    top_k: int | None = None
    dedup_ranks: bool = False
    looked_for: tuple[str, ...] = ()


class TraceFormat(Protocol):
    """One trace file format: its registry name, its descriptions, how it is recognised and how it is read."""

    @property
    def name(self) -> str:
        """Registry key, what :func:`moesim.traces.formats.detect_format` returns (``npz``, ``pt-dir`` ...)."""
        ...

    @property
    def descriptions(self) -> tuple[str, ...]:
        """What an unrecognised file's error says was looked for (``"native .npz"``)."""
        ...

    def matches(self, probe: Probe) -> bool:
        """Whether the probed file or directory is in this format (the formats' conditions exclude each other)."""
        ...

    def read(self, path: str | os.PathLike[str], request: ReadRequest) -> RoutingTrace:
        """The trace in ``path`` as the caller spelled it (errors name it so), not yet checked against
        ``request.model``; ``TraceError`` ``PATH: FIELD: PROBLEM``."""
        ...


# ----------------------------------------------------------------- rules the per-token formats (vLLM, SGLang) share
def model_layers(num_layers_in_file: int, model: ModelSpec | None, origin: str) -> tuple[tuple[int, ...], Any]:
    """Which model layers the layer axis of a file covers. Returns (layers, index of kept rows or None)."""
    if model is None:
        return tuple(range(num_layers_in_file)), None
    moe = tuple(int(x) for x in model.moe_layers)
    if num_layers_in_file == len(moe):
        return moe, None
    if num_layers_in_file == model.num_layers:
        return moe, np.asarray(moe)
    raise trace_error(
        origin,
        "num_layers",
        f"file has {num_layers_in_file} layers; model {model.slug} has "
        f"{model.num_layers} layers of which {len(moe)} are MoE",
    )


# Largest transitions array [L-1, E, E] built from a file's ids (entries; int64, so 2 GiB). A limit, not a need:
# DeepSeek-V3 (57 layer pairs, 256 experts) needs 3.7 M entries, Qwen3-235B (93 pairs, 128) 1.5 M; without it a
# 10 kB .npy naming expert 8191 in 1024 layers asks for 550 GB.
MAX_TRANSITION_ENTRIES = 1 << 28


def from_ids(
    ids: np.ndarray, model: ModelSpec | None, layers: tuple[int, ...], origin: str, source: str
) -> RoutingTrace:
    # one pass each over the ids (T * L * k of them): every range check below uses these two
    lo, hi = (int(ids.min()), int(ids.max())) if ids.size else (0, -1)
    if lo < 0:
        raise trace_error(origin, "routed_experts", f"negative expert id {lo}")
    if model is None:  # E = max id + 1, so every id is in range
        if hi >= MAX_EXPERTS:
            raise trace_error(
                origin, "routed_experts", f"expert id {hi}, more than moesim's limit of {MAX_EXPERTS} experts"
            )
        E = max(hi + 1, 1)
    else:
        E = int(model.num_experts)
        if hi >= E:
            raise trace_error(origin, "num_experts", f"trace has expert id {hi} but model {model.slug} has {E} experts")
    L = ids.shape[1]
    if L > MAX_LAYERS:
        raise trace_error(origin, "routed_experts", f"{L} layers, more than moesim's limit of {MAX_LAYERS}")
    if (L - 1) * E * E > MAX_TRANSITION_ENTRIES:
        raise trace_error(
            origin,
            "routed_experts",
            f"{L} layers of {E} experts need {(L - 1) * E * E:,} transition "
            f"counts, more than moesim's limit of {MAX_TRANSITION_ENTRIES:,}",
        )
    # ids are now in [0, E) with E <= MAX_EXPERTS: int32 whatever the file's integer type (uint64 cannot be
    # counted by np.bincount)
    return RoutingTrace.from_topk_ids(
        ids.astype(np.int32, copy=False), E, layers=layers, model=model.slug if model is not None else "", source=source
    )

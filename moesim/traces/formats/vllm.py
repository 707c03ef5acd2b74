"""Formats ``npy`` and ``npy-dir``: vLLM per-request ``routed_experts``.

Dimension legend: T tokens, L layers, E logical experts, k top-k.

``CompletionOutput.routed_experts`` is a numpy array saved with ``np.save``: ``.npy`` int
``[seq_len, num_layers, top_k]`` of logical ids; a directory of them is concatenated along tokens (files in name
order). The layer axis is every hidden layer in ``vllm/model_executor/layers/fused_moe/routed_experts_capturer.py``
(int32 buffer sized by ``num_hidden_layers``, indexed by the model layer id; layers without routing stay 0), MoE
layers only (int16) in vLLM 0.21's documentation; with the model both are recognised by their length, without it
all-zero layers are dropped as dense."""

from __future__ import annotations

import os
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from moesim.traces.formats.base import Probe, ReadRequest, from_ids, model_layers
from moesim.traces.trace import RoutingTrace, first_line, trace_error

if TYPE_CHECKING:
    from moesim.specs import ModelSpec


def _load_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    # a corrupt header surfaces from numpy's header parser as a tokenizer or syntax error, short data as EOF
    except (OSError, ValueError, EOFError, SyntaxError, tokenize.TokenError) as e:
        raise trace_error(str(path), "npy", f"cannot read: {first_line(e)}") from None
    if arr.ndim != 3 or not np.issubdtype(arr.dtype, np.integer):
        raise trace_error(
            str(path),
            "routed_experts",
            f"expected an int array [seq_len, num_layers, top_k], got {arr.dtype} {arr.shape}",
        )
    return arr


def from_routed_experts(arrays: list[np.ndarray], model: ModelSpec | None, origin: str) -> RoutingTrace:
    """Concatenate per-request ``[seq_len, L, k]`` arrays along tokens into a trace.

    The layer axis is taken as the model's MoE layers (or all its layers, then dense ones are dropped);
    without a model, as layers 0..L-1 less those that are all zero (vLLM's capture buffer leaves dense layers
    at 0; with k > 1 a real router never picks one expert k times) and E = max id + 1.
    """
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) != 1:
        raise trace_error(origin, "routed_experts", f"requests disagree on [num_layers, top_k]: {sorted(shapes)}")
    ids = np.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0]
    if model is not None:
        layers, keep = model_layers(ids.shape[1], model, origin)
    else:
        keep = np.arange(ids.shape[1])
        if ids.shape[2] > 1 and ids.shape[0] > 0:
            keep = np.nonzero(ids.any(axis=(0, 2)))[0]
            if keep.size == 0:
                raise trace_error(origin, "routed_experts", "every layer is all zeros (no routing recorded)")
        layers = tuple(int(x) for x in keep)
        if keep.size == ids.shape[1]:
            keep = None
    if keep is not None:
        ids = ids[:, keep]
    return from_ids(ids, model, layers, origin, f"vLLM routed_experts {origin}")


@dataclass(frozen=True)
class RoutedExperts:
    """A ``.npy`` file (numpy's magic bytes), or a directory of them (``dir``)."""

    name: str = "npy"
    descriptions: tuple[str, ...] = ("vLLM routed_experts .npy (file or directory)",)
    dir: bool = False

    def matches(self, probe: Probe) -> bool:
        return probe.has_npy if self.dir else not probe.is_dir and probe.head.startswith(b"\x93NUMPY")

    def read(self, path: str | os.PathLike[str], request: ReadRequest) -> RoutingTrace:
        origin = str(path)
        if not self.dir:
            return from_routed_experts([_load_npy(Path(path))], request.model, origin)
        files = sorted(Path(path).glob("*.npy"))
        return from_routed_experts([_load_npy(f) for f in files], request.model, f"{origin} ({len(files)} files)")


FORMAT = RoutedExperts()
DIR_FORMAT = RoutedExperts(name="npy-dir", descriptions=(), dir=True)

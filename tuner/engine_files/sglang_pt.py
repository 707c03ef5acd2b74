"""SGLang's ``--init-expert-location FILE.pt``: a ``torch.save`` of ``{"physical_to_logical_map": tensor}``.

SGLang 0.5.14, ``python/sglang/srt/eplb/expert_location.py`` (``compute_initial_expert_location_metadata``):
a value ending in ``.pt`` is read with ``torch.load(data, weights_only=True)`` and the resulting dict goes the
same way as the JSON document (:mod:`tuner.engine_files.sglang_json`): ``physical_to_logical_map`` to
``init_by_mapping`` (which keeps a tensor as it is, else ``torch.tensor(...)``), ``logical_count`` to
``init_by_eplb``. So the file is a dict with the one key and an int64 ``[num_hidden_layers, P]`` tensor, and a
plain dict of tensors is all ``weights_only=True`` needs. Writing and reading need torch (``moesim[kernels]``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuner.engine_files import sglang_json
from tuner.engine_files.base import EngineFormat

if TYPE_CHECKING:
    from moesim.placement import Placement
    from moesim.specs import ClusterSpec, ModelSpec
    from tuner.engine_files.base import RenderRequest


def require_torch(origin: str, option: str = "--export") -> Any:
    """The torch module; ``HardwareError`` naming ``origin`` where it is not installed."""
    try:
        import torch
    except ImportError:
        from moesim.errors import HardwareError

        raise HardwareError(f"{origin}: {option}: SGLang .pt files need torch: pip install 'moesim[kernels]'") from None
    return torch


def render(request: RenderRequest) -> bytes:
    torch = require_torch(request.origin)
    mapping = sglang_json.full_map(request.placement, request.model, request.cluster, request.origin)
    buf = io.BytesIO()
    torch.save({sglang_json.KEY: torch.from_numpy(np.ascontiguousarray(mapping, dtype=np.int64))}, buf)
    return buf.getvalue()


def load(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` as SGLang does; one ``PlacementError`` line for a bad file."""
    from moesim.errors import PlacementError
    from moesim.fileio import MAX_TEXT_BYTES

    torch = require_torch(str(path), "--current")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise PlacementError(f"{path}: file: cannot read ({exc.strerror or exc})") from None
    if size > MAX_TEXT_BYTES:  # a checkpoint given by mistake: not read into memory
        raise PlacementError(f"{path}: file: {size:,} bytes, more than the {MAX_TEXT_BYTES >> 20} MB read")
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged or unsafe file
        from moesim.traces.trace import first_line

        raise PlacementError(f"{path}: pt: torch.load(weights_only=True) failed: {first_line(exc)}") from None


def read(path: Path, doc: Any, model: ModelSpec, cluster: ClusterSpec, redundant_experts: int | None) -> Placement:
    return sglang_json.read(path, doc, model, cluster, redundant_experts)


class SglangPt:
    """The :class:`~tuner.engine_files.base.EngineFormat` ``sglang-pt``."""

    name = "sglang-pt"
    engine = "sglang"
    what = "SGLang --init-expert-location map, torch .pt"
    suffixes = (".pt",)
    needs_counts = False
    needs_torch = True
    render = staticmethod(render)
    read = staticmethod(read)


FORMAT: EngineFormat = SglangPt()

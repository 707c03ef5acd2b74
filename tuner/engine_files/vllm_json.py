"""vLLM's ``--eplb-config`` settings as a JSON file (vLLM reads no placement file: :mod:`.vllm_eplb`).

The document is the ``EPLBConfig`` dict :func:`tuner.engine_files.vllm_eplb.settings_for` builds (vLLM's window
and interval, the placement's redundant slots, the caller's other fields), one field a line.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from tuner.engine_files.vllm_eplb import no_placement, settings_for

if TYPE_CHECKING:
    from tuner.engine_files.base import EngineFormat, RenderRequest


def render(request: RenderRequest) -> bytes:
    settings = settings_for(request.placement, request.model, request.cluster, request.eplb, request.origin)
    return (json.dumps(settings, indent=1) + "\n").encode()


class VllmJson:
    """The :class:`~tuner.engine_files.base.EngineFormat` ``vllm``."""

    name = "vllm"
    engine = "vllm"
    what = "vLLM --eplb-config settings, JSON"
    suffixes = ()
    needs_counts = False
    needs_torch = False
    render = staticmethod(render)
    read = staticmethod(no_placement)


FORMAT: EngineFormat = VllmJson()

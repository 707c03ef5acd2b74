"""vLLM's EPLB settings as the flag line that starts vLLM with them (vLLM reads no placement file:
:mod:`.vllm_eplb`): ``--enable-expert-parallel --enable-eplb --eplb-config '{...}'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.engine_files.vllm_eplb import flag_line, no_placement, settings_for

if TYPE_CHECKING:
    from tuner.engine_files.base import EngineFormat, RenderRequest


def render(request: RenderRequest) -> bytes:
    settings = settings_for(request.placement, request.model, request.cluster, request.eplb, request.origin)
    return (flag_line(settings) + "\n").encode()


class VllmFlags:
    """The :class:`~tuner.engine_files.base.EngineFormat` ``vllm-flags``."""

    name = "vllm-flags"
    engine = "vllm"
    what = "vLLM --enable-eplb flag line"
    suffixes = ()
    needs_counts = False
    needs_torch = False
    render = staticmethod(render)
    read = staticmethod(no_placement)


FORMAT: EngineFormat = VllmFlags()

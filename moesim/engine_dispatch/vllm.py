"""``vllm``: vLLM's EPLB sends assignment number ``i`` of a batch (flattened ``[tokens, k]`` position) to
replica ``i mod c_e`` (vLLM 0.19.0 ``vllm/model_executor/layers/fused_moe/router/base_router.py``,
``eplb_map_to_physical_and_record``). Source independent and ``1 / c_e`` per replica in expectation."""

from __future__ import annotations

from moesim.engine_dispatch.even import Even

__all__ = ["Vllm"]


class Vllm(Even):
    """Every rank splits alike: ``1 / c_e`` per replica (:class:`Even`'s weights and view)."""

    name = "vllm"
    summary = "assignment i to replica i mod c (even in expectation)"
    source = "vLLM 0.19.0 fused_moe/router/base_router.py eplb_map_to_physical_and_record"

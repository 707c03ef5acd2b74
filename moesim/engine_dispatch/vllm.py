"""``vllm``: vLLM's EPLB sends assignment number ``i`` of a batch (flattened ``[tokens, k]`` position) to
replica ``i mod c_e`` (vLLM 0.19.0 ``vllm/model_executor/layers/fused_moe/router/base_router.py``,
``eplb_map_to_physical_and_record``). Source independent and ``1 / c_e`` per replica in expectation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from moesim.engine_dispatch.base import EngineRule, even_weights

if TYPE_CHECKING:
    from moesim.placement import Placement
    from moesim.specs import ModelSpec

__all__ = ["Vllm"]


class Vllm(EngineRule):
    """Every rank splits alike: ``1 / c_e`` per replica."""

    name = "vllm"
    summary = "assignment i to replica i mod c (even in expectation)"
    source = "vLLM 0.19.0 fused_moe/router/base_router.py eplb_map_to_physical_and_record"
    per_rank = True

    def weights(self, phy2log: np.ndarray, num_experts: int, num_gpus: int, gpus_per_node: int) -> np.ndarray:
        return even_weights(phy2log, num_experts, num_gpus, gpus_per_node)

    def view_weights(
        self, placement: Placement, gpus_per_node: int, model: ModelSpec | None, layers: Sequence[int] | None
    ) -> tuple[np.ndarray | None, dict[str, str]]:
        return None, {}  # every rank alike

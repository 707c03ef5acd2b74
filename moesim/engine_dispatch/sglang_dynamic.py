"""``sglang-dynamic``: the nearest replica, else a replica drawn uniformly per assignment (SGLang 0.5.14
``srt/eplb/expert_location_dispatch.py``, ``_topk_ids_logical_to_physical_dynamic``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from moesim.engine_dispatch.base import EngineRule, checked_weights
from moesim.engine_dispatch.sglang_nearest import sglang_weights

if TYPE_CHECKING:
    from moesim.placement import Placement
    from moesim.specs import ModelSpec

__all__ = ["SglangDynamic"]


class SglangDynamic(EngineRule):
    """Nearest replica, else a uniform draw per assignment: each rank's expected split."""

    name = "sglang-dynamic"
    summary = "nearest replica (same GPU, else same node), else a uniform draw per assignment"
    source = "SGLang 0.5.14 srt/eplb/expert_location_dispatch.py _topk_ids_logical_to_physical_dynamic"
    per_rank = True

    def weights(self, phy2log: np.ndarray, num_experts: int, num_gpus: int, gpus_per_node: int) -> np.ndarray:
        return sglang_weights(phy2log, num_experts, num_gpus, gpus_per_node)

    def view_weights(
        self, placement: Placement, gpus_per_node: int, model: ModelSpec | None, layers: Sequence[int] | None
    ) -> tuple[np.ndarray | None, dict[str, str]]:
        w = checked_weights(self, placement.phy2log, placement.num_experts, placement.num_gpus, gpus_per_node)
        return w.copy(), {}

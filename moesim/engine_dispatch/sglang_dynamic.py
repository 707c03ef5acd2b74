"""``sglang-dynamic``: the nearest replica, else a replica drawn uniformly per assignment (SGLang 0.5.14
``srt/eplb/expert_location_dispatch.py``, ``_topk_ids_logical_to_physical_dynamic``)."""

from __future__ import annotations

from moesim.engine_dispatch.sglang_nearest import NearestReplica

__all__ = ["SglangDynamic"]


class SglangDynamic(NearestReplica):
    """Nearest replica, else a uniform draw per assignment: each rank's expected split."""

    name = "sglang-dynamic"
    summary = "nearest replica (same GPU, else same node), else a uniform draw per assignment"
    source = "SGLang 0.5.14 srt/eplb/expert_location_dispatch.py _topk_ids_logical_to_physical_dynamic"

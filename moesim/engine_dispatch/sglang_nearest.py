"""SGLang's nearest replica (``_find_nearest_expert``, SGLang 0.5.14 ``python/sglang/srt/eplb/expert_location.py``),
shared by the ``sglang-static`` and ``sglang-dynamic`` rules: the only replica if there is one, else the
lowest-numbered replica on the rank's own GPU, else the lowest-numbered one on its own node. A rank with a
nearest replica sends it all its tokens of the expert; a rank without one splits ``1 / c_e`` per replica in
expectation (static: the expectation of the fair draw; dynamic: a uniform draw per assignment)::

    W[l, r, p] = 1                      if p is rank r's nearest replica of e(p)
               = 1 / c_e                if rank r has no nearest replica
               = 0                      otherwise
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from moesim.engine_dispatch.base import EngineRule, checked_weights, replica_counts

if TYPE_CHECKING:
    from moesim.placement import Placement
    from moesim.specs import ModelSpec

__all__ = ["NearestReplica", "sglang_nearest", "sglang_weights"]


def sglang_nearest(phy2log: np.ndarray, num_experts: int, num_gpus: int, gpus_per_node: int) -> np.ndarray:
    """``[L, G, E]`` the slot each rank's ``_find_nearest_expert`` returns, -1 where the rank has none.

    The only replica if there is one; else the lowest-numbered replica on the rank's GPU; else the
    lowest-numbered one on its node (candidates are listed in slot order, the first match wins).
    """
    phy2log = np.asarray(phy2log, dtype=np.int64)
    num_layers, num_slots = phy2log.shape
    spg = num_slots // num_gpus
    num_nodes = num_gpus // gpus_per_node
    gpu = np.arange(num_slots) // spg
    node = gpu // gpus_per_node
    big = np.iinfo(np.int64).max
    slots = np.broadcast_to(np.arange(num_slots), phy2log.shape)
    layer = np.broadcast_to(np.arange(num_layers)[:, None], phy2log.shape)
    first_gpu = np.full((num_layers, num_experts, num_gpus), big, dtype=np.int64)
    np.minimum.at(first_gpu, (layer, phy2log, np.broadcast_to(gpu, phy2log.shape)), slots)
    first_node = np.full((num_layers, num_experts, num_nodes), big, dtype=np.int64)
    np.minimum.at(first_node, (layer, phy2log, np.broadcast_to(node, phy2log.shape)), slots)
    only = first_node.min(axis=-1)  # [L, E] the lowest slot of each expert
    cnt = replica_counts(phy2log, num_experts)
    rank_node = np.arange(num_gpus) // gpus_per_node
    on_node = first_node[:, :, rank_node]  # [L, E, G]
    near = np.where(first_gpu < big, first_gpu, np.where(on_node < big, on_node, -1))
    near = np.where((cnt == 1)[:, :, None], only[:, :, None], near)
    return near.transpose(0, 2, 1)


def sglang_weights(phy2log: np.ndarray, num_experts: int, num_gpus: int, gpus_per_node: int) -> np.ndarray:
    """``W [L, G, P]`` of the nearest-replica rule (module docstring)."""
    phy2log = np.asarray(phy2log, dtype=np.int64)
    near = sglang_nearest(phy2log, num_experts, num_gpus, gpus_per_node)  # [L, G, E]
    cnt = replica_counts(phy2log, num_experts)
    target = np.take_along_axis(
        near, np.broadcast_to(phy2log[:, None, :], (near.shape[0], num_gpus, phy2log.shape[1])), axis=2
    )
    slot = np.arange(phy2log.shape[1])[None, None, :]
    fair = 1.0 / np.take_along_axis(cnt, phy2log, axis=1)[:, None, :]
    return np.where(target == slot, 1.0, 0.0) + np.where(target < 0, fair, 0.0)


class NearestReplica(EngineRule):
    """What ``sglang-static`` and ``sglang-dynamic`` share: the weights of :func:`sglang_weights`, and as the
    view each rank's expected split."""

    per_rank = True

    def weights(self, phy2log: np.ndarray, num_experts: int, num_gpus: int, gpus_per_node: int) -> np.ndarray:
        return sglang_weights(phy2log, num_experts, num_gpus, gpus_per_node)

    def view_weights(
        self, placement: Placement, gpus_per_node: int, model: ModelSpec | None, layers: Sequence[int] | None
    ) -> tuple[np.ndarray | None, dict[str, str]]:
        w = checked_weights(self, placement.phy2log, placement.num_experts, placement.num_gpus, gpus_per_node)
        return w.copy(), {}

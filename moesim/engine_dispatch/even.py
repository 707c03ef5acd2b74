"""``even``: every replica gets ``1 / c_e`` of every rank's tokens (``c_e`` replicas of expert e)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from moesim.engine_dispatch.base import EngineRule, even_weights

if TYPE_CHECKING:
    from moesim.placement import Placement
    from moesim.specs import ModelSpec

__all__ = ["Even"]


class Even(EngineRule):
    """Every rank splits alike: ``1 / c_e`` per replica."""

    name = "even"
    summary = "every replica 1/c of every rank's tokens"
    source = "moesim"
    per_rank = True

    def weights(self, phy2log: np.ndarray, num_experts: int, num_gpus: int, gpus_per_node: int) -> np.ndarray:
        return even_weights(phy2log, num_experts, num_gpus, gpus_per_node)

    def view_weights(
        self, placement: Placement, gpus_per_node: int, model: ModelSpec | None, layers: Sequence[int] | None
    ) -> tuple[np.ndarray | None, dict[str, str]]:
        return None, {}  # every rank alike

"""``placement``: the shares the placement states (moesim's own format; even for files of other engines)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from moesim.engine_dispatch.base import EngineRule
from moesim.errors import field_error

if TYPE_CHECKING:
    from moesim.placement import Placement
    from moesim.specs import ModelSpec

__all__ = ["PlacementShares"]


class PlacementShares(EngineRule):
    """The placement's own shares: no per-rank weights, the view is the placement itself."""

    name = "placement"
    summary = "the shares the placement file states"
    source = "moesim placement format"
    per_rank = False

    def weights(self, phy2log: np.ndarray, num_experts: int, num_gpus: int, gpus_per_node: int) -> np.ndarray:
        raise field_error("options", "engine", "'placement' has no per-rank weights; use engine_shares")

    def view_weights(
        self, placement: Placement, gpus_per_node: int, model: ModelSpec | None, layers: Sequence[int] | None
    ) -> tuple[np.ndarray | None, dict[str, str]]:
        return None, {}

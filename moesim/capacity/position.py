"""``position``: keep the first ``capacity`` assignments in (token, k) order, drop later tokens (Megatron's
``moe_token_drop_policy="position"``)."""

from __future__ import annotations

import numpy as np

from moesim.capacity.base import DropsOverflow

__all__ = ["Position"]


class Position(DropsOverflow):
    """First come, first kept; the overflow is dropped."""

    name = "position"
    needs_expert_gpu = False

    def order(self, flat_ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return np.argsort(flat_ids, kind="stable")

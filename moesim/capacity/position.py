"""``position``: keep the first ``capacity`` assignments in (token, k) order, drop later tokens (Megatron's
``moe_token_drop_policy="position"``)."""

from __future__ import annotations

import numpy as np

from moesim.capacity.base import DropPolicy, drop_overflow_counts

__all__ = ["Position"]


class Position(DropPolicy):
    """First come, first kept; the overflow is dropped."""

    name = "position"
    needs_expert_gpu = False

    def order(self, flat_ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return np.argsort(flat_ids, kind="stable")

    def place_overflow(
        self, new_ids: np.ndarray, keep: np.ndarray, capacity: int, expert_gpu: np.ndarray | None
    ) -> None:
        return None

    def place_overflow_counts(
        self, kept: np.ndarray, overflow: np.ndarray, capacity: np.ndarray, expert_gpu: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return drop_overflow_counts(kept, overflow)

"""``probs``: keep the ``capacity`` assignments with the highest router weight (ties: lower token index first,
then lower k slot), drop the rest (Megatron's ``moe_token_drop_policy="probs"``)."""

from __future__ import annotations

import numpy as np

from moesim.capacity.base import DropsOverflow

__all__ = ["Probs"]


class Probs(DropsOverflow):
    """Highest router weight first; the overflow is dropped."""

    name = "probs"
    needs_expert_gpu = False

    def order(self, flat_ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
        pos = np.arange(flat_ids.size, dtype=np.int64)  # (token, k) order
        # lexsort: last key is primary -> expert, then weight descending, then (token, k) position
        return np.lexsort((pos, -weights.reshape(-1).astype(np.float64), flat_ids))

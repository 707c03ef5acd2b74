"""The sequential schedule: no overlap, ``t = d + c + b``."""

from __future__ import annotations

import numpy as np

from moesim.overlap.base import Overlap

__all__ = ["Sequential"]


class Sequential(Overlap):
    """No overlap: ``d + c + b`` (the whole layer is one chunk)."""

    name = "sequential"
    chunks = 1

    @classmethod
    def build(cls, chunks: int = 1, sync_us: float = 0.0) -> Sequential:
        """Sequential ignores ``chunks`` and ``sync_us``: one chunk, nothing to synchronise."""
        return cls()

    def total_us(self, dispatch_us: np.ndarray, compute_us: np.ndarray, combine_us: np.ndarray) -> np.ndarray:
        return np.asarray(dispatch_us) + np.asarray(compute_us) + np.asarray(combine_us)

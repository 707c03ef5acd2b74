"""The N-chunk pipeline (Tutel / Comet idea): chunk i's compute overlaps chunk i+1's dispatch and chunk i-1's
combine.

Dispatch and combine share the GPU's links and copy engines, so they are one resource; compute is the other.
With per-chunk stage times ``d1, c1, b1`` the two-resource pipeline takes::

    t = d1 + c1 + b1 + (N - 1) * max(d1 + b1, c1) + (N - 1) * sync_us

``sync_us`` is the per-chunk synchronisation between the communication and compute streams (modelling
assumption: one event wait, the cost of a kernel launch). N = 1 would be the sequential ``d + c + b``.
"""

from __future__ import annotations

import numpy as np

from moesim.overlap.base import Overlap

__all__ = ["ChunkPipeline"]


class ChunkPipeline(Overlap):
    """N-chunk pipeline; the arguments of :meth:`total_us` are the times of ONE chunk of each stage."""

    name = "chunk-pipeline"

    def __init__(self, chunks: int, sync_us: float) -> None:
        if chunks < 2:
            raise ValueError("ChunkPipeline needs chunks >= 2; use Sequential")
        self.chunks = int(chunks)
        self.sync_us = float(sync_us)

    @classmethod
    def build(cls, chunks: int, sync_us: float) -> ChunkPipeline:
        return cls(chunks, sync_us)

    def total_us(self, dispatch_us: np.ndarray, compute_us: np.ndarray, combine_us: np.ndarray) -> np.ndarray:
        d1, c1, b1 = (np.asarray(x, dtype=np.float64) for x in (dispatch_us, compute_us, combine_us))
        n = self.chunks
        return d1 + c1 + b1 + (n - 1) * (np.maximum(d1 + b1, c1) + self.sync_us)

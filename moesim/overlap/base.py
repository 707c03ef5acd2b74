"""The overlap family's protocol: how dispatch, expert compute and combine of one layer add up in time.

Dimension legend: L MoE layers, G GPUs; every time is ``[L, G]`` microseconds.

A schedule gets the times of ONE chunk of each stage (the whole layer for the sequential schedule; the
simulator prices a chunk with its own fixed costs: per-hop latency, kernel launches, the lower link efficiency
of smaller messages and the expert weights re-read per chunk) and returns the layer's total.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Overlap"]


@runtime_checkable
class Overlap(Protocol):
    """An overlap schedule: total time of dispatch + compute + combine from per-chunk times (us)."""

    name: str  # the registry key (moesim.overlap.OVERLAPS)
    chunks: int  # chunks the layer's tokens are cut into (1: the whole layer at once)

    @classmethod
    def build(cls, chunks: int, sync_us: float) -> Overlap:
        """The schedule for ``chunks`` chunks with ``sync_us`` per-chunk stream synchronisation."""
        ...

    def total_us(self, dispatch_us: np.ndarray, compute_us: np.ndarray, combine_us: np.ndarray) -> np.ndarray:
        """``[L, G]`` layer time from the per-chunk stage times."""
        ...

"""Overlap of the all-to-all with expert compute, a family: :class:`~moesim.overlap.base.Overlap` is the
protocol, one file per schedule (:mod:`~moesim.overlap.sequential`, :mod:`~moesim.overlap.chunk_pipeline`),
:data:`OVERLAPS` the registry. The simulator's ``overlap_chunks`` option picks the schedule once
(:func:`make_overlap`): 1 chunk is sequential, more a chunk pipeline.

To add a schedule: a file with a class that follows :class:`Overlap` (``name``, ``chunks``, ``build``,
``total_us``), one entry in :data:`OVERLAPS`, and the rule in :func:`schedule_name` that selects it.
"""

from __future__ import annotations

from moesim.overlap.base import Overlap
from moesim.overlap.chunk_pipeline import ChunkPipeline
from moesim.overlap.sequential import Sequential

__all__ = ["OVERLAPS", "ChunkPipeline", "Overlap", "Sequential", "make_overlap", "schedule_name"]

# The overlap family's registry: schedule name -> member class (each follows Overlap).
OVERLAPS: dict[str, type[Overlap]] = {cls.name: cls for cls in (Sequential, ChunkPipeline)}


def schedule_name(chunks: int) -> str:
    """The schedule ``chunks`` pipeline chunks select: ``sequential`` for ``chunks <= 1``, else
    ``chunk-pipeline``."""
    return Sequential.name if chunks <= 1 else ChunkPipeline.name


def make_overlap(chunks: int, sync_us: float) -> Overlap:
    """Pick the strategy once: :class:`Sequential` for ``chunks <= 1``, else :class:`ChunkPipeline`."""
    return OVERLAPS[schedule_name(chunks)].build(chunks, sync_us)

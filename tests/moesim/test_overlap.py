"""Overlap schedules: the registry, the choice ``make_overlap`` makes, and the pipeline equation."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.overlap import OVERLAPS, ChunkPipeline, Overlap, Sequential, make_overlap, schedule_name


def test_registry_holds_every_schedule_by_its_name() -> None:
    assert OVERLAPS == {"sequential": Sequential, "chunk-pipeline": ChunkPipeline}
    for name, cls in OVERLAPS.items():
        schedule = cls.build(4, 1.0)
        assert isinstance(schedule, Overlap) and schedule.name == name


@pytest.mark.parametrize("chunks, expected", [(0, Sequential), (1, Sequential), (2, ChunkPipeline), (8, ChunkPipeline)])
def test_make_overlap_picks_by_chunks(chunks: int, expected: type) -> None:
    schedule = make_overlap(chunks, 3.0)
    assert type(schedule) is expected and schedule_name(chunks) == expected.name
    assert schedule.chunks == max(1, chunks)


def test_sequential_adds_the_stages() -> None:
    d, c, b = np.array([[1.0, 2.0]]), np.array([[10.0, 20.0]]), np.array([[0.5, 0.5]])
    np.testing.assert_allclose(Sequential().total_us(d, c, b), [[11.5, 22.5]])


def test_pipeline_equation() -> None:
    """``t = d1 + c1 + b1 + (N - 1) * (max(d1 + b1, c1) + sync)``: compute-bound and link-bound chunks."""
    d1, c1, b1 = np.array([2.0, 6.0]), np.array([5.0, 1.0]), np.array([1.0, 2.0])
    t = ChunkPipeline(4, 0.5).total_us(d1, c1, b1)
    np.testing.assert_allclose(t, [8.0 + 3 * (5.0 + 0.5), 9.0 + 3 * (8.0 + 0.5)])


def test_pipeline_of_one_chunk_is_refused() -> None:
    with pytest.raises(ValueError, match="chunks >= 2"):
        ChunkPipeline(1, 0.0)

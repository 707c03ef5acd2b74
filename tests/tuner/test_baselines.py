"""Contiguous (Megatron) and round-robin (vLLM) baselines."""

import numpy as np
import pytest

from moesim.errors import PlacementError
from tuner.baselines import contiguous, round_robin


def test_round_robin_matches_vllm_expert_map() -> None:
    # vLLM determine_expert_map, round_robin: rank r holds arange(r, E, ep_size) as local experts 0, 1, ...
    p = round_robin(16, 4, 2)
    p.validate()
    assert p.slots_per_gpu == 4
    for g in range(4):
        assert p.phy2log[0, g * 4:(g + 1) * 4].tolist() == list(range(g, 16, 4))
    assert np.all(p.shares == 1.0)


def test_contiguous_blocks() -> None:
    p = contiguous(16, 4, 1)
    assert p.phy2log[0, 4:8].tolist() == [4, 5, 6, 7]


def test_round_robin_spreads_hot_neighbours() -> None:
    counts = np.zeros((1, 16))
    counts[0, :4] = 100.0  # four hot experts with adjacent ids
    counts[0, 4:] = 1.0
    assert round_robin(16, 4, 1).gpu_loads(counts).max() < contiguous(16, 4, 1).gpu_loads(counts).max()


def test_uneven_rejected() -> None:
    with pytest.raises(PlacementError):
        round_robin(10, 4, 1)

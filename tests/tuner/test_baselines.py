"""Contiguous (Megatron) and round-robin (vLLM) baselines."""

import numpy as np
import pytest

from moesim.errors import PlacementError
from tuner.baselines import contiguous, round_robin


def vllm_expert_map(ep_size: int, ep_rank: int, num_experts: int, strategy: str) -> np.ndarray:
    """vLLM's determine_expert_map restated: [E] global id -> local id on this rank, -1 elsewhere.

    The first E % ep_size ranks hold one extra expert; linear ranks hold a contiguous run starting at
    r*(E//G) + min(r, E%G), round_robin ranks hold r, r+G, r+2G, ... in that local order.
    """
    base, rem = divmod(num_experts, ep_size)
    local = base + (ep_rank < rem)
    if strategy == "linear":
        held = np.arange(local) + ep_rank * base + min(ep_rank, rem)
    else:
        held = np.arange(ep_rank, num_experts, ep_size)
    emap = np.full(num_experts, -1, dtype=np.int32)
    emap[held] = np.arange(local)
    return emap


def placement_expert_map(p, gpu: int, layer: int = 0) -> np.ndarray:
    """Our placement as a vLLM expert_map: the expert in slot i of GPU g is local expert i."""
    emap = np.full(p.num_experts, -1, dtype=np.int32)
    emap[p.phy2log[layer, gpu * p.slots_per_gpu : (gpu + 1) * p.slots_per_gpu]] = np.arange(p.slots_per_gpu)
    return emap


@pytest.mark.parametrize("E,G", [(8, 2), (16, 4), (64, 8), (256, 32), (12, 12)])
@pytest.mark.parametrize("ours,strategy", [(round_robin, "round_robin"), (contiguous, "linear")])
def test_baselines_equal_vllm_expert_maps(E, G, ours, strategy) -> None:
    p = ours(E, G, 3)
    p.validate()
    for layer in range(3):
        for g in range(G):
            assert placement_expert_map(p, g, layer).tolist() == vllm_expert_map(G, g, E, strategy).tolist()


def test_vllm_uneven_split_restated() -> None:
    # E=10 on 4 ranks: 3, 3, 2, 2 experts; every expert on exactly one rank
    for strategy, want in (
        ("linear", [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]),
        ("round_robin", [[0, 4, 8], [1, 5, 9], [2, 6], [3, 7]]),
    ):
        maps = [vllm_expert_map(4, r, 10, strategy) for r in range(4)]
        assert [np.flatnonzero(m >= 0).tolist() for m in maps] == want
        assert [m[m >= 0].tolist() for m in maps] == [list(range(len(w))) for w in want]


def test_round_robin_matches_vllm_expert_map() -> None:
    # vLLM determine_expert_map, round_robin: rank r holds arange(r, E, ep_size) as local experts 0, 1, ...
    p = round_robin(16, 4, 2)
    p.validate()
    assert p.slots_per_gpu == 4
    for g in range(4):
        assert p.phy2log[0, g * 4 : (g + 1) * 4].tolist() == list(range(g, 16, 4))
    assert np.all(p.shares == 1.0)


def test_contiguous_blocks() -> None:
    p = contiguous(16, 4, 1)
    assert p.phy2log[0, 4:8].tolist() == [4, 5, 6, 7]


def test_round_robin_spreads_hot_neighbours() -> None:
    counts = np.zeros((1, 16))
    counts[0, :4] = 100.0  # four hot experts with adjacent ids
    counts[0, 4:] = 1.0
    assert round_robin(16, 4, 1).gpu_loads(counts).max() < contiguous(16, 4, 1).gpu_loads(counts).max()


def test_uneven_round_robin_rejected_contiguous_padded() -> None:
    # vLLM would give the first E % G ranks an extra expert; our placements need equal slot counts, so
    # round-robin refuses and contiguous pads the last GPUs with share-0 copies (the default is valid for any E, G)
    with pytest.raises(PlacementError):
        round_robin(10, 4, 1)
    p = contiguous(10, 4, 1)
    p.validate()
    assert p.slots_per_gpu == 3 and p.phy2log[0, :10].tolist() == list(range(10))
    assert p.shares[0, :10].tolist() == [1.0] * 10 and p.shares[0, 10:].tolist() == [0.0, 0.0]

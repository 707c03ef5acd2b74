"""The reference replan: relabelling a placement from scratch to keep the deployed map, and counting its moves."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from moesim.errors import PlacementError
from moesim.placement import Placement
from tuner.plan import place
from tuner.rebalance.replan import align_to, as_placement, full_replan, replan_moves


def _gpu_sets(row: np.ndarray, S: int) -> list[frozenset[int]]:
    return [frozenset(row[g * S : (g + 1) * S].tolist()) for g in range(len(row) // S)]


def _kept(current: np.ndarray, new: np.ndarray, S: int) -> int:
    """Replicas of ``new`` already on their GPU in ``current`` (no expert twice on one GPU)."""
    return sum(len(a & b) for a, b in zip(_gpu_sets(current, S), _gpu_sets(new, S)))


def _kept_in_node(current: np.ndarray, new: np.ndarray, S: int, gpn: int) -> int:
    """Replicas of ``new`` already on their node in ``current`` (no expert twice on one node)."""
    return sum(len(a & b) for a, b in zip(_gpu_sets(current, gpn * S), _gpu_sets(new, gpn * S)))


def _random_map(rng: np.random.Generator, G: int, S: int, E: int, group: int = 1) -> np.ndarray:
    """A ``[G*S]`` map holding every expert, no expert twice within ``group`` consecutive GPUs."""
    while True:
        row = rng.permutation(np.concatenate([np.arange(E), rng.choice(E, G * S - E, replace=False)]))
        if all(len(s) == group * S for s in _gpu_sets(row, group * S)):
            return row


def _moves_by_hand(full: np.ndarray, deployed: np.ndarray, S: int) -> list[int]:
    """Per layer, the slots of ``full`` whose expert the GPU did not hold in ``deployed``."""
    out = []
    for f, d in zip(full, deployed):
        held = _gpu_sets(d, S)
        out.append(sum(int(e not in held[p // S]) for p, e in enumerate(f.tolist())))
    return out


def _relabel(row: np.ndarray, gpu_order: np.ndarray, S: int, rng: np.random.Generator) -> np.ndarray:
    """``row`` with GPU ``gpu_order[i]``'s slots (shuffled) at GPU i."""
    return np.concatenate([rng.permutation(row[g * S : (g + 1) * S]) for g in gpu_order])


# --------------------------------------------------------------------------------------------------------- align_to
def test_align_worked_example() -> None:
    """4 GPUs, 2 nodes, 2 slots. By node the new map keeps 3 experts with nodes swapped, 1 without; within the
    nodes GPU 0->3, 1->2, 2->1, 3->0; the kept experts 1 and 5 go back to their slots."""
    current = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    new = np.array([6, 7, 5, 0, 2, 3, 1, 4])
    out = align_to(current, new, num_gpus=4, gpus_per_node=2)
    np.testing.assert_array_equal(out, [4, 1, 2, 3, 0, 5, 6, 7])
    assert _kept(current, out, 2) == 6 and _kept(current, new, 2) == 0
    assert replan_moves(out[None], current[None], 4, 8) == [2]
    assert replan_moves(new[None], current[None], 4, 8) == [8]
    # the input is not modified
    np.testing.assert_array_equal(new, [6, 7, 5, 0, 2, 3, 1, 4])


def test_align_of_the_deployed_map_itself_is_the_identity() -> None:
    rng = np.random.default_rng(3)
    current = rng.permutation(np.concatenate([np.arange(64), np.arange(16)]))
    np.testing.assert_array_equal(align_to(current, current.copy(), 16, 8), current)


@pytest.mark.parametrize("seed", range(5))
def test_align_only_relabels_gpus_and_respects_nodes(seed: int) -> None:
    """The output is the new map's GPUs moved as whole nodes (and within nodes), slots reordered; no expert
    enters or leaves a GPU, and no GPU changes node company."""
    rng = np.random.default_rng(seed)
    G, gpn, S, E = 6, 2, 3, 14
    current, new = _random_map(rng, G, S, E, group=gpn), _random_map(rng, G, S, E, group=gpn)
    out = align_to(current, new, G, gpn)
    assert out.dtype == new.dtype and out.shape == new.shape
    new_sets, out_sets = _gpu_sets(new, S), _gpu_sets(out, S)
    assert sorted(map(sorted, new_sets)) == sorted(map(sorted, out_sets))
    where = {s: g for g, s in enumerate(out_sets)}
    target = [where[s] for s in new_sets]  # new GPU -> output GPU
    for n in range(G // gpn):
        assert len({target[g] // gpn for g in range(n * gpn, (n + 1) * gpn)}) == 1
    # a kept expert sits in the slot it has in the deployed map
    for p in range(G * S):
        g = p // S
        if current[p] in out_sets[g]:
            assert out[p] == current[p]
    # node stage: no relabelling of nodes keeps more experts within their node
    orders = [
        np.concatenate([np.arange(n * gpn, (n + 1) * gpn) for n in nodes])
        for nodes in itertools.permutations(range(G // gpn))
    ]
    best = max(_kept_in_node(current, _relabel(new, order, S, rng), S, gpn) for order in orders)
    assert _kept_in_node(current, out, S, gpn) == best


def test_align_on_one_node_keeps_the_most_experts_of_any_relabelling() -> None:
    """One node: the GPU assignment alone decides, and it is optimal over all 4! GPU orders."""
    rng = np.random.default_rng(11)
    G, S, E = 4, 3, 10
    for _ in range(10):
        current, new = _random_map(rng, G, S, E), _random_map(rng, G, S, E)
        out = align_to(current, new, G, G)
        best = max(_kept(current, _relabel(new, np.array(p), S, rng), S) for p in itertools.permutations(range(G)))
        assert _kept(current, out, S) == best
        assert _moves_by_hand(out[None], current[None], S) == [G * S - best]


# ---------------------------------------------------------------------------------------------------- replan_moves
def test_replan_moves_counts_replicas_loaded_onto_gpus_without_them() -> None:
    # 2 GPUs x 3 slots, 4 experts; layer 0 unchanged; layer 1: GPU 0 gains expert 3 twice over (two loads),
    # GPU 1 swaps slots only; layer 2: the GPUs trade contents entirely
    deployed = np.array([[0, 1, 2, 3, 0, 1], [0, 1, 2, 3, 0, 1], [0, 1, 2, 3, 3, 3]])
    full = np.array([[0, 1, 2, 3, 0, 1], [3, 3, 2, 1, 3, 0], [3, 3, 3, 0, 1, 2]])
    moves = replan_moves(full, deployed, num_gpus=2, num_experts=4)
    assert moves == [0, 2, 6] == _moves_by_hand(full, deployed, 3)
    assert all(type(m) is int for m in moves)


def test_replan_moves_matches_a_count_by_hand_on_random_maps() -> None:
    rng = np.random.default_rng(5)
    G, S, E, L = 6, 4, 16, 4
    base = np.concatenate([np.arange(E), np.arange(G * S - E)])
    deployed = np.stack([rng.permutation(base) for _ in range(L)])
    full = np.stack([rng.permutation(base) for _ in range(L)])
    assert replan_moves(full, deployed, G, E) == _moves_by_hand(full, deployed, S)
    assert replan_moves(deployed, deployed, G, E) == [0] * L


# ---------------------------------------------------------------------------------------------------- as_placement
def test_as_placement_splits_each_expert_evenly_over_its_replicas() -> None:
    rows = np.array([[0, 1, 2, 0, 0, 3], [1, 1, 2, 3, 0, 2]])
    p = as_placement(rows, num_gpus=3, num_experts=4)
    assert isinstance(p, Placement)
    assert (p.num_gpus, p.slots_per_gpu, p.num_experts, p.num_layers) == (3, 2, 4, 2)
    np.testing.assert_array_equal(p.phy2log, rows)
    third, half = 1 / 3, 1 / 2
    np.testing.assert_allclose(p.shares, [[third, 1, 1, third, third, 1], [half, half, half, 1, 1, half]])
    p.validate()  # every expert's shares sum to 1


def test_as_placement_of_a_map_missing_an_expert_does_not_validate() -> None:
    p = as_placement(np.array([[0, 1, 1, 2]]), num_gpus=2, num_experts=4)  # expert 3 has no slot
    with pytest.raises(PlacementError, match=r"^placement: layers\[0\]: expert 3 has no replica") as err:
        p.validate()
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------------- full_replan
def _replan(replan, olmoe_traces, trace, redundant=16, time_limit_s=5.0):
    model, cluster, *_ = olmoe_traces
    return full_replan(replan, model, cluster, trace, redundant, "sglang-static", 4096, time_limit_s, "highs", None)


def test_eplb_replan_is_the_engines_placement_for_the_trace(olmoe_traces) -> None:
    model, cluster, c4, github = olmoe_traces
    raw = _replan("eplb", olmoe_traces, github)
    assert raw.shape == (len(github.layers), model.num_experts + 16)
    assert all(set(row.tolist()) == set(range(model.num_experts)) for row in raw)
    # replanning for the deployed trace gives back the deployed map: nothing to move
    deployed = place("eplb", model, cluster, c4, redundant_experts=16, engine="sglang-static").phy2log
    same = _replan("eplb", olmoe_traces, c4)
    aligned = np.stack([align_to(d, s, 16, 8) for d, s in zip(deployed, same)])
    assert replan_moves(aligned, deployed, 16, 64) == [0] * len(c4.layers)


def test_relabelling_the_eplb_replan_saves_moves(olmoe_traces) -> None:
    model, cluster, c4, github = olmoe_traces
    deployed = place("eplb", model, cluster, c4, redundant_experts=16, engine="sglang-static").phy2log
    raw = _replan("eplb", olmoe_traces, github)
    aligned = np.stack([align_to(d, r, 16, 8) for d, r in zip(deployed, raw)])
    before, after = replan_moves(raw, deployed, 16, 64), replan_moves(aligned, deployed, 16, 64)
    assert after == _moves_by_hand(aligned, deployed, 5)
    assert all(a < b for a, b in zip(after, before)), (before, after)
    # the relabelled rows are the same placement: the per-GPU contents of each layer are the raw ones
    for r, a in zip(raw, aligned):
        assert sorted(map(sorted, _gpu_sets(r, 5))) == sorted(map(sorted, _gpu_sets(a, 5)))


def test_ilp_replan_holds_every_expert_in_the_slots_there_are(olmoe_traces) -> None:
    model, _, _, github = olmoe_traces
    raw = _replan("ilp", olmoe_traces, github, redundant=0, time_limit_s=1.0)
    assert raw.shape == (len(github.layers), model.num_experts)
    for row in raw:
        assert sorted(row.tolist()) == list(range(model.num_experts))  # no spare slot: each expert once

"""Capacity and drop policies: Megatron's capacity, the three policies, and counts-vs-tokens agreement."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.capacity import (
    apply_capacity,
    apply_capacity_counts,
    apply_capacity_counts_batched,
    capacity_per_expert,
)
from moesim.errors import SpecError


def test_capacity_megatron_definition() -> None:
    assert capacity_per_expert(4096, 8, 256, 1.0) == 128
    assert capacity_per_expert(4096, 8, 256, 1.25) == 160  # exact, no float ulp rounding up to 161
    assert capacity_per_expert(10, 2, 8, 1.0) == 3  # ceil(2.5)
    assert capacity_per_expert(0, 2, 8, 1.0) == 0
    with pytest.raises(SpecError):
        capacity_per_expert(10, 2, 8, 0.0)


def test_position_keeps_first_tokens() -> None:
    ids = np.array([[0, 1], [0, 2], [0, 1], [1, 0]])
    w = np.ones_like(ids, dtype=float)
    new, keep = apply_capacity(ids, w, capacity=2, policy="position")
    assert (new == ids).all()
    # expert 0 is chosen by tokens 0,1,2,3: tokens 2 and 3 lose it; expert 1 by tokens 0,2,3: token 3 loses it
    assert keep.tolist() == [[True, True], [True, True], [False, True], [False, False]]


def test_probs_keeps_highest_weights_ties_by_token() -> None:
    ids = np.array([[0], [0], [0], [0]])
    w = np.array([[0.1], [0.9], [0.5], [0.9]])
    _, keep = apply_capacity(ids, w, capacity=2, policy="probs")
    assert keep[:, 0].tolist() == [False, True, False, True]
    _, keep = apply_capacity(ids, np.full((4, 1), 0.3), capacity=3, policy="probs")
    assert keep[:, 0].tolist() == [True, True, True, False]


def test_reroute_to_least_loaded_on_same_gpu() -> None:
    # experts 0..3 on GPU 0, 4..7 on GPU 1
    expert_gpu = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    ids = np.array([[0, 1], [0, 2], [0, 1], [0, 4], [0, 5]])
    w = np.ones_like(ids, dtype=float)
    new, keep = apply_capacity(ids, w, capacity=2, policy="reroute", expert_gpu=expert_gpu)
    # expert 0 overflows at tokens 2, 3, 4. Loads before: e0=2, e1=1 (token 0), e2=1, e3=0 ... e1 gets token 2
    # later, so at the time of the first overflow (token 2, slot 0) loads are e1=2 (tokens 0,2), e2=1, e3=0.
    assert keep.all()
    assert new[2, 0] == 3  # least loaded: e3 (0)
    assert new[3, 0] in (2, 3)
    assert new[3, 0] == 2  # e2=1, e3=1 -> lowest id
    assert new[4, 0] == 3  # e2=2 (full), e3=1
    counts = np.bincount(new.ravel(), minlength=8)
    assert counts.max() <= 2


def test_reroute_skips_experts_token_already_has() -> None:
    expert_gpu = np.array([0, 0, 1, 1])
    ids = np.array([[0, 1], [0, 1]])
    new, keep = apply_capacity(ids, np.ones((2, 2)), capacity=1, policy="reroute", expert_gpu=expert_gpu)
    # token 1 overflows both e0 and e1; the only other expert on GPU 0 is e1 / e0 respectively, which the
    # token already holds -> dropped
    assert keep.tolist() == [[True, True], [False, False]]
    assert (new == ids).all()


def test_bad_policy_is_one_line_error() -> None:
    with pytest.raises(SpecError, match="drop_policy"):
        apply_capacity_counts(np.array([3, 1]), 1, "random")
    with pytest.raises(SpecError, match="expert_gpu"):
        apply_capacity_counts(np.array([3, 1]), 1, "reroute")


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 4),
    st.integers(1, 3),
    st.sampled_from(["probs", "position", "reroute"]),
    st.integers(0, 2**31 - 1),
    st.floats(0.3, 2.0),
)
def test_counts_agree_with_tokens(tokens, experts_per_gpu, gpus, policy, seed, factor) -> None:
    """The counts-only path gives the per-expert kept counts of the exact per-token path.

    With top-1 routing a token never holds another expert, so the reroute rule the counts path cannot see
    never fires and both must agree exactly.
    """
    rng = np.random.default_rng(seed)
    num_experts = experts_per_gpu * gpus
    probs = rng.dirichlet(np.full(num_experts, 0.5))
    ids = rng.choice(num_experts, size=(tokens, 1), p=probs)
    w = rng.random((tokens, 1))
    cap = capacity_per_expert(tokens, 1, num_experts, factor)
    expert_gpu = np.repeat(np.arange(gpus), experts_per_gpu)
    new, keep = apply_capacity(ids, w, cap, policy, expert_gpu)
    kept_tok = np.bincount(new[keep], minlength=num_experts)
    counts = np.bincount(ids.ravel(), minlength=num_experts)
    kept, dropped, rerouted = apply_capacity_counts(counts, cap, policy, expert_gpu)
    assert kept.tolist() == kept_tok.tolist()
    assert dropped == int((~keep).sum())
    assert rerouted == int((new != ids).sum())
    assert kept.sum() + dropped == counts.sum()
    assert kept.max(initial=0) <= cap


def test_batched_matches_single_and_conserves() -> None:
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 50, size=(5, 16))
    expert_gpu = np.repeat(np.arange(4), 4)
    kept, dropped, rerouted = apply_capacity_counts_batched(counts, 20, "reroute", expert_gpu)
    for layer in range(5):
        k1, d1, r1 = apply_capacity_counts(counts[layer], 20, "reroute", expert_gpu)
        assert k1.tolist() == kept[layer].tolist()
        assert (d1, r1) == (dropped[layer], rerouted[layer])
    assert (kept.sum(1) + dropped == counts.sum(1)).all()
    assert kept.max() <= 20


def test_drop_policy_registry() -> None:
    """Every drop policy follows the DropPolicy protocol under its registry name, in the documented order."""
    from moesim.capacity import DROP_POLICIES, DropPolicy

    assert tuple(DROP_POLICIES) == ("probs", "position", "reroute")
    for name, member in DROP_POLICIES.items():
        assert isinstance(member, DropPolicy) and member.name == name
    assert [m.needs_expert_gpu for m in DROP_POLICIES.values()] == [False, False, True]

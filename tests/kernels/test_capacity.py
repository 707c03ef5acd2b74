"""kernels.capacity (torch) agrees exactly with moesim.capacity (numpy) on which assignments are dropped/moved."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.capacity import apply_capacity, capacity_per_expert

moesim_capacity = pytest.importorskip("moesim.capacity", reason="moesim.capacity not written yet")


def random_routing(rng, T, E, k, skew):
    p = 1.0 / np.arange(1, E + 1) ** skew
    p /= p.sum()
    ids = np.stack([rng.choice(E, size=k, replace=False, p=p) for _ in range(T)]).astype(np.int64)
    # weights with deliberate ties (rounded) so the tie-break rule is exercised
    w = np.round(rng.dirichlet(np.ones(k), size=T), 1)
    return ids, w


@pytest.mark.parametrize("policy", ["probs", "position", "reroute"])
@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_moesim(policy, seed):
    rng = np.random.default_rng(seed)
    T = int(rng.integers(1, 120))
    E = int(rng.choice([2, 4, 8, 16, 32]))
    k = int(rng.integers(1, min(E, 8) + 1))
    ids, w = random_routing(rng, T, E, k, skew=float(rng.uniform(0, 2)))
    factor = float(rng.choice([0.5, 1.0, 1.25, 2.0]))
    cap = moesim_capacity.capacity_per_expert(T, k, E, factor)
    assert cap == capacity_per_expert(T, k, E, factor)
    gpus = int(rng.choice([1, 2, 4])) if E >= 4 else 1
    egpu = np.arange(E) % gpus if seed % 2 else np.arange(E) * gpus // E
    new_np, keep_np = moesim_capacity.apply_capacity(ids, w, cap, policy, egpu if policy == "reroute" else None)
    new_t, keep_t = apply_capacity(
        torch.from_numpy(ids), torch.from_numpy(w), cap, policy, torch.from_numpy(egpu) if policy == "reroute" else None
    )
    np.testing.assert_array_equal(keep_t.numpy(), keep_np)
    np.testing.assert_array_equal(new_t.numpy(), new_np)
    # the rule itself: no expert above capacity among kept assignments
    kept_ids = new_t[keep_t]
    assert (torch.bincount(kept_ids, minlength=E) <= cap).all()


def test_probs_keeps_highest_weights_with_position_ties():
    ids = torch.tensor([[0], [0], [0], [0]])
    w = torch.tensor([[0.2], [0.9], [0.2], [0.5]])
    _, keep = apply_capacity(ids, w, 2, "probs")
    assert keep.flatten().tolist() == [False, True, False, True]
    _, keep = apply_capacity(ids, w, 3, "probs")
    assert keep.flatten().tolist() == [True, True, False, True]  # tie 0.2: lower token index first


def test_reroute_skips_experts_the_token_already_has():
    ids = torch.tensor([[0, 1], [0, 1], [0, 2]])
    w = torch.full((3, 2), 0.5)
    new, keep = apply_capacity(ids, w, 1, "reroute", torch.tensor([0, 0, 0, 0]))
    # loads after "position": [1, 1, 1, 0]. Token 1's overflow on expert 0 goes to expert 3 (the only one with
    # room); its overflow on expert 1 and token 2's on expert 0 find no room and are dropped.
    assert new.tolist() == [[0, 1], [3, 1], [0, 2]]
    assert keep.tolist() == [[True, True], [True, False], [False, True]]


def test_bad_policy():
    with pytest.raises(ValueError, match="drop_policy"):
        apply_capacity(torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1), 1, "random")


@pytest.mark.parametrize("policy", ["probs", "position", "reroute"])
def test_kernel_path_drops_what_moesim_drops(device, policy):
    """fused_moe(capacity=...) equals the float64 reference run on moesim's own decision (dropped assignments
    weighted 0, rerouted ones sent to their new expert)."""
    from kernels import fused_moe, reference_moe

    rng = np.random.default_rng(42)
    T, E, k, N, K = 48, 8, 2, 32, 32
    ids, w = random_routing(rng, T, E, k, skew=1.5)
    cap = moesim_capacity.capacity_per_expert(T, k, E, 1.0)
    egpu = np.arange(E) // 4
    new_np, keep_np = moesim_capacity.apply_capacity(ids, w, cap, policy, egpu if policy == "reroute" else None)
    assert not keep_np.all()  # the capacity binds
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(T, K, generator=gen, dtype=torch.float64)
    w1 = torch.randn(E, 2 * N, K, generator=gen, dtype=torch.float64) / K**0.5
    w2 = torch.randn(E, K, N, generator=gen, dtype=torch.float64) / N**0.5
    tw = torch.from_numpy(w)
    ref = reference_moe(h, w1, w2, tw * torch.from_numpy(keep_np), torch.from_numpy(new_np))
    out = fused_moe(
        h.float().to(device),
        w1.float().to(device),
        w2.float().to(device),
        tw.float().to(device),
        torch.from_numpy(ids).to(torch.int32).to(device),
        capacity=cap,
        drop_policy=policy,
        expert_gpu=torch.from_numpy(egpu).to(device) if policy == "reroute" else None,
        config={
            "BLOCK_SIZE_M": 16,
            "BLOCK_SIZE_N": 32,
            "BLOCK_SIZE_K": 32,
            "GROUP_SIZE_M": 1,
            "num_warps": 4,
            "num_stages": 2,
        },
    )
    assert float((out.double().cpu() - ref).norm() / ref.norm()) < 1e-5

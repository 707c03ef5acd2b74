"""What a rebalance moves and how long it stops serving."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moesim.dispatch import link_classes
from moesim.specs import load_cluster
from tuner.engine_facts import facts_for
from tuner.rebalance.move_cost import move_cost, payoff_steps


def test_bytes_by_link_class_and_the_stall() -> None:
    cluster = load_cluster("h100-2x8-ib400")  # 2 nodes x 8 GPUs
    S = 2
    # GPU g holds experts 2g, 2g+1 (mod 16): each node holds all 16 experts, so every move stays on its node
    current = np.array([[2 * g % 16, (2 * g + 1) % 16] for g in range(16)]).ravel()[None]
    new = current.copy()
    new[0, 1] = 2  # GPU 0 takes expert 2 from GPU 1
    new[0, 2 * 9] = 4  # GPU 9 takes expert 4 from GPU 10 (its node), not GPU 2
    new[0, 2 * 3 + 1] = 14  # GPU 3 takes expert 14 from GPU 7
    new[0, 2 * 12] = 2  # GPU 12 takes expert 2 from GPU 9
    expert_bytes = 1e8
    mc = move_cost(current, new, S, cluster, expert_bytes, "sglang-static")
    assert mc.moves == 4 and mc.moves_per_layer == (4,)
    assert mc.bytes_intra == 4 * expert_bytes and mc.bytes_network == 0
    one = current.copy()
    one[0, 0] = 3  # one move: GPU 0 takes expert 3 from GPU 1
    links = link_classes(cluster)
    eff = cluster.efficiency(0, expert_bytes)
    single = move_cost(current, one, S, cluster, expert_bytes, "sglang-static")
    assert single.transfer_s == pytest.approx(expert_bytes / (links.nvl_bw_gb_s * 1e9 * eff))
    assert single.stall_s == pytest.approx(single.transfer_s + facts_for("sglang-static").host_overhead_s)
    overlapped = move_cost(current, one, S, cluster, expert_bytes, "sglang-static", synchronous=False)
    assert overlapped.stall_s == 0 and overlapped.transfer_s == single.transfer_s
    assert move_cost(current, current, S, cluster, expert_bytes).stall_s == 0


def test_network_moves_spread_over_the_holders() -> None:
    cluster = load_cluster("h100-2x8-ib400")
    S = 2
    # experts 0..15 on node 0 (GPU g holds 2g, 2g+1), experts 16..31 on node 1
    current = np.concatenate([np.arange(16), np.arange(16, 32)])[None]
    new = current.copy()
    for g in range(8, 16):  # every GPU of node 1 takes one expert of node 0's GPU 0 or 1 (experts 0..3)
        new[0, g * S] = g % 4
    mc = move_cost(current, new, S, cluster, 1e8, "sglang-static")
    assert mc.moves == 8 and mc.bytes_network == 8e8 and mc.bytes_intra == 0
    links = link_classes(cluster)
    # experts 0, 1 live on GPU 0 and 2, 3 on GPU 1: each sends four copies over its own NIC
    expected = 4e8 / (links.nic_bw_gb_s * 1e9 * cluster.efficiency(1, 1e8))
    assert mc.transfer_s == pytest.approx(expected)


def test_payoff() -> None:
    assert payoff_steps(2.0, 0.01) == pytest.approx(200)
    assert payoff_steps(0.0, 0.0) == 0
    assert math.isinf(payoff_steps(1.0, 0.0))

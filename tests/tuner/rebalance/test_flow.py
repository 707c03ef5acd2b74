"""Rebalancing a deployed placement: the replan's relabelling, the curve, the choice, the plan it writes."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.errors import PlacementError
from moesim.specs import load_cluster, load_model
from tuner.plan import place
from tuner.rebalance.flow import rebalance
from tuner.rebalance.replan import align_to


@pytest.fixture(scope="module")
def olmoe(olmoe_traces):
    model, cluster, c4, github = olmoe_traces
    deployed = place("eplb", model, cluster, c4, redundant_experts=16, engine="sglang-static")
    return model, cluster, c4, github, deployed.with_meta(layers=list(c4.layers))


def test_align_undoes_a_relabelling() -> None:
    rng = np.random.default_rng(0)
    G, gpn, S, E = 16, 8, 5, 64
    current = rng.permutation(np.concatenate([np.arange(E), np.arange(16)]))
    # the same placement with nodes swapped, GPUs shuffled within nodes and slots within GPUs
    gpus = np.concatenate([8 + rng.permutation(8), rng.permutation(8)])
    relabelled = np.concatenate([rng.permutation(current[g * S : (g + 1) * S]) for g in gpus])
    back = align_to(current, relabelled, G, gpn)
    np.testing.assert_array_equal(back, current)


def test_rebalance_curve_and_choice(olmoe) -> None:
    model, cluster, _, github, deployed = olmoe
    r = rebalance(model, cluster, github, deployed, engine="sglang-static", time_limit_s=10, max_moves=12)
    assert r.current.moves == 0 and r.current.step_gain_us == 0
    moves = [m for m, _ in r.curve]
    objectives = [o for _, o in r.curve]
    assert moves == sorted(moves) and objectives == sorted(objectives, reverse=True)
    assert r.chosen.moves <= 12 and r.chosen.step_gain_us > 0
    assert r.replan.moves > r.chosen.moves
    assert [p.moves for p in r.points] == sorted(p.moves for p in r.points)
    for p in r.points:
        assert p.cost.moves == p.moves == sum(p.cost.moves_per_layer)
        assert p.gain_fraction == pytest.approx(p.step_gain_us / r.replan.step_gain_us)
        # the gain is the simulated latency drop of the recorded layers
        drop = np.sum(np.asarray(r.current.layer_latencies_us) - np.asarray(p.layer_latencies_us))
        assert p.step_gain_us == pytest.approx(drop)
    # the written plan: the chosen rows, every expert still held, other fields as deployed
    out = r.placement
    assert out.num_gpus == deployed.num_gpus and out.slots_per_gpu == deployed.slots_per_gpu
    np.testing.assert_array_equal(out.phy2log, r.chosen.rows)
    assert all(set(row.tolist()) == set(range(model.num_experts)) for row in out.phy2log)


def test_target_gain_takes_the_fewest_moves(olmoe) -> None:
    model, cluster, _, github, deployed = olmoe
    r = rebalance(model, cluster, github, deployed, engine="sglang-static", time_limit_s=10, target_gain=0.5)
    assert r.chosen.step_gain_us >= 0.5 * r.replan.step_gain_us
    smaller = [p for p in r.points if p.moves < r.chosen.moves]
    assert all(p.step_gain_us < 0.5 * r.replan.step_gain_us for p in smaller)


def test_rebalance_refuses_another_cluster_or_model(olmoe) -> None:
    model, _, _, github, deployed = olmoe
    with pytest.raises(PlacementError, match="num_gpus"):
        rebalance(model, load_cluster("dgx-h100"), github, deployed)
    mixtral = load_model("mixtral-8x7b")
    with pytest.raises(Exception, match="model|num_experts"):
        rebalance(mixtral, load_cluster("h100-2x8-ib400"), github, deployed)

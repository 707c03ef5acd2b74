"""Node-spread placement: replicas on distinct nodes, so SGLang's nearest-replica rule splits them evenly; the
MILP and the refinement keep the spread."""

import numpy as np
import pytest

from moesim.engine_dispatch import engine_shares
from moesim.specs import load_cluster, load_model
from tuner.engine_refine import refine
from tuner.eplb import replicate_experts
from tuner.ilp import CostModel, nic_traffic, node_inbound, solve_ilp
from tuner.placers import Budget, place
from tuner.placers.node_spread import spread_row

G, GPN, S, E = 16, 4, 5, 64  # 4 nodes


def nodes_per_expert(phy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    node = np.arange(phy.shape[-1]) // S // GPN
    reps = np.bincount(phy, minlength=E)
    distinct = np.array([len(set(node[phy == e])) for e in range(E)])
    return reps, distinct


@pytest.mark.parametrize("seed", [0, 1])
def test_spread_row_distinct_nodes_and_even_sglang_split(seed) -> None:
    rng = np.random.default_rng(seed)
    c = rng.gamma(0.3, size=(1, E)) * 1e3 + 1
    _, _, reps = replicate_experts(c, G * S)
    phy = spread_row(c[0], reps[0], G, GPN, S)
    got, distinct = nodes_per_expert(phy)
    assert np.array_equal(got, reps[0]) and (got > 1).any()
    assert np.array_equal(distinct, np.minimum(got, G // GPN))  # every replica on its own node while it can
    # SGLang's expected split of a spread placement is the even one: 1 / r_e per replica
    sh = engine_shares(phy[None], np.ones((1, G * S)), E, G, GPN, "sglang-static")[0]
    spread_ok = got[phy] <= G // GPN
    assert np.allclose(sh[spread_ok], 1.0 / got[phy][spread_ok])
    assert len(set(phy.reshape(G, S)[0])) == S or got.max() > G  # a GPU holds an expert once when it can


def test_node_spread_places_validly_and_beats_global_eplb_on_network() -> None:
    model, cluster = load_model("deepseek-v3"), load_cluster("h100-8x8-ib400")
    rng = np.random.default_rng(0)
    c = rng.zipf(1.6, size=(2, 256)).astype(float) * 100
    lay = model.moe_layers[:2]
    spread = place("node-spread", c, None, model, cluster, 64, layers=lay)
    glob = place("eplb-global", c, None, model, cluster, 64, layers=lay)
    spread.validate()
    assert spread.meta["method"] == "node-spread" and spread.slots_per_gpu == 5
    # same replica counts as EPLB, but more ranks find their replica on their own node
    assert np.array_equal(
        np.sort(np.bincount(spread.phy2log[0], minlength=256)), np.sort(np.bincount(glob.phy2log[0], minlength=256))
    )
    ns = node_inbound(spread.phy2log, c, 256, 64, 8).sum()
    ng = node_inbound(glob.phy2log, c, 256, 64, 8).sum()
    assert ns < ng


def test_milp_and_refine_keep_the_spread() -> None:
    rng = np.random.default_rng(2)
    c = rng.gamma(0.3, size=(2, E)) * 1e3 + 1
    _, _, reps = replicate_experts(c, G * S)
    rows = np.stack([spread_row(c[l], reps[l], G, GPN, S) for l in range(2)])
    from moesim.placement import Placement, even_shares

    warm = Placement(G, S, E, rows, even_shares(rows, E), {})
    cost = CostModel(1.0, 0.0, 0.0, us_per_nic_assignment=0.5)
    for hier in (False, True):
        res = solve_ilp(
            c, None, G, GPN, G * S - E, cost, warm_start=warm, time_limit_s=6, hierarchical=hier, spread=True
        )
        for l in range(2):
            got, distinct = nodes_per_expert(res.placement.phy2log[l])
            assert np.array_equal(distinct, np.minimum(got, G // GPN)), (hier, l)
        assert (
            res.objective_us
            <= 1.0
            * sum(
                np.bincount(np.arange(G * S) // S, weights=c[l][rows[l]] / np.bincount(rows[l])[rows[l]]).max()
                for l in range(2)
            )
            + 0.5 * nic_traffic(rows, c, E, G, GPN).max(axis=1).sum()
            + 1e-6
        )
    refined, swaps = refine(warm, c, GPN, 2.0, spread=True)
    assert swaps > 0
    for l in range(2):
        got, distinct = nodes_per_expert(refined.phy2log[l])
        assert np.array_equal(distinct, np.minimum(got, G // GPN))


def test_budget_dependency_checked() -> None:
    from moesim.errors import PlacementError

    with pytest.raises(PlacementError, match="placement: dependency: must be one of home, transitions"):
        Budget(dependency="next-layer")

"""Refinement under SGLang's replica choice: the closed-form shares and the descent."""

import numpy as np

from moesim.engine_dispatch import apply_engine, engine_shares
from moesim.placement import Placement, even_shares
from tuner.engine_refine import refine, refine_row, settle_static, sglang_shares_row
from tuner.eplb import eplb_placement


def test_closed_form_equals_the_rule() -> None:
    rng = np.random.default_rng(1)
    for num_gpus, gpn, experts, extra in ((16, 8, 64, 16), (8, 2, 24, 16), (4, 4, 8, 4)):
        for _ in range(10):
            row = rng.permutation(np.concatenate([np.arange(experts), rng.integers(0, experts, extra)]))
            rule = engine_shares(row[None], None, experts, num_gpus, gpn, "sglang-static")[0]
            np.testing.assert_allclose(sglang_shares_row(row, experts, num_gpus, gpn), rule)


def test_descent_never_raises_the_busiest_gpu_and_spreads_piled_replicas() -> None:
    """Hierarchical EPLB keeps an expert's replicas on one node, where SGLang sends the node's ranks to the
    first one; the descent lowers the busiest GPU under the rule and leaves slot counts alone."""
    rng = np.random.default_rng(0)
    counts = rng.dirichlet(np.full(64, 0.3), size=3) * 1e5
    p = eplb_placement(counts, 16, 16, num_groups=8, num_nodes=2)
    assert p.meta["method"] == "eplb-hierarchical"
    before = apply_engine(p, "sglang-static", 8).gpu_loads(counts).max(axis=1)
    refined, swaps = refine(p, counts, 8, time_limit_s=5.0)
    after = apply_engine(refined, "sglang-static", 8).gpu_loads(counts).max(axis=1)
    assert swaps > 0 and np.all(after <= before + 1e-9) and after.sum() < 0.95 * before.sum()
    for layer in range(3):  # the same experts, the same replica counts
        np.testing.assert_array_equal(np.sort(refined.phy2log[layer]), np.sort(p.phy2log[layer]))


def test_a_balanced_row_stays() -> None:
    row = np.arange(8)  # 8 experts, one per GPU, equal counts: nothing to gain
    out, swaps = refine_row(row, np.ones(8), 8, 4)
    assert swaps == 0 and np.array_equal(out, row)
    p = Placement(8, 1, 8, row[None], even_shares(row[None], 8))
    assert refine(p, np.ones((1, 8)), 4)[1] == 0


def test_settle_balances_the_draw_itself_and_changes_no_draw() -> None:
    """Swaps of single-replica experts leave SGLang's start-up draw as it was: every replicated expert's
    realised shares are unchanged, and the realised busiest GPU only goes down."""
    from moesim.specs import load_model

    model = load_model("deepseek-v3")
    rng = np.random.default_rng(5)
    counts = rng.dirichlet(np.full(256, 0.5), size=3) * 1e6
    p = eplb_placement(counts, 64, 64).with_meta(layers=[3, 4, 5])
    before = apply_engine(p, "sglang-static", 8, model)
    settled, swaps = settle_static(p, counts, 8, model, time_limit_s=10.0)
    after = apply_engine(settled, "sglang-static", 8, model)
    assert swaps > 0
    assert np.all(after.gpu_loads(counts).max(axis=1) <= before.gpu_loads(counts).max(axis=1) + 1e-6)
    for layer in range(3):
        replicated = np.bincount(p.phy2log[layer], minlength=256) > 1
        for e in np.flatnonzero(replicated):
            # the same slots hold the replicas (lone experts moved around them), with the same shares
            np.testing.assert_array_equal(
                np.flatnonzero(settled.phy2log[layer] == e), np.flatnonzero(p.phy2log[layer] == e)
            )
            np.testing.assert_allclose(
                after.shares[layer][p.phy2log[layer] == e], before.shares[layer][p.phy2log[layer] == e]
            )

"""Rebalance cadence over a series of snapshots."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.errors import TraceError
from moesim.specs import load_model
from moesim.traces.native import save_trace
from moesim.traces.synthetic import drift_trace
from tuner.plan import place
from tuner.rebalance.cadence import cadence, drift, interval_flags, load_series


@pytest.fixture(scope="module")
def series(tmp_path_factory, olmoe_traces):
    model, _, c4, _ = olmoe_traces
    folder = tmp_path_factory.mktemp("series")
    for i, t in enumerate([c4, *drift_trace(c4, 0.2, seed=1, steps=4)]):
        save_trace(t, folder / f"dump_{i}.npz")
    return model, folder


def test_series_is_read_in_natural_order_and_drifts(series) -> None:
    model, folder = series
    (folder / "dump_10.npz").write_bytes((folder / "dump_4.npz").read_bytes())
    try:
        names, traces = load_series(folder, model)
        assert names == ["dump_0.npz", "dump_1.npz", "dump_2.npz", "dump_3.npz", "dump_4.npz", "dump_10.npz"]
    finally:
        (folder / "dump_10.npz").unlink()
    tv = drift(traces[:5])
    assert len(tv) == 4 and all(0 < x < 1 for x in tv)
    assert tv[-1] > tv[0]  # a random walk drifts further with the lag


def test_every_interval_is_scored_and_the_best_is_the_least_time(series, olmoe_traces) -> None:
    model, folder = series
    cluster = olmoe_traces[1]
    names, traces = load_series(folder, model)
    deployed = place("eplb", model, cluster, traces[0], redundant_experts=16, engine="sglang-static")
    for policy in ("eplb", "moesim"):
        r = cadence(model, cluster, names, traces, deployed, dump_steps=500, policy=policy)
        assert [x.every for x in r.intervals] == [1, 2, 4, 5]
        never = r.intervals[-1]
        assert never.never and never.moves == 0 and never.stall_s == 0
        assert r.intervals[0].rebalances == 4 and r.intervals[1].rebalances == 2
        for x in r.intervals:
            assert x.total_s == pytest.approx(x.moe_s + x.stall_s)
            assert (x.moves > 0) == (x.rebalances > 0)
        assert r.best.total_s == min(x.total_s for x in r.intervals)
    assert "--eplb-rebalance-num-iterations 2000" in interval_flags(2000, 16)["sglang"]
    assert '"step_interval":2000' in interval_flags(2000, 16)["vllm"]


def test_series_of_mixed_models_is_refused(series, tmp_path) -> None:
    model, folder = series
    for p in folder.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    mixtral = load_model("mixtral-8x7b")
    from moesim.traces.synthetic import synthetic_trace

    save_trace(synthetic_trace(mixtral, 256, with_topk_ids=False), tmp_path / "dump_9.npz")
    with pytest.raises(TraceError, match="dump_9.npz: .*model"):
        load_series(tmp_path, model)


def test_drift_is_seeded_and_keeps_the_token_count(olmoe_traces) -> None:
    c4 = olmoe_traces[2]
    a = drift_trace(c4, 0.3, seed=4, steps=2)
    b = drift_trace(c4, 0.3, seed=4, steps=2)
    np.testing.assert_array_equal(a[1].counts, b[1].counts)
    assert (a[0].counts.sum(axis=1) == c4.num_tokens * c4.top_k).all()
    assert (a[0].counts <= c4.num_tokens).all()
    with pytest.raises(TraceError, match="sigma"):
        drift_trace(c4, -1.0)

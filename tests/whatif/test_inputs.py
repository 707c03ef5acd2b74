"""whatif.inputs: a scenario's specs and trace, memoised per process; synthetic traces drawn as `moesim simulate`
draws them; trace files restricted to a scenario's ``layers``; the calibration a scenario runs with.

Expected traces are drawn here with ``synthetic_trace`` directly; expected subsets are the shipped trace's rows
picked by hand (``profiles/traces/olmoe_c4.npz`` records OLMoE layers 0, 7 and 15, 208,896 tokens, top-8).
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from moesim.errors import SpecError, TraceError
from moesim.traces.synthetic import synthetic_trace
from whatif import inputs
from whatif.inputs import (
    build_inputs,
    cluster_spec,
    load_specs,
    make_synthetic,
    model_spec,
    prepare_traces,
    scenario_calibration,
    subset_layers,
    synthetic,
    synthetic_key,
    synthetic_tokens,
    trace_file,
)
from whatif.scenario import Scenario

REPO = Path(__file__).resolve().parents[2]
OLMOE_C4 = str(REPO / "profiles" / "traces" / "olmoe_c4.npz")
MIXTRAL_C4 = str(REPO / "profiles" / "traces" / "mixtral_c4.npz")
CLUSTER = "h100-2x8-ib400"  # 16 H100s


@pytest.fixture(autouse=True)
def _private_traces(monkeypatch):
    """Each test starts with an empty synthetic-trace memo (and leaves the process's one alone)."""
    monkeypatch.setattr(inputs, "TRACES", {})


@pytest.fixture(scope="module")
def olmoe():
    """``profiles/models/olmoe-1b-7b.yaml``: 64 experts top-8, 16 MoE layers."""
    return model_spec("olmoe-1b-7b")


def olmoe_scenario(**settings) -> Scenario:
    return Scenario.from_settings(**{"model": "olmoe-1b-7b", "cluster": CLUSTER, **settings})


# ----------------------------------------------------------------------------------------- specs and files
def test_specs_and_trace_files_are_loaded_once_per_name():
    model, cluster = load_specs("olmoe-1b-7b", CLUSTER)
    assert (model.slug, model.num_experts, model.top_k) == ("olmoe-1b-7b", 64, 8)
    assert (cluster.slug, cluster.num_gpus) == (CLUSTER, 16)
    assert model_spec("olmoe-1b-7b") is model and cluster_spec(CLUSTER) is cluster
    trace = trace_file(OLMOE_C4)
    assert trace_file(OLMOE_C4) is trace
    assert trace.layers == (0, 7, 15) and trace.num_tokens == 208_896


def test_unknown_cluster_is_a_one_line_spec_error():
    with pytest.raises(SpecError) as info:
        cluster_spec("no-such-cluster")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("no-such-cluster: cluster: unknown slug")


# ----------------------------------------------------------------------------------------- subset_layers
def test_subset_of_contiguous_recorded_layers_keeps_their_transition():
    full = trace_file(OLMOE_C4)
    sub = subset_layers(full, (7, 15), OLMOE_C4)
    assert sub.layers == (7, 15) and sub.num_tokens == full.num_tokens
    np.testing.assert_array_equal(sub.counts, full.counts[[1, 2]])
    assert sub.transitions.shape == (1, 64, 64)
    np.testing.assert_array_equal(sub.transitions[0], full.transitions[1])  # the 7 -> 15 matrix
    assert full.layers == (0, 7, 15)  # the memoised trace itself is untouched


def test_subset_out_of_order_or_with_gaps_drops_transitions():
    full = trace_file(OLMOE_C4)
    reordered = subset_layers(full, (15, 7), OLMOE_C4)
    assert reordered.layers == (15, 7) and reordered.transitions is None
    np.testing.assert_array_equal(reordered.counts, full.counts[[2, 1]])
    gap = subset_layers(full, (0, 15), OLMOE_C4)  # recorded rows 0 and 2: 0 -> 15 was never recorded
    assert gap.transitions is None
    np.testing.assert_array_equal(gap.counts, full.counts[[0, 2]])


def test_subset_keeps_per_token_ids_of_the_chosen_layers(olmoe):
    full = synthetic_trace(olmoe, 64, seed=5, layers=(2, 3, 4, 5))
    sub = subset_layers(full, (5, 3), "synthetic")
    np.testing.assert_array_equal(sub.topk_ids, full.topk_ids[:, [3, 1]])
    np.testing.assert_array_equal(sub.counts, full.counts[[3, 1]])
    # every row still holds T * k assignments
    assert sub.counts.sum(axis=1).tolist() == [64 * 8, 64 * 8]


def test_subset_with_a_layer_not_recorded_names_it_and_the_file():
    with pytest.raises(TraceError) as info:
        subset_layers(trace_file(OLMOE_C4), (7, 3), "/some/dir/olmoe_c4.npz")
    assert str(info.value) == "layers: trace olmoe_c4.npz has no layer 3 (recorded: [0, 7, 15])"


# ----------------------------------------------------------------------------------------- synthetic traces
@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"tokens_per_gpu": 64}, 64 * 16),
        ({"tokens_per_gpu": 32768}, 1 << 18),  # 32768 * 16 = 2^19, capped at 2^18 as `moesim simulate` draws
        ({"tokens_per_gpu": 64, "trace_tokens": 300}, 300),  # the scenario's own count wins
    ],
)
def test_synthetic_tokens(settings, expected):
    assert synthetic_tokens(olmoe_scenario(**settings), 16) == expected


def test_synthetic_key_holds_what_draws_the_trace():
    sc = olmoe_scenario(trace="synthetic:dirichlet:0.3", tokens_per_gpu=64, trace_seed=4, trace_affinity=0.5)
    assert synthetic_key(sc, 16) == ("olmoe-1b-7b", "dirichlet:0.3", 1024, 4, 0.5, None)
    # what does not change the trace (placement, capacity, dtypes) does not change the key
    other = olmoe_scenario(
        trace="synthetic:dirichlet:0.3",
        tokens_per_gpu=64,
        trace_seed=4,
        trace_affinity=0.5,
        placement="eplb",
        capacity_factor=1.25,
        dispatch_dtype="fp8",
    )
    assert synthetic_key(other, 16) == synthetic_key(sc, 16)
    assert synthetic_key(olmoe_scenario(tokens_per_gpu=64, layers=(1, 2)), 8)[2:] == (512, 0, 0.0, (1, 2))


def test_make_synthetic_draws_counts_only_with_the_scenarios_seed(olmoe):
    trace = make_synthetic(("olmoe-1b-7b", "zipf:1.2", 512, 7, 0.0, None))
    expected = synthetic_trace(olmoe, 512, "zipf", 1.2, seed=7, with_topk_ids=False, with_transitions=False)
    np.testing.assert_array_equal(trace.counts, expected.counts)
    assert trace.topk_ids is None and trace.transitions is None
    assert trace.layers == tuple(olmoe.moe_layers) and trace.num_tokens == 512
    other_seed = make_synthetic(("olmoe-1b-7b", "zipf:1.2", 512, 8, 0.0, None))
    assert not np.array_equal(other_seed.counts, trace.counts)


def test_a_seed_or_affinity_in_the_spec_wins_over_the_scenarios(olmoe):
    trace = make_synthetic(("olmoe-1b-7b", "zipf:1.2,seed=3,affinity=0.25", 256, 9, 0.75, (4, 5)))
    expected = synthetic_trace(
        olmoe, 256, "zipf", 1.2, affinity=0.25, seed=3, layers=(4, 5), with_topk_ids=False, with_transitions=False
    )
    np.testing.assert_array_equal(trace.counts, expected.counts)
    assert trace.layers == (4, 5)
    # without them in the spec, the scenario's affinity and seed are used
    plain = make_synthetic(("olmoe-1b-7b", "zipf:1.2", 256, 3, 0.25, (4, 5)))
    np.testing.assert_array_equal(plain.counts, expected.counts)


def test_synthetic_memo_returns_the_same_trace_and_drops_the_oldest(monkeypatch):
    monkeypatch.setattr(inputs, "TRACES_MAX", 2)
    keys = [("olmoe-1b-7b", "uniform", 128, seed, 0.0, (0,)) for seed in range(3)]
    first = synthetic(keys[0])
    assert synthetic(keys[0]) is first and list(inputs.TRACES) == [keys[0]]
    synthetic(keys[1])
    synthetic(keys[2])  # full: the oldest (keys[0]) goes
    assert list(inputs.TRACES) == [keys[1], keys[2]]
    again = synthetic(keys[0])
    assert again is not first
    np.testing.assert_array_equal(again.counts, first.counts)  # redrawn, the same numbers


# ----------------------------------------------------------------------------------------- build_inputs
def test_build_inputs_synthetic_as_simulate_draws(olmoe):
    sc = olmoe_scenario(tokens_per_gpu=32, trace_seed=2)
    model, cluster, trace = build_inputs(sc)
    assert model is model_spec("olmoe-1b-7b") and cluster is cluster_spec(CLUSTER)
    assert trace.num_tokens == 32 * 16 and trace.counts.shape == (16, 64)
    assert trace.counts.sum(axis=1).tolist() == [32 * 16 * 8] * 16
    expected = synthetic_trace(olmoe, 512, seed=2, with_topk_ids=False, with_transitions=False)
    np.testing.assert_array_equal(trace.counts, expected.counts)
    assert build_inputs(sc)[2] is trace  # drawn once


def test_build_inputs_trace_file_restricted_to_layers():
    sc = olmoe_scenario(trace=OLMOE_C4, layers=(15, 0))
    _, _, trace = build_inputs(sc)
    assert trace.layers == (15, 0)
    np.testing.assert_array_equal(trace.counts, trace_file(OLMOE_C4).counts[[2, 0]])
    _, _, whole = build_inputs(olmoe_scenario(trace=OLMOE_C4))
    assert whole is trace_file(OLMOE_C4)


def test_build_inputs_trace_of_another_model_names_the_file():
    sc = olmoe_scenario(trace=MIXTRAL_C4)
    with pytest.raises(TraceError) as info:
        build_inputs(sc)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{MIXTRAL_C4}: num_experts:") and "model olmoe-1b-7b has 64" in msg


# ----------------------------------------------------------------------------------------- calibration
def test_scenario_calibration_auto_none_and_file():
    from moesim.calibration.file_format import load_calibration

    shipped = REPO / "profiles" / "measured" / "h100-sxm" / "calibration.json"
    h100 = cluster_spec(CLUSTER)
    auto = scenario_calibration(olmoe_scenario(), h100)
    assert auto is not None and auto == load_calibration(shipped)
    assert scenario_calibration(olmoe_scenario(calibration="none"), h100) is None
    assert scenario_calibration(olmoe_scenario(calibration=str(shipped)), h100) == auto
    # a GPU without a shipped calibration (H800) runs on its profile's constants
    assert scenario_calibration(olmoe_scenario(cluster="h800-2x8-ib400"), cluster_spec("h800-2x8-ib400")) is None


# ----------------------------------------------------------------------------------------- prepare_traces
def test_prepare_traces_without_fork_draws_nothing():
    prepare_traces([olmoe_scenario(tokens_per_gpu=16)], 2, None)
    prepare_traces([olmoe_scenario(tokens_per_gpu=16)], 2, mp.get_context("spawn"))
    assert inputs.TRACES == {}


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="prepare_traces draws only with fork")
def test_prepare_traces_draws_each_distinct_trace_once():
    ctx = mp.get_context("fork")
    a = olmoe_scenario(tokens_per_gpu=16, layers=(0, 1))
    same_trace = olmoe_scenario(name="b", tokens_per_gpu=16, layers=(0, 1), capacity_factor=1.0)
    b = olmoe_scenario(tokens_per_gpu=16, layers=(0, 1), trace_seed=1)
    bad_spec = olmoe_scenario(trace="synthetic:bogus", tokens_per_gpu=16)  # its own evaluation reports it
    bad_cluster = Scenario.from_settings(model="olmoe-1b-7b", cluster="no-such-cluster")
    from_file = olmoe_scenario(trace=OLMOE_C4)
    prepare_traces([a, same_trace, b, bad_spec, bad_cluster, from_file], 2, ctx)
    ka, kb = synthetic_key(a, 16), synthetic_key(b, 16)
    assert list(inputs.TRACES) == [ka, kb]  # drawn in two workers, the failing spec left out
    for key in (ka, kb):
        np.testing.assert_array_equal(inputs.TRACES[key].counts, make_synthetic(key).counts)
    kept = inputs.TRACES[ka]
    prepare_traces([a], 1, ctx)  # already drawn: kept as is
    assert inputs.TRACES[ka] is kept and len(inputs.TRACES) == 2

"""``moesim.results``: the JSON of :class:`LayerResult` / :class:`StepResult` (the ``moesim simulate --json``
contract), the tail-GPU phase sums and the mean dropped fraction, on hand-built results and on a real step."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from moesim.options import SimOptions
from moesim.results import LayerResult, StepResult


def layer(i: int, **over: object) -> LayerResult:
    """A layer with distinct, easily summed values (layer i: latency 10 + i, router 1, ...)."""
    g = np.array([1.0, 2.0, 3.0])
    vals: dict[str, object] = {
        "layer": i,
        "latency_us": 10.0 + i,
        "router_us": 1.0,
        "permute_us": 2.0 + i,
        "dispatch_us": 3.0,
        "compute_us": 4.0 * (i + 1),
        "combine_us": 0.5,
        "max_gpu_tokens": 30.0,
        "mean_gpu_tokens": 20.0,
        "dropped_fraction": 0.1 * i,
        "rerouted_fraction": 0.0,
        "nvlink_bytes": 1e6,
        "network_bytes": 0.0,
        "tail_gpu": 2,
        "gpu_latency_us": g,
        "gpu_tokens": g * 10,
        "gpu_compute_us": g * 2,
        "gpu_dispatch_us": g * 3,
        "gpu_combine_us": g * 4,
    }
    vals.update(over)
    return LayerResult(**vals)  # type: ignore[arg-type]


def step(layers: tuple[LayerResult, ...], options: SimOptions = SimOptions()) -> StepResult:
    return StepResult(
        model="m", cluster="c", num_gpus=3, options=options, step_latency_us=100.0, moe_us=40.0, attention_us=30.0,
        dense_us=20.0, lm_head_us=10.0, alltoall_us=7.0, moe_share=0.4, alltoall_share=0.07, layers=layers,
    )  # fmt: skip


def test_field_lists_cover_the_dataclass_exactly() -> None:
    names = [f.name for f in dataclasses.fields(LayerResult)]
    assert list(LayerResult.JSON_FIELDS) + list(LayerResult.PER_GPU_FIELDS) == names
    assert not set(LayerResult.JSON_FIELDS) & set(LayerResult.PER_GPU_FIELDS)


def test_layer_to_dict_is_the_scalar_contract() -> None:
    la = layer(1)
    d = la.to_dict()
    assert list(d) == list(LayerResult.JSON_FIELDS)  # the order of the documented contract
    assert d["layer"] == 1 and d["latency_us"] == 11.0 and d["compute_us"] == 8.0 and d["tail_gpu"] == 2
    assert not any(name in d for name in LayerResult.PER_GPU_FIELDS)


def test_layer_to_dict_per_gpu_gives_float_lists() -> None:
    d = layer(0).to_dict(per_gpu=True)
    assert list(d) == list(LayerResult.JSON_FIELDS) + list(LayerResult.PER_GPU_FIELDS)
    assert d["gpu_tokens"] == [10.0, 20.0, 30.0] and d["gpu_combine_us"] == [4.0, 8.0, 12.0]
    assert all(type(x) is float for name in LayerResult.PER_GPU_FIELDS for x in d[name])
    assert json.loads(json.dumps(d)) == d


def test_numpy_scalars_become_python_numbers() -> None:
    la = layer(0, latency_us=np.float32(2.5), tail_gpu=np.int64(1), layer=np.int32(7), nvlink_bytes=np.float64(3.0))
    d = la.to_dict()
    assert type(d["latency_us"]) is float and d["latency_us"] == 2.5
    assert type(d["tail_gpu"]) is int and d["tail_gpu"] == 1
    assert type(d["layer"]) is int and d["layer"] == 7
    assert type(d["nvlink_bytes"]) is float
    json.dumps(d)  # numpy scalars would make this raise TypeError


def test_results_are_frozen() -> None:
    la = layer(0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        la.latency_us = 1.0  # type: ignore[misc]
    st = step((la,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.step_latency_us = 1.0  # type: ignore[misc]


def test_phase_us_sums_the_tail_phases_over_layers() -> None:
    st = step((layer(0), layer(1), layer(2)))
    ph = st.phase_us()
    assert list(ph) == ["router_us", "permute_us", "dispatch_us", "compute_us", "combine_us", "latency_us"]
    # by hand: router 1+1+1, permute 2+3+4, dispatch 3*3, compute 4+8+12, combine 0.5*3, latency 10+11+12
    assert ph == {
        "router_us": 3.0,
        "permute_us": 9.0,
        "dispatch_us": 9.0,
        "compute_us": 24.0,
        "combine_us": 1.5,
        "latency_us": 33.0,
    }
    assert all(type(v) is float for v in ph.values())
    assert step(()).phase_us() == dict.fromkeys(ph, 0.0)


def test_step_to_dict() -> None:
    opts = SimOptions(tokens_per_gpu=128, capacity_factor=1.25, drop_policy="position")
    st = step((layer(0), layer(1), layer(2)), opts)
    d = st.to_dict()
    assert list(d)[:7] == ["model", "cluster", "num_gpus", "options", "step_latency_us", "moe_share", "alltoall_share"]
    assert d["options"] == dataclasses.asdict(opts) and d["options"]["capacity_factor"] == 1.25
    assert (d["moe_us"], d["attention_us"], d["dense_us"], d["lm_head_us"], d["alltoall_us"]) == (40, 30, 20, 10, 7)
    assert d["dropped_fraction"] == pytest.approx((0.0 + 0.1 + 0.2) / 3)  # the mean over layers
    assert d["phase_us"] == st.phase_us()
    assert [la["layer"] for la in d["layers"]] == [0, 1, 2]
    assert "gpu_tokens" not in d["layers"][0]
    per = st.to_dict(per_gpu=True)
    assert per["layers"][2]["gpu_tokens"] == [10.0, 20.0, 30.0]
    assert json.loads(json.dumps(per)) == per


def test_step_without_layers_has_no_drops() -> None:
    d = step(()).to_dict()
    assert d["dropped_fraction"] == 0.0 and d["layers"] == []
    json.dumps(d)


def test_a_simulated_step_round_trips_through_json(olmoe, olmoe_trace) -> None:  # noqa: ANN001
    from moesim.simulate import simulate
    from moesim.specs import load_cluster

    cluster = load_cluster("h100-2x8-ib400")
    st = simulate(olmoe, cluster, olmoe_trace, options=SimOptions(tokens_per_gpu=256, capacity_factor=1.0))
    d = json.loads(json.dumps(st.to_dict(per_gpu=True)))
    assert d["num_gpus"] == 16 and len(d["layers"]) == len(olmoe_trace.layers)
    for la, row in zip(st.layers, d["layers"], strict=True):
        assert len(row["gpu_latency_us"]) == 16
        # the scalar phases are those of the tail GPU, the one with the largest latency
        assert row["tail_gpu"] == int(np.argmax(la.gpu_latency_us))
        assert row["latency_us"] == pytest.approx(max(row["gpu_latency_us"]))
        assert row["compute_us"] == pytest.approx(row["gpu_compute_us"][row["tail_gpu"]])
        assert row["max_gpu_tokens"] == pytest.approx(max(row["gpu_tokens"]))
    assert d["dropped_fraction"] == pytest.approx(np.mean([la.dropped_fraction for la in st.layers]))
    assert d["phase_us"]["latency_us"] == pytest.approx(sum(la.latency_us for la in st.layers))

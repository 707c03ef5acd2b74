"""The layer and step simulator: sanity laws (hypothesis), options, bad input, the JSON contract."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.errors import PlacementError, SpecError, TraceError
from moesim.options import SimOptions
from moesim.placement import Placement, contiguous
from moesim.results import LayerResult
from moesim.simulate import (
    default_placement,
    simulate,
    simulate_layer,
    simulate_layers,
)

# The per-layer JSON contract, spelled out on purpose: a test that only read LayerResult.JSON_FIELDS could
# not notice a contract key dropped from it. Other tests (tests/cli) use LayerResult.JSON_FIELDS.
CONTRACT_LAYER_KEYS = {
    "layer",
    "latency_us",
    "router_us",
    "permute_us",
    "dispatch_us",
    "compute_us",
    "combine_us",
    "max_gpu_tokens",
    "mean_gpu_tokens",
    "dropped_fraction",
    "nvlink_bytes",
    "network_bytes",
}


@pytest.fixture(scope="module")
def dsv3(deepseek_v3):
    """conftest's DeepSeek-V3 spec, under this file's short name."""
    return deepseek_v3


@pytest.fixture(scope="module")
def cluster(h100_cluster):
    """conftest's 8x8 H100 cluster (``h100-8x8-ib400``)."""
    return h100_cluster


@pytest.fixture(scope="module")
def zipf_trace(dsv3):
    from moesim.traces.synthetic import synthetic_trace

    return synthetic_trace(dsv3, 1 << 15, skew="zipf", alpha=1.2, seed=0, with_topk_ids=False)


def test_json_contract(dsv3, cluster, zipf_trace) -> None:
    step = simulate(dsv3, cluster, zipf_trace, None, SimOptions(tokens_per_gpu=4096))
    doc = json.loads(json.dumps(step.to_dict()))
    for key in ("step_latency_us", "moe_share", "alltoall_share", "layers"):
        assert key in doc
    assert len(doc["layers"]) == len(zipf_trace.layers)
    assert CONTRACT_LAYER_KEYS <= set(LayerResult.JSON_FIELDS)
    for layer in doc["layers"]:
        assert set(LayerResult.JSON_FIELDS) <= set(layer)
        assert layer["latency_us"] >= layer["compute_us"] > 0
    assert 0 < doc["alltoall_share"] < doc["moe_share"] < 1
    assert doc["step_latency_us"] > sum(la["latency_us"] for la in doc["layers"])  # + attention, dense, head
    # zipf routing under contiguous placement: one GPU gets far more than its share
    assert all(la["max_gpu_tokens"] > 1.5 * la["mean_gpu_tokens"] for la in doc["layers"])


@settings(max_examples=12, deadline=None)
@given(
    st.sampled_from(["dgx-h100", "h100-2x8-ib400", "h100-8x8-ib400", "h100-pcie-8", "h800-4x8-ib400"]),
    st.sampled_from([16, 1024, 4096, 30000]),
    st.sampled_from(["flat", "hierarchical"]),
    st.sampled_from(["fp8", "bf16"]),
    st.integers(1, 4),
)
def test_balanced_trace_gives_equal_gpus(dsv3, slug, tokens, alltoall, dtype, chunks) -> None:
    from moesim.specs import load_cluster

    cluster = load_cluster(slug)
    counts = np.full(dsv3.num_experts, 1000.0)
    opts = SimOptions(tokens_per_gpu=tokens, alltoall=alltoall, dispatch_dtype=dtype, overlap_chunks=chunks)
    layer = simulate_layer(dsv3, cluster, counts, contiguous(dsv3.num_experts, cluster.num_gpus, 1), opts)
    for arr in (
        layer.gpu_latency_us,
        layer.gpu_tokens,
        layer.gpu_compute_us,
        layer.gpu_dispatch_us,
        layer.gpu_combine_us,
    ):
        assert np.allclose(arr, arr[0], rtol=1e-9)
    assert layer.max_gpu_tokens == pytest.approx(layer.mean_gpu_tokens)
    assert layer.mean_gpu_tokens == pytest.approx(tokens * dsv3.top_k)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([1, 2, 4]), st.sampled_from([512, 4096, 32768]))
def test_more_gpus_never_increase_per_gpu_compute(dsv3, cluster, seed, nodes, total_per_node) -> None:
    """Same total tokens on N or 2N nodes: no GPU computes more."""
    counts = np.random.default_rng(seed).dirichlet(np.full(dsv3.num_experts, 0.5)) * 1e6
    gpn = cluster.gpus_per_node
    total = total_per_node * nodes * gpn
    results = []
    for n in (nodes, 2 * nodes):
        c = cluster.with_nodes(n)
        g = c.num_gpus
        opts = SimOptions(tokens_per_gpu=total // g)
        results.append(simulate_layer(dsv3, c, counts, contiguous(dsv3.num_experts, g, 1), opts))
    assert results[1].gpu_compute_us.max() <= results[0].gpu_compute_us.max() * (1 + 1e-9)


@settings(max_examples=15, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.sampled_from([8192, 16384, 65536]),
    st.sampled_from(["flat", "hierarchical"]),
    st.sampled_from(["dgx-h100", "h100-8x8-ib400", "h100-8x8-ib400-os2"]),
)
def test_doubling_tokens_doubles_alltoall_when_bandwidth_bound(dsv3, seed, tokens, alltoall, slug) -> None:
    """At >= 8k tokens per GPU every per-peer message is past the efficiency curves' knee."""
    from moesim.specs import load_cluster

    cluster = load_cluster(slug)
    counts = np.random.default_rng(seed).dirichlet(np.full(dsv3.num_experts, 1.0)) * 1e6
    pl = contiguous(dsv3.num_experts, cluster.num_gpus, 1)
    a = simulate_layer(dsv3, cluster, counts, pl, SimOptions(tokens_per_gpu=tokens, alltoall=alltoall))
    b = simulate_layer(dsv3, cluster, counts, pl, SimOptions(tokens_per_gpu=2 * tokens, alltoall=alltoall))
    assert b.dispatch_us / a.dispatch_us == pytest.approx(2.0, rel=0.1)
    assert b.combine_us / a.combine_us == pytest.approx(2.0, rel=0.1)
    # and the bytes exactly double
    assert b.nvlink_bytes + b.network_bytes == pytest.approx(2 * (a.nvlink_bytes + a.network_bytes), rel=1e-9)


def test_options_move_the_right_way(dsv3, cluster, zipf_trace) -> None:
    base = simulate(dsv3, cluster, zipf_trace, None, SimOptions())
    layer0 = base.layers[0]
    fp8 = simulate(dsv3, cluster, zipf_trace, None, SimOptions(dispatch_dtype="fp8")).layers[0]
    assert fp8.dispatch_us < 0.6 * layer0.dispatch_us
    assert fp8.combine_us == pytest.approx(layer0.combine_us)
    nodedup = simulate(dsv3, cluster, zipf_trace, None, SimOptions(dedup=False)).layers[0]
    assert nodedup.network_bytes > 1.1 * layer0.network_bytes
    hier = simulate(dsv3, cluster, zipf_trace, None, SimOptions(alltoall="hierarchical")).layers[0]
    assert hier.network_bytes < layer0.network_bytes
    assert hier.nvlink_bytes > layer0.nvlink_bytes
    piped = simulate(dsv3, cluster, zipf_trace, None, SimOptions(overlap_chunks=4))
    assert piped.layers[0].latency_us < layer0.latency_us
    assert piped.alltoall_share < base.alltoall_share


def test_capacity_drops_and_reroutes(dsv3, cluster, zipf_trace) -> None:
    dropless = simulate(dsv3, cluster, zipf_trace, None, SimOptions())
    assert all(la.dropped_fraction == 0 for la in dropless.layers)
    opts = SimOptions(capacity_factor=1.0, drop_policy="position")
    capped = simulate(dsv3, cluster, zipf_trace, None, opts)
    layer = capped.layers[0]
    assert 0 < layer.dropped_fraction < 1
    assert layer.max_gpu_tokens < dropless.layers[0].max_gpu_tokens
    assert layer.latency_us < dropless.layers[0].latency_us
    rer = simulate(dsv3, cluster, zipf_trace, None, dataclasses.replace(opts, drop_policy="reroute")).layers[0]
    assert rer.rerouted_fraction > 0
    assert rer.dropped_fraction == pytest.approx(layer.dropped_fraction - rer.rerouted_fraction, abs=1e-6)


def test_default_placement_shapes() -> None:
    pl = default_placement(256, 1024, 2)
    assert pl.slots_per_gpu == 1
    assert np.allclose(pl.shares, 0.25)
    # 384 GPUs for 256 experts: one slot each, every other expert on two GPUs (shares 1/2), the rest on one
    odd = default_placement(256, 384, 1)
    odd.validate()
    assert odd.slots_per_gpu == 1 and np.bincount(odd.phy2log[0], minlength=256).tolist() == [2, 1] * 128
    assert np.allclose(odd.shares[0], 1.0 / np.bincount(odd.phy2log[0])[odd.phy2log[0]])
    # 60 experts on 8 GPUs: 8 slots each, the last GPU's 4 spare slots carry no tokens
    uneven = default_placement(60, 8, 2)
    assert uneven.slots_per_gpu == 8
    assert np.allclose(uneven.shares[:, :60], 1) and np.allclose(uneven.shares[:, 60:], 0)


def test_bad_placement(dsv3, cluster, zipf_trace) -> None:
    g = cluster.num_gpus
    pl = contiguous(dsv3.num_experts, g, len(zipf_trace.layers))
    phy2log = pl.phy2log.copy()
    phy2log[0, 5] = phy2log[0, 4]  # expert 5 of the first layer is gone
    broken = dataclasses.replace(pl, phy2log=phy2log)
    with pytest.raises(PlacementError, match="expert 5 is missing"):
        simulate(dsv3, cluster, zipf_trace, broken)
    wrong_gpus = contiguous(dsv3.num_experts, g // 2, len(zipf_trace.layers))
    with pytest.raises(PlacementError, match="num_gpus"):
        simulate(dsv3, cluster, zipf_trace, wrong_gpus)
    # every expert on every GPU: far beyond 80 GB of HBM
    L = len(zipf_trace.layers)
    row = np.tile(np.arange(dsv3.num_experts), g)
    crowded = Placement(
        num_gpus=g,
        slots_per_gpu=dsv3.num_experts,
        num_experts=dsv3.num_experts,
        phy2log=np.tile(row, (L, 1)),
        shares=np.full((L, row.size), 1.0 / g),
    )
    with pytest.raises(PlacementError, match="memory"):
        simulate(dsv3, cluster, zipf_trace, crowded)


def test_cluster_too_small(dsv3, cluster, zipf_trace) -> None:
    with pytest.raises(SpecError, match="too few"):
        simulate(dsv3, cluster.with_nodes(1), zipf_trace, None, SimOptions())


def test_trace_of_another_model(dsv3, cluster, olmoe) -> None:
    from moesim.traces.synthetic import synthetic_trace

    other = olmoe
    trace = synthetic_trace(other, 4096, seed=0, with_topk_ids=False)
    with pytest.raises(TraceError):
        simulate(dsv3, cluster, trace)


def test_bad_options(dsv3, cluster, zipf_trace) -> None:
    with pytest.raises(SpecError, match="drop_policy"):
        simulate(dsv3, cluster, zipf_trace, None, SimOptions(capacity_factor=1.0, drop_policy="random"))
    with pytest.raises(SpecError, match="dispatch_dtype"):
        simulate(dsv3, cluster, zipf_trace, None, SimOptions(dispatch_dtype="int4"))


def test_pcie_switch_uplinks_slow_the_alltoall() -> None:
    """8 PCIe GPUs, two per switch: off-switch traffic shares each switch's uplink."""
    from moesim.specs import load_cluster, load_model

    model = load_model("mixtral-8x7b")
    pcie = load_cluster("h100-pcie-8")
    no_switch = dataclasses.replace(pcie, pcie=None)
    counts = np.full(model.num_experts, 100.0)
    pl = contiguous(model.num_experts, 8, 1)
    with_sw = simulate_layer(model, pcie, counts, pl, SimOptions())
    without = simulate_layer(model, no_switch, counts, pl, SimOptions())
    # per GPU 7/8 of the traffic leaves the GPU; per switch 2 x 6/8 leaves through one link of the same speed
    assert with_sw.dispatch_us / without.dispatch_us == pytest.approx(2 * 6 / 7, rel=0.05)


def test_overlap_pipeline_bounds(dsv3, cluster) -> None:
    counts = np.random.default_rng(0).dirichlet(np.full(dsv3.num_experts, 2.0)) * 1e6
    pl = contiguous(dsv3.num_experts, cluster.num_gpus, 1)
    seq = simulate_layer(dsv3, cluster, counts, pl, SimOptions(tokens_per_gpu=8192))
    body = seq.latency_us - seq.router_us - seq.permute_us
    assert body == pytest.approx(seq.dispatch_us + seq.compute_us + seq.combine_us, rel=1e-9)
    piped = simulate_layer(dsv3, cluster, counts, pl, SimOptions(tokens_per_gpu=8192, overlap_chunks=4))
    piped_body = piped.latency_us - piped.router_us - piped.permute_us
    # never better than the slower resource alone, never worse than sequential at this size
    assert max(seq.dispatch_us + seq.combine_us, seq.compute_us) < piped_body < body
    # tiny batches: chunking costs latency and weight re-reads and loses
    tiny = SimOptions(tokens_per_gpu=16)
    tiny_seq = simulate_layer(dsv3, cluster, counts, pl, tiny)
    tiny_piped = simulate_layer(dsv3, cluster, counts, pl, dataclasses.replace(tiny, overlap_chunks=8))
    assert tiny_piped.latency_us > tiny_seq.latency_us


def _exactly_equal(a: LayerResult, b: LayerResult) -> bool:
    """Every field, the per-GPU arrays included, bit for bit."""
    return all(
        np.array_equal(np.asarray(getattr(a, f.name)), np.asarray(getattr(b, f.name)))
        for f in dataclasses.fields(LayerResult)
    )


@pytest.mark.parametrize(
    "slug, opts",
    [
        ("h100-8x8-ib400", SimOptions()),
        ("h100-8x8-ib400", SimOptions(tokens_per_gpu=1024, overlap_chunks=3, alltoall="hierarchical")),
        ("h100-2x8-ib200", SimOptions(dedup=False, dispatch_dtype="fp8", ep_mode="allgather")),
        ("h100-pcie-8", SimOptions(tokens_per_gpu=333, weight_dtype="fp8")),
    ],
)
def test_simulate_layers_equals_simulate_layer_row_by_row(dsv3, zipf_trace, slug, opts) -> None:
    """One vectorised call over layers with mixed capacities gives each layer exactly its own simulate_layer."""
    from moesim.calibration.resolve import resolve_calibration
    from moesim.specs import load_cluster

    cluster = load_cluster(slug)
    cal = resolve_calibration("auto", cluster.gpu.slug)
    layers = list(zipf_trace.layers[:9])
    counts = np.asarray(zipf_trace.counts[:9])
    pl = default_placement(dsv3.num_experts, cluster.num_gpus, len(layers))
    # every policy, dropless rows between capped ones, a factor repeated, one low enough to drop a lot
    factors = [None, 1.0, 1.25, None, 0.5, 1.25, 2.0, 3.7, 1.1]
    policies = ["probs", "probs", "reroute", "position", "position", "probs", "reroute", "position", "reroute"]
    batch = simulate_layers(dsv3, cluster, counts, (pl.phy2log, pl.shares), opts, factors, policies, layers, cal)
    assert [r.layer for r in batch] == layers
    assert any(r.dropped_fraction > 0 for r in batch) and any(r.rerouted_fraction > 0 for r in batch)
    for i, got in enumerate(batch):
        row_opts = dataclasses.replace(opts, capacity_factor=factors[i], drop_policy=policies[i])
        ref = simulate_layer(dsv3, cluster, counts[i], (pl.phy2log[i], pl.shares[i]), row_opts, layers[i], cal)
        assert _exactly_equal(got, ref), f"row {i}"


def test_simulate_layers_without_per_row_capacity_equals_simulate(dsv3, cluster, zipf_trace) -> None:
    """Rows default to the options' capacity: the same layers as ``simulate`` (default placement)."""
    opts = SimOptions(capacity_factor=1.2, drop_policy="reroute")
    step = simulate(dsv3, cluster, zipf_trace, None, opts)
    pl = default_placement(dsv3.num_experts, cluster.num_gpus, len(zipf_trace.layers))
    batch = simulate_layers(dsv3, cluster, zipf_trace.counts, (pl.phy2log, pl.shares), opts, layers=zipf_trace.layers)
    assert len(batch) == len(step.layers)
    assert all(_exactly_equal(a, b) for a, b in zip(batch, step.layers, strict=True))


def test_simulate_layers_bad_input(dsv3, cluster, zipf_trace) -> None:
    pl = default_placement(dsv3.num_experts, cluster.num_gpus, 2)
    rows = (pl.phy2log, pl.shares)
    counts = np.asarray(zipf_trace.counts[:2])
    with pytest.raises(SpecError, match="2 layers but 1 capacity factors"):
        simulate_layers(dsv3, cluster, counts, rows, capacity_factors=[1.0])
    with pytest.raises(SpecError, match="capacity_factor"):
        simulate_layers(dsv3, cluster, counts, rows, capacity_factors=[1.0, -1.0])
    with pytest.raises(SpecError, match="drop_policy"):
        simulate_layers(dsv3, cluster, counts, rows, capacity_factors=[1.0, 1.0], drop_policies=["probs", "nope"])
    with pytest.raises(TraceError, match="counts"):
        simulate_layers(dsv3, cluster, counts[:1], rows)
    with pytest.raises(PlacementError, match="phy2log"):
        simulate_layers(dsv3, cluster, counts, (pl.phy2log[:, :-1], pl.shares[:, :-1]))

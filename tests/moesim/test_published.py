"""The all-to-all model against published numbers: DeepEP's normal-kernel table and NCCL's statements.

Nothing here is fitted: link bandwidths, latencies and efficiencies come from the cluster profiles (which cite
datasheets and nccl-tests); the byte counts follow DeepEP's own test scripts (deepseek-ai/DeepEP
``tests/test_intranode.py`` / ``tests/test_internode.py``):

* intranode: ``nvl_recv_bytes = rows received by the rank (its own included) * hidden * 2`` (BF16),
  times ``(1 + 4/128) / 2`` for FP8; bandwidth = bytes / kernel time;
* internode: ``rdma_send_bytes = (token, destination node) pairs of the rank's tokens, own node included
  * hidden * 2`` (times the FP8 factor); combine uses the same counts in BF16;
* routing: scores ``|randn| + 1`` over 256 experts, top-8; internode also group-limited with one group per
  node and ``num_topk_groups = min(num_nodes, 4)``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from moesim.dispatch import FlatAllToAll, link_classes, link_times_us
from moesim.errors import SpecError
from moesim.options import SimOptions
from moesim.placement import contiguous
from moesim.simulate import simulate_layer

REFERENCE = Path(__file__).resolve().parents[2] / "profiles" / "reference" / "published_numbers.yaml"
TOLERANCE = 0.20  # the bound for the DeepEP rows
FP8_FACTOR = (1 + 4 / 128) / 2


@pytest.fixture(scope="module")
def published() -> dict:
    return yaml.safe_load(REFERENCE.read_text())


def load_cluster_nodes(candidates: list[str], fallback: str, num_nodes: int):
    """The first shipped cluster profile among ``candidates``, else ``fallback`` resized to ``num_nodes``."""
    from moesim.specs import load_cluster

    for slug in candidates:
        try:
            cluster = load_cluster(slug)
        except SpecError:
            continue
        if cluster.num_nodes == num_nodes:
            return cluster
    return load_cluster(fallback).with_nodes(num_nodes)


def h800_cluster(ep_size: int):
    nodes = ep_size // 8
    return load_cluster_nodes(
        [f"h800-{nodes}x8-ib400", f"h800-{nodes}x8"] if nodes > 1 else ["h800-1x8", "hgx-h800"],
        "h800-8x8-ib400",
        nodes,
    )


def deepep_routing(
    num_ranks: int, sampled_ranks: int, num_tokens: int, num_experts: int, top_k: int, seed: int = 0
) -> np.ndarray:
    """``[sampled_ranks, T, k]`` expert ids as DeepEP's tests draw them (every rank draws alike, so a few
    ranks stand for all ``num_ranks``)."""
    rng = np.random.default_rng(seed)
    num_nodes = max(1, num_ranks // 8)
    scores = np.abs(rng.standard_normal((sampled_ranks, num_tokens, num_experts), dtype=np.float32)) + 1
    if num_nodes > 1:
        topk_groups = min(num_nodes, 4)
        group_scores = scores.reshape(sampled_ranks, num_tokens, num_nodes, -1).max(-1)
        groups = np.argpartition(-group_scores, topk_groups - 1, axis=-1)[..., :topk_groups]
        keep = np.zeros(group_scores.shape, dtype=bool)
        np.put_along_axis(keep, groups, True, axis=-1)
        scores = np.where(np.repeat(keep, num_experts // num_nodes, axis=-1), scores, 0.0)
    return np.argpartition(-scores, top_k - 1, axis=-1)[..., :top_k]


def deepep_bytes(ids: np.ndarray, num_ranks: int, num_experts: int, hidden: int) -> tuple[float, float]:
    """DeepEP's BF16 byte counts for one rank: (intranode nvl_recv_bytes, internode rdma_send_bytes).

    ``nvl_recv_bytes``: rows the rank receives = for every source rank, its tokens with at least one expert on
    the receiving rank (rank 0 here; sources are exchangeable); ``rdma_send_bytes``: (token, node) pairs of
    the rank's own tokens, its own node included."""
    num_nodes = max(1, num_ranks // 8)
    rank_of = ids // (num_experts // num_ranks)
    nvl_recv_rows = num_ranks * (rank_of == 0).any(axis=-1).sum(axis=-1).mean()
    node_of = ids // (num_experts // num_nodes)
    touched = np.zeros(ids.shape[:2] + (num_nodes,), dtype=bool)
    np.put_along_axis(touched, node_of, True, axis=-1)
    rdma_rows = touched.sum(axis=(1, 2)).mean()
    return float(nvl_recv_rows * hidden * 2), float(rdma_rows * hidden * 2)


def deepep_rows(published: dict) -> list[tuple]:
    table = published["deepep_v1_normal_kernels"]
    assert table["columns"] == [
        "type",
        "ep_size",
        "dispatch_gb_s",
        "bottleneck_link_dispatch",
        "combine_gb_s",
    ]
    return [tuple(row) for row in table["rows"]]


@pytest.mark.parametrize("index", range(4))
def test_deepep_normal_kernels(published: dict, index: int) -> None:
    from moesim.specs import load_model

    rows = deepep_rows(published)
    if index >= len(rows):
        pytest.skip("fewer DeepEP rows")
    kind, ep_size, dispatch_gb_s, _bottleneck, combine_gb_s = rows[index]
    num_tokens, hidden, num_experts, top_k = 4096, 7168, 256, 8
    nodes = ep_size // 8
    cluster = h800_cluster(ep_size)
    assert cluster.num_gpus == ep_size
    internode = kind == "internode"
    model = dataclasses.replace(
        load_model("deepseek-v3"),
        hidden_size=hidden,
        num_experts=num_experts,
        top_k=top_k,
        n_group=nodes if internode else 1,
        topk_group=min(nodes, 4) if internode else 1,
    )
    ids = deepep_routing(ep_size, 4, num_tokens, num_experts, top_k)
    counts = np.bincount(ids.ravel(), minlength=num_experts)
    options = SimOptions(
        tokens_per_gpu=num_tokens,
        dispatch_dtype="fp8",
        combine_dtype="bf16",
        alltoall="hierarchical",
        check_memory=False,
    )  # DeepEP kernels, intra and inter
    layer = simulate_layer(model, cluster, counts, contiguous(num_experts, ep_size, 1), options)
    nvl_bf16, rdma_bf16 = deepep_bytes(ids, ep_size, num_experts, hidden)
    bf16_bytes = rdma_bf16 if internode else nvl_bf16
    dispatch_pred = bf16_bytes * FP8_FACTOR / (layer.dispatch_us * 1e3)  # GB/s
    combine_pred = bf16_bytes / (layer.combine_us * 1e3)
    msg = (
        f"{kind} EP{ep_size}: predicted dispatch {dispatch_pred:.1f} GB/s (published {dispatch_gb_s}), "
        f"combine {combine_pred:.1f} GB/s (published {combine_gb_s})"
    )
    print(msg)
    assert abs(dispatch_pred / dispatch_gb_s - 1) <= TOLERANCE, msg
    assert abs(combine_pred / combine_gb_s - 1) <= TOLERANCE, msg


def nccl_alltoall_busbw(cluster, bytes_per_rank: float) -> float:
    """Bus bandwidth (GB/s) the model predicts for NCCL's all-to-all: every rank sends ``bytes/G`` to every
    rank; ``algbw = bytes / t``, ``busbw = algbw * (G-1)/G`` (nccl-tests doc/PERFORMANCE.md)."""
    links = link_classes(cluster)
    num_gpus = links.num_gpus
    u = np.ones((1, num_gpus))
    loads = FlatAllToAll().loads(links, u, np.zeros((1, links.num_nodes)), 1.0, bytes_per_rank / num_gpus)
    t_us = float(link_times_us(links, loads).max())
    algbw = bytes_per_rank / (t_us * 1e3)
    return algbw * (num_gpus - 1) / num_gpus


def test_nccl_h100_intranode_alltoall(published: dict) -> None:
    """'~370 GB/s bus bandwidth for all-to-all' on H100 NVLink (nccl-tests issue #212)."""
    assert "370" in published["interconnect"]["nccl_h100_nvlink"]["statement"]
    cluster = load_cluster_nodes(["dgx-h100", "h100-1x8"], "h100-8x8-ib400", 1)
    busbw = nccl_alltoall_busbw(cluster, 1 << 30)
    assert busbw == pytest.approx(370, rel=0.10), busbw


@pytest.mark.parametrize("nodes", [2, 8])
def test_nccl_multinode_alltoall(published: dict, nodes: int) -> None:
    """Multi-node all-to-all bus bandwidth tends to N/(N-1) x NIC bandwidth (nccl-tests issue #130)."""
    nic_gb_s = float(np.mean(published["interconnect"]["cx7_ndr_400g_nic"]["achieved_gb_s"]))
    cluster = load_cluster_nodes([f"h100-{nodes}x8-ib400"], "h100-8x8-ib400", nodes)
    busbw = nccl_alltoall_busbw(cluster, 1 << 30)
    assert busbw == pytest.approx(nodes / (nodes - 1) * nic_gb_s, rel=0.15), busbw

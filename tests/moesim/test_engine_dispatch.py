"""Engine dispatch rules, pinned against SGLang's own start-up code (the sglang wheel, installed --no-deps)."""

import importlib.metadata
import importlib.util
import sys
import types

import numpy as np
import pytest

from moesim.engine_dispatch import (
    ENGINES,
    apply_engine,
    engine_shares,
    replica_weights,
    sglang_static_map,
)
from moesim.errors import SpecError
from moesim.placement import Placement, even_shares
from tuner.eplb import eplb_placement


@pytest.fixture(scope="module")
def sglang_location():
    """SGLang's ``srt/eplb/expert_location.py`` loaded by path: the module needs only torch, while the sglang
    package's ``__init__`` imports the whole server."""
    torch = pytest.importorskip("torch", reason="SGLang's expert_location.py needs torch (the kernels extra)")
    try:
        dist = importlib.metadata.distribution("sglang")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("sglang is not installed (README: pip install --no-deps sglang==0.5.14)")
    path = dist.locate_file("sglang/srt/eplb/expert_location.py")
    spec = importlib.util.spec_from_file_location("_sglang_expert_location", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    return mod, torch


def _sglang_rank_map(mod, torch, phy: np.ndarray, ep_size: int, nnodes: int, rank: int) -> np.ndarray:
    """What rank ``rank`` computes at start-up: its candidate lists shortened to the nearest replica, then
    ``compute_logical_to_rank_dispatch_physical_map`` (ExpertLocationMetadata.init_by_mapping -> _init_raw)."""
    args = types.SimpleNamespace(ep_size=ep_size, nnodes=nnodes)
    num_experts = int(phy.max()) + 1
    l2a = mod._compute_logical_to_all_physical_map(args, torch.tensor(phy), num_experts, ep_size, rank)
    return mod.compute_logical_to_rank_dispatch_physical_map(args, l2a, ep_size, phy.shape[1], rank).numpy()


def _maps() -> list[tuple[str, np.ndarray, int, int]]:
    rng = np.random.default_rng(0)
    counts = rng.zipf(1.5, size=(3, 32)).astype(float)
    hier = eplb_placement(counts, 16, 16, num_groups=4, num_nodes=2).phy2log
    flat = eplb_placement(counts, 16, 16).phy2log
    trivial = np.arange(48)[None] % 32  # a dense layer's row as SGLang fills it: its draws count too
    # 4 nodes x 2 GPUs, replicas piled on one GPU and one node, experts with 1..6 replicas
    piled = np.concatenate([np.arange(24), [0, 0, 0, 1, 1, 2, 3, 3, 5, 5, 5, 5, 7, 8, 9, 9]])
    piled = np.stack([piled, rng.permutation(piled)])
    return [
        ("eplb 2 nodes", np.concatenate([trivial, hier, flat]), 16, 2),
        ("piled 4 nodes", piled, 8, 4),
    ]


@pytest.mark.parametrize("name, phy, ep_size, nnodes", _maps(), ids=[m[0] for m in _maps()])
def test_static_map_matches_sglang_rank_by_rank(sglang_location, name, phy, ep_size, nnodes) -> None:
    mod, torch = sglang_location
    ours = sglang_static_map(phy, ep_size, nnodes)
    for rank in range(ep_size):
        np.testing.assert_array_equal(ours[rank], _sglang_rank_map(mod, torch, phy, ep_size, nnodes, rank))


@pytest.mark.parametrize("name, phy, ep_size, nnodes", _maps(), ids=[m[0] for m in _maps()])
def test_dynamic_weights_match_sglang_candidates(sglang_location, name, phy, ep_size, nnodes) -> None:
    """Dynamic dispatch draws uniformly over each rank's shortened candidate list
    (``_topk_ids_logical_to_physical_dynamic``): weight 1 on a lone candidate, else 1/c on each."""
    mod, torch = sglang_location
    num_experts = int(phy.max()) + 1
    w = replica_weights(phy, num_experts, ep_size, ep_size // nnodes, "sglang-dynamic")  # [L, G, P]
    args = types.SimpleNamespace(ep_size=ep_size, nnodes=nnodes)
    for rank in range(ep_size):
        lists = mod._compute_logical_to_all_physical_map(args, torch.tensor(phy), num_experts, ep_size, rank)
        expect = np.zeros((phy.shape[0], phy.shape[1]))
        for layer in range(phy.shape[0]):
            for e in range(num_experts):
                cand = [int(p) for p in lists[layer][e] if p != -1]
                expect[layer, cand] = 1.0 / len(cand)
        np.testing.assert_allclose(w[:, rank, :], expect)


def test_static_shares_are_the_draw_of_the_loaded_map(deepseek_v3) -> None:
    """With the model, ``sglang-static`` scores the draw SGLang makes on the map it loads (dense and unplanned
    layers as trivial rows, which consume draws too): per-GPU loads equal the rank-by-rank sum over
    :func:`sglang_static_map`. The expected shares miss the draw's luck: on this DeepSeek-V3-sized case the
    busiest GPU differs by a few percent."""
    model = deepseek_v3  # 61 hidden layers, MoE from layer 3
    rng = np.random.default_rng(3)
    counts = rng.dirichlet(np.full(256, 0.5), size=3) * 1e6
    p = eplb_placement(counts, 64, 64).with_meta(layers=[3, 30, 60])
    scored = apply_engine(p, "sglang-static", 8, model)
    full = np.tile(np.arange(320) % 256, (61, 1))
    full[[3, 30, 60]] = p.phy2log
    exact = sglang_static_map(full, 64, 8)  # [G, 61, E]
    slot_gpu = np.arange(320) // 5
    expected = apply_engine(p, "sglang-static", 8).gpu_loads(counts)
    for row, layer in enumerate([3, 30, 60]):
        realised = np.zeros(64)
        for rank in range(64):  # every rank routes 1/G of the layer's assignments
            np.add.at(realised, slot_gpu[exact[rank, layer]], counts[row] / 64)
        np.testing.assert_allclose(scored.gpu_loads(counts)[row], realised, rtol=1e-9)
        assert expected[row].sum() == pytest.approx(realised.sum())
        assert expected[row].max() == pytest.approx(realised.max(), rel=0.2)
    assert scored.meta["engine"] == "sglang-static"


def test_replicas_on_one_node_do_not_split_evenly() -> None:
    """Two replicas of expert 0 on GPUs 0 and 1 of node 0 (4 GPUs per node, 2 nodes): rank 0 and rank 1 use
    their own, ranks 2-3 the first on the node (slot 0), the other node's 4 ranks draw fairly: 2 + 2."""
    phy = np.array([[0, 1, 0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]])  # 8 GPUs x 2 slots, 15 experts
    shares = engine_shares(phy, even_shares(phy, 15), 15, 8, 4, "sglang-static")[0]
    assert shares[0] == pytest.approx((1 + 2 + 2) / 8) and shares[2] == pytest.approx((1 + 2) / 8)
    assert engine_shares(phy, None, 15, 8, 4, "even")[0][[0, 2]].tolist() == [0.5, 0.5]


def test_registry_and_errors() -> None:
    assert list(ENGINES) == ["placement", "even", "vllm", "sglang-static", "sglang-dynamic"]
    phy = np.array([[0, 1, 0, 1]])
    given = np.array([[0.9, 1.0, 0.1, 0.0]])
    np.testing.assert_array_equal(engine_shares(phy, given, 2, 2, 1, "placement"), given)
    with pytest.raises(SpecError, match="engine: must be one of placement, even"):
        engine_shares(phy, given, 2, 2, 1, "sglang")
    p = Placement(2, 2, 2, phy, even_shares(phy, 2))
    assert apply_engine(p, "placement", 1) is p
    assert apply_engine(p, "vllm", 1).meta["engine"] == "vllm"


def test_engine_registry() -> None:
    """Every engine rule follows the EngineRule protocol under its registry name, in the CLI's order."""
    from moesim.engine_dispatch import EngineRule, engine_names

    assert engine_names() == ("placement", "even", "vllm", "sglang-static", "sglang-dynamic")
    for name, rule in ENGINES.items():
        assert isinstance(rule, EngineRule) and rule.name == name and rule.summary and rule.source
    assert [r.per_rank for r in ENGINES.values()] == [False, True, True, True, True]

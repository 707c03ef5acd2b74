"""vLLM-format configs: names, device normalisation, load/pick/save, defaults, and every shipped file runs."""

from __future__ import annotations

import json

import pytest
import torch

from kernels import configs, fused_moe, reference_moe
from kernels.fused_moe import CONFIG_KEYS, check_config

REF = configs.reference_dir()
needs_ref = pytest.mark.skipif(REF is None, reason="vLLM configs folder (profiles/vllm_configs) not present")
VLLM_GRID = {
    "BLOCK_SIZE_M": {16, 32, 64, 128, 256},
    "BLOCK_SIZE_N": {32, 64, 128, 256},
    "BLOCK_SIZE_K": {64, 128, 256},
    "GROUP_SIZE_M": {1, 16, 32, 64},
    "num_warps": {4, 8},
    "num_stages": {2, 3, 4, 5},
}


@pytest.mark.parametrize(
    "raw,want",
    [
        ("NVIDIA H100 80GB HBM3", "NVIDIA_H100_80GB_HBM3"),
        ("NVIDIA H200", "NVIDIA_H200"),
        ("NVIDIA H200 NVL", "NVIDIA_H200"),
        ("NVIDIA_H200", "NVIDIA_H200"),
        # vLLM maps only names with H200 as a whole "_"-separated word: GH200 keeps its own files
        ("NVIDIA GH200 480GB", "NVIDIA_GH200_480GB"),
        ("NVIDIA GH200 120GB", "NVIDIA_GH200_120GB"),
        ("NVIDIA H20", "NVIDIA_H20"),
        ("NVIDIA A100-SXM4-80GB", "NVIDIA_A100-SXM4-80GB"),
        ("AMD Instinct MI300X/MI325X", "AMD_Instinct_MI300X_MI325X"),
        # vLLM 0.33.0: each run of whitespace and "/" is one "_", before the H200 rule
        ("NVIDIA  H100\t80GB HBM3", "NVIDIA_H100_80GB_HBM3"),
        ("AMD Instinct MI300X / MI325X", "AMD_Instinct_MI300X_MI325X"),
        ("NVIDIA H200/GH200", "NVIDIA_H200"),
    ],
)
def test_device_name_normalisation(raw, want):
    assert configs.normalize_device_name(raw) == want


def test_file_name():
    assert (
        configs.config_file_name(8, 7168, "NVIDIA H100 80GB HBM3")
        == "E=8,N=7168,device_name=NVIDIA_H100_80GB_HBM3.json"
    )
    assert (
        configs.config_file_name(128, 384, "NVIDIA_H200", "fp8_w8a8")
        == "E=128,N=384,device_name=NVIDIA_H200,dtype=fp8_w8a8.json"
    )
    # block-quantised files: vLLM writes the list without spaces, and only when no entry is 0
    assert (
        configs.config_file_name(128, 192, "NVIDIA H100 80GB HBM3", "fp8_w8a8", [128, 128])
        == "E=128,N=192,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8,block_shape=[128,128].json"
    )
    assert (
        configs.config_file_name(128, 384, "NVIDIA H100 PCIe", None, (128, 128))
        == "E=128,N=384,device_name=NVIDIA_H100_PCIe,block_shape=[128,128].json"
    )
    assert (
        configs.config_file_name(8, 7168, "NVIDIA H200", "fp8_w8a8", [0, 0])
        == "E=8,N=7168,device_name=NVIDIA_H200,dtype=fp8_w8a8.json"
    )


# names of files in vLLM's vllm/model_executor/layers/fused_moe/configs/ (vllm-project/vllm)
VLLM_NAMES = [
    "E=1,N=14336,device_name=NVIDIA_A100-SXM4-80GB,dtype=int8_w8a16.json",
    "E=10,N=512,device_name=Intel(R)_Arc(TM)_Pro_B60_Graphics.json",
    "E=128,N=1536,device_name=AMD_Instinct_MI308X,dtype=fp8_w8a8,block_shape=[128,128].json",
    "E=128,N=192,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8,block_shape=[128,128].json",
    "E=128,N=384,device_name=NVIDIA_H100_PCIe,block_shape=[128,128].json",
    "E=128,N=384,device_name=NVIDIA_H20-3e.json",
    "E=128,N=1024,device_name=NVIDIA_H200.json",
]


@pytest.mark.parametrize("name", VLLM_NAMES)
def test_parse_and_rebuild_vllm_names(name):
    f = configs.parse_config_file_name(name)
    block = [int(b) for b in f["block_shape"].strip("[]").split(",")] if "block_shape" in f else None
    assert configs.config_file_name(int(f["E"]), int(f["N"]), f["device_name"], f.get("dtype"), block) == name


def _vllm_pick(path, M):
    """vLLM's get_moe_configs + try_get_optimal_moe_config on one file, restated."""
    raw = json.loads(path.read_text())
    raw.pop("triton_version", None)
    table = {int(k): v for k, v in raw.items()}
    return table[min(table.keys(), key=lambda x: abs(x - M))]


def test_pick_nearest_m():
    table = {1: {"a": 1}, 16: {"a": 16}, 64: {"a": 64}, 1024: {"a": 1024}}
    assert configs.pick_config(table, 1)["a"] == 1
    assert configs.pick_config(table, 40)["a"] == 16  # tie 40-16 = 64-40: the first key in order
    assert configs.pick_config(table, 41)["a"] == 64
    assert configs.pick_config(table, 100000)["a"] == 1024
    with pytest.raises(ValueError):
        configs.pick_config({}, 1)


def test_pick_ties_follow_file_order_like_vllm(tmp_path):
    """A file listing M descending: vLLM's min() over the keys in file order picks the earlier key on a tie."""
    path = tmp_path / "E=4,N=64,device_name=X.json"
    cfg = configs.default_config(1, 4, 64, 32)
    path.write_text(
        json.dumps({"triton_version": "3.4.0", "64": {**cfg, "BLOCK_SIZE_M": 64}, "16": {**cfg, "BLOCK_SIZE_M": 16}})
    )
    table = configs.load_configs(path)
    assert list(table) == [64, 16]
    for M in (1, 16, 39, 40, 41, 64, 500):
        assert configs.pick_config(table, M) == _vllm_pick(path, M), M
    assert configs.pick_config(table, 40)["BLOCK_SIZE_M"] == 64


@needs_ref
def test_pick_matches_vllm_on_every_shipped_file():
    for path in sorted(REF.glob("E=*.json")):
        table = configs.load_configs(path)
        ms = sorted(table)
        probes = set(ms) | {1, 3, 10**6} | {(a + b) // 2 for a, b in zip(ms, ms[1:])}  # midpoints: ties
        probes |= {m + 1 for m in probes}
        for M in sorted(probes):
            assert configs.pick_config(table, M) == _vllm_pick(path, M), (path.name, M)


def test_user_folder_first_then_shipped(monkeypatch, tmp_path):
    """VLLM_TUNED_CONFIG_FOLDER is searched before the shipped folder, file by file (vLLM's get_moe_configs)."""
    monkeypatch.setattr(configs, "device_name", lambda: "NVIDIA_TEST_GPU")
    ref = tmp_path / "shipped"
    user = tmp_path / "user"
    ref.mkdir()
    user.mkdir()
    monkeypatch.setattr(configs, "reference_dir", lambda: ref)
    monkeypatch.setenv("VLLM_TUNED_CONFIG_FOLDER", str(user))
    cfg = configs.default_config(1, 4, 64, 32)
    configs.save_configs(ref / configs.config_file_name(4, 64, "NVIDIA_TEST_GPU"), {1: {**cfg, "num_stages": 2}})
    configs.save_configs(ref / configs.config_file_name(8, 64, "NVIDIA_TEST_GPU"), {1: {**cfg, "num_stages": 2}})
    assert configs.get_config(4, 64, 1)["num_stages"] == 2  # only the shipped file exists
    configs.save_configs(user / configs.config_file_name(4, 64, "NVIDIA_TEST_GPU"), {1: {**cfg, "num_stages": 5}})
    assert configs.get_config(4, 64, 1)["num_stages"] == 5  # the user's file wins (and a new file is seen)
    assert configs.get_config(8, 64, 1)["num_stages"] == 2  # not in the user folder: the shipped one
    assert configs.get_config(16, 64, 1) == configs.default_config(1, 16, 64, 0)  # in neither
    monkeypatch.delenv("VLLM_TUNED_CONFIG_FOLDER")
    assert configs.get_config(4, 64, 1)["num_stages"] == 2


def test_vllm_default_config_by_batch_size():
    # vLLM 0.33.0's get_default_config, bf16 on CUDA: tiles grow with the batch size M, grouping by tokens per expert
    # (checked against vLLM's own function in tests/moesim/test_vllm_configs.py)
    assert configs.vllm_default_config(8, 8) == {
        "BLOCK_SIZE_M": 16,
        "BLOCK_SIZE_N": 64,
        "BLOCK_SIZE_K": 128,
        "GROUP_SIZE_M": 1,
        "SPLIT_K": 1,
        "num_warps": 4,
        "num_stages": 4,
    }
    assert configs.vllm_default_config(96, 8) == {
        "BLOCK_SIZE_M": 32,
        "BLOCK_SIZE_N": 128,
        "BLOCK_SIZE_K": 64,
        "GROUP_SIZE_M": 1,
        "SPLIT_K": 1,
        "num_warps": 4,
        "num_stages": 3,
    }
    assert configs.vllm_default_config(4096, 8) == {
        "BLOCK_SIZE_M": 128,
        "BLOCK_SIZE_N": 128,
        "BLOCK_SIZE_K": 64,
        "GROUP_SIZE_M": 16,
        "SPLIT_K": 1,
        "num_warps": 8,
        "num_stages": 3,
    }
    assert configs.vllm_default_config(4096, 32)["GROUP_SIZE_M"] == 1  # 128 tokens per expert: not > 128
    bms = [configs.vllm_default_config(m, 8)["BLOCK_SIZE_M"] for m in (32, 33, 96, 97, 512, 513)]
    assert bms == [16, 32, 32, 64, 64, 128]
    for M in (1, 8, 9, 64, 65, 128, 129, 4096):
        cfg = configs.vllm_default_config(M, 8)
        assert check_config(cfg) == {k: cfg[k] for k in CONFIG_KEYS}  # SPLIT_K: our kernel has no split


def test_save_load_roundtrip_atomic(tmp_path):
    path = tmp_path / "sub" / configs.config_file_name(4, 64, "NVIDIA H100 80GB HBM3")
    table = {64: configs.default_config(64, 4, 64, 32), 1: configs.default_config(1, 4, 64, 32)}
    configs.save_configs(path, table, triton_version="3.6.0")
    raw = json.loads(path.read_text())
    assert list(raw) == ["triton_version", "1", "64"]
    assert configs.load_configs(path) == dict(sorted(table.items()))
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_default_config_by_batch_size():
    seen = {tuple(sorted(configs.default_config(m, 8, 7168, 4096, 2).items())) for m in (1, 256, 1024, 8192)}
    assert len(seen) >= 3  # not one fixed tile
    for m in (1, 16, 64, 256, 1024, 4096):
        for shape in ((8, 7168, 4096, 2), (128, 384, 2048, 8)):
            cfg = configs.default_config(m, *shape)
            assert all(cfg[k] in VLLM_GRID[k] for k in CONFIG_KEYS), cfg


@needs_ref
def test_every_shipped_file_loads():
    files = sorted(REF.glob("E=*.json"))
    assert len(files) >= 40
    loaded = configs.load_configs(REF)
    assert set(loaded) == {f.name for f in files}
    for name, table in loaded.items():
        fields = configs.parse_config_file_name(name)
        assert int(fields["E"]) >= 1 and int(fields["N"]) >= 1
        assert fields["device_name"].startswith(("NVIDIA_H", "NVIDIA_A100"))
        # our lookup builds exactly this name, so every shipped file can be found
        assert (
            configs.config_file_name(int(fields["E"]), int(fields["N"]), fields["device_name"], fields.get("dtype"))
            == name
        )
        assert table and all(isinstance(m, int) for m in table)
        raw = json.loads((REF / name).read_text())
        assert len(table) == len([k for k in raw if k != "triton_version"])
        for cfg in table.values():
            assert check_config(cfg) == {k: cfg[k] for k in CONFIG_KEYS}
            assert all(cfg[k] in VLLM_GRID[k] for k in CONFIG_KEYS), (name, cfg)


@needs_ref
@pytest.mark.parametrize(
    "E,N,device",
    [
        (8, 7168, "NVIDIA H100 80GB HBM3"),
        (128, 384, "NVIDIA H100 80GB HBM3"),
        (128, 384, "NVIDIA H200"),
        (8, 7168, "NVIDIA H200 NVL"),
    ],
)
def test_benchmark_shapes_find_their_shipped_file(monkeypatch, E, N, device):
    """The issue's shapes (Mixtral TP2: N = 14336/2; Qwen3-30B-A3B TP2: N = 768/2) hit the shipped files."""
    monkeypatch.delenv("VLLM_TUNED_CONFIG_FOLDER", raising=False)
    monkeypatch.setattr(configs, "device_name", lambda: configs.normalize_device_name(device))
    table = configs.shipped_configs(E, N)
    assert table is not None
    on_disk = configs.load_configs(REF / configs.config_file_name(E, N, device))
    assert table == on_disk
    assert configs.get_config(E, N, 1000) == configs.pick_config(on_disk, 1000)
    assert configs.get_config(E, N + 1, 1000) == configs.default_config(1000, E, N + 1, 0)


def _one_config_per_file():
    if REF is None:
        return []
    # the smallest-M entry of each file: small row blocks, cheap to interpret
    return [
        pytest.param(table[min(table)], id=name.removesuffix(".json"))
        for name, table in sorted(configs.load_configs(REF).items())
    ]


@needs_ref
@pytest.mark.parametrize("cfg", _one_config_per_file())
def test_shipped_configs_run(device, cfg):
    """One config of every shipped file runs our kernel correctly on a tiny shape."""
    _check_runs(device, cfg)


@pytest.mark.parametrize("M", [1, 9], ids=["M<=E", "M>E"])
def test_vllm_default_configs_run(device, M):
    _check_runs(device, configs.vllm_default_config(M, 4))


def _check_runs(device, cfg):
    gen = torch.Generator().manual_seed(sum(cfg.values()))
    M, E, N, K, k = 9, 4, 48, 40, 2
    h = torch.randn(M, K, generator=gen).to(device, torch.float32)
    w1 = (torch.randn(E, 2 * N, K, generator=gen) / K**0.5).to(device)
    w2 = (torch.randn(E, K, N, generator=gen) / N**0.5).to(device)
    ids = torch.rand(M, E, generator=gen).topk(k, dim=1).indices.to(torch.int32).to(device)
    w = torch.softmax(torch.randn(M, k, generator=gen), dim=1).to(device)
    ref = reference_moe(h.double(), w1.double(), w2.double(), w.double(), ids)
    out = fused_moe(h, w1, w2, w, ids, config=cfg)
    assert float((out.double().cpu() - ref.cpu()).norm() / ref.norm()) < 1e-5

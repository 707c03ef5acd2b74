"""The tile vLLM's and SGLang's Triton fused MoE run: tuned files, defaults by engine version, folder order; and
the file names, tables, picks and defaults checked against vLLM 0.33.0's own code (``vllm_loader.py``)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from moesim.errors import SpecError
from moesim.specs import sglang_configs_dir, vllm_configs_dir
from moesim.vllm_configs import (
    CPU_DEVICE_NAME,
    TileSource,
    config_file_name,
    kernel_tile,
    legacy_default_config,
    load_configs,
    normalize_device_name,
    parse_config_file_name,
    pick_config,
    tuned_configs,
    vllm_default_config,
)

H100 = "NVIDIA H100 80GB HBM3"


def _helper(name: str):
    """A helper module next to this file (pytest runs with --import-mode=importlib: this folder is not on the path)."""
    spec = importlib.util.spec_from_file_location(f"_moesim_tests_{name}", Path(__file__).with_name(f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


vllm_loader = _helper("vllm_loader")


def _tile(cfg: dict) -> tuple[float, ...]:
    return tuple(float(cfg.get(k, d)) for k, d in (("BLOCK_SIZE_M", 0), ("BLOCK_SIZE_N", 0), ("BLOCK_SIZE_K", 0),
                                                   ("num_warps", 4), ("num_stages", 3)))  # fmt: skip


def test_engine_and_version_choose_the_default() -> None:
    assert TileSource("vllm", "0.24.0").default_config(8, 8) == vllm_default_config(8, 8)
    assert TileSource("vllm", None).default_config(8, 8) == vllm_default_config(8, 8)
    assert TileSource("vllm", "0.14.0").default_config(8, 8) == legacy_default_config(8, 8)
    assert TileSource("sglang", "0.5.14").default_config(9, 8) == legacy_default_config(9, 8)
    assert legacy_default_config(8, 8)["BLOCK_SIZE_N"] == 32 and legacy_default_config(9, 8)["BLOCK_SIZE_N"] == 64
    with pytest.raises(SpecError, match="tile: engine: must be one of vllm, sglang"):
        TileSource("trtllm")


def test_tuned_file_wins_over_the_default() -> None:
    folder = vllm_configs_dir()
    assert folder is not None
    table = load_configs(folder / config_file_name(8, 7168, H100))
    got = kernel_tile(np.array([1.0, 100.0, 3000.0]), 8, 7168, TileSource("vllm", "0.24.0", H100))
    for i, m in enumerate((1, 100, 3000)):
        assert tuple(a[i] for a in got) == _tile(pick_config(table, m))
    # no file for this shard: vLLM's default; no device: the default too
    got = kernel_tile(np.array([1.0, 100.0]), 8, 7000, TileSource("vllm", "0.24.0", H100))
    assert tuple(a[1] for a in got) == _tile(vllm_default_config(100, 8))
    none = kernel_tile(1.0, 8, 7168, TileSource("vllm", "0.24.0", None))
    assert tuple(float(a) for a in none) == _tile(vllm_default_config(1, 8))


def test_tokens_round_and_keep_their_shape() -> None:
    t = np.array([[0.2, 31.6], [32.6, 600.0]])
    bm = kernel_tile(t, 8, 7000)[0]
    assert bm.shape == (2, 2)
    assert bm.tolist() == [[16.0, 16.0], [32.0, 128.0]]  # 0.2 -> 1, 31.6 -> 32 (<= 32: 16), 32.6 -> 33


def test_sglang_searches_its_triton_first_then_newest() -> None:
    root = sglang_configs_dir()
    assert root is not None
    names = [d.name for d in TileSource("sglang", "0.5.14").folders()]
    assert names[0] == "triton_3_6_0"
    assert names[1:] == sorted(names[1:], key=lambda n: tuple(int(x) for x in n[7:].split("_")), reverse=True)
    unknown = [d.name for d in TileSource("sglang", "9.9").folders()]
    assert unknown == sorted(unknown, key=lambda n: tuple(int(x) for x in n[7:].split("_")), reverse=True)
    # E=128, N=704 on H200 is only in the 3.6.0 folder; E=8, N=7168 on H100 only in an older one
    src = TileSource("sglang", "0.5.14", "NVIDIA H200")
    table = load_configs(root / "triton_3_6_0" / config_file_name(128, 704, "NVIDIA H200"))
    assert tuple(float(a) for a in kernel_tile(64.0, 128, 704, src)) == _tile(pick_config(table, 64))
    old = [d for d in TileSource("sglang", "0.5.14").folders() if (d / config_file_name(8, 7168, H100)).is_file()]
    assert old and old[0].name != "triton_3_6_0"
    table = load_configs(old[0] / config_file_name(8, 7168, H100))
    got = kernel_tile(4.0, 8, 7168, TileSource("sglang", "0.5.14", H100))
    assert tuple(float(a) for a in got) == _tile(pick_config(table, 4))


# --- against vLLM's own code (tests/moesim/vllm_loader.py: the installed wheel's functions, run on this CPU) ---

M_ALL = range(1, 16385)
K = 1024  # the hidden size: vLLM's lookup and its bf16 default do not use it
REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "vllm_fused_moe_configs"


@pytest.fixture(scope="module")
def vllm() -> vllm_loader.Vllm:
    return vllm_loader.load()


TRICKY_NAMES = [
    "NVIDIA H100 80GB HBM3",
    "NVIDIA  H100\t80GB   HBM3",  # runs of spaces and a tab: one "_" each
    " NVIDIA H100 ",
    "NVIDIA H100\n",
    "AMD Instinct MI300X/MI325X",
    "AMD Instinct MI300X / MI325X",  # "/" in a run of spaces
    "a//b",
    "a_ _b",  # underscores already there stay
    "NVIDIA H200",
    "NVIDIA H200 NVL",
    "NVIDIA  H200\tNVL",
    "NVIDIA H200/GH200",  # "/" splits the words before the H200 rule
    "nvidia h200",  # the rule is case-sensitive
    "NVIDIA GH200 480GB",
    "NVIDIA_H200_",
    "Intel(R) Arc(TM) Pro B70 Graphics",
    "NVIDIA\u00a0H100\u2003x\u3000y",  # no-break, em and ideographic spaces are whitespace to vLLM
    "a\x1cb\x1fc",  # information separators are not (vLLM's `regex` module; the stdlib `re` says they are)
    "",
    "cpu",
]


@pytest.mark.parametrize("name", TRICKY_NAMES)
def test_device_name_rule_is_vllms(vllm, name: str) -> None:
    with vllm.on(vllm.cuda_platform(name)):
        assert config_file_name(8, 7168, name) == vllm.get_config_file_name(8, 7168, None)
        assert config_file_name(8, 7168, name, "fp8_w8a8", [128, 128]) == vllm.get_config_file_name(
            8, 7168, "fp8_w8a8", [128, 128]
        )
        assert normalize_device_name(normalize_device_name(name)) == normalize_device_name(name)


def test_device_name_rule_is_vllms_on_every_code_point(vllm) -> None:
    name = "x" + "x".join(chr(c) for c in range(sys.maxunicode + 1)) + "x"
    with vllm.on(vllm.cuda_platform(name)):
        assert config_file_name(1, 1, name) == vllm.get_config_file_name(1, 1, None)


def _shape(name: str) -> tuple[int, int, str | None, list[int] | None]:
    f = parse_config_file_name(name)
    block = [int(b) for b in f["block_shape"].strip("[]").split(",")] if "block_shape" in f else None
    return int(f["E"]), int(f["N"]), f.get("dtype"), block


def _both(vllm: vllm_loader.Vllm, folder: Path, name: str, ms: Sequence[int] | range, device: str | None = None):
    """vLLM's and moesim's table (``get_moe_configs`` / ``tuned_configs``) and pick for each M
    (``try_get_optimal_moe_config`` / ``pick_config``) for the file ``folder/name`` on ``device`` (default: the
    file's device name), ``folder`` as ``VLLM_TUNED_CONFIG_FOLDER`` (then the wheel's folder, as vLLM)."""
    E, N, dtype, block = _shape(name)
    device = parse_config_file_name(name)["device_name"] if device is None else device
    ours = tuned_configs(E, N, device, dtype, block, dirs=[folder, vllm.configs_dir])
    n_w2 = N // 2 if dtype == "int4_w4a16" else N  # vLLM doubles w2's N for int4 before the lookup
    bn, bk = block if block else (0, 0)
    with vllm.on(vllm.cuda_platform(device) if device != CPU_DEVICE_NAME else vllm.cpu_platform(), folder):
        theirs = vllm.get_moe_configs(E, N, dtype, bn, bk)
        if theirs is None:
            return None, ours, [], []
        their = vllm_loader.picks(lambda m: vllm.try_get_optimal_moe_config((E, 2 * n_w2, K), (E, K, n_w2), 2,
                                                                            dtype, m, block), ms)  # fmt: skip
    our = vllm_loader.picks(lambda m: pick_config(ours, m), ms) if ours else []
    return theirs, ours, their, our


def _differ(our: list, their: list, ms: Sequence[int] | range) -> tuple | None:
    """The first M whose picks differ, with both picks; None when every M agrees."""
    if our == their:
        return None
    if len(our) != len(their):
        return ("picks", len(our), len(their))
    i = next(i for i, (a, b) in enumerate(zip(our, their)) if a != b)
    return ms[i], our[i], their[i]


def _probes(keys: Sequence[int]) -> list[int]:
    """Every M in 1..16384 where the nearest key can change: the keys and around each midpoint (ties)."""
    ks = sorted(set(keys))
    out = {1, M_ALL[-1], *ks}
    for a, b in zip(ks, ks[1:]):
        out |= {(a + b) // 2 + d for d in (-1, 0, 1, 2)}
    return sorted(m for m in out if 1 <= m <= M_ALL[-1])


def _config_files(vllm: vllm_loader.Vllm) -> list[tuple[Path, str]]:
    """Every file named as ``get_config_file_name`` names them, in the wheel, ours and the reference copy (the
    wheel's ``...,backend=flydsl.json`` files are for another kernel's lookup, ``fused_flydsl_moe.py``)."""
    folders = [vllm.configs_dir, vllm_configs_dir(), REFERENCE if REFERENCE.is_dir() else None]
    out = []
    for folder in (d for d in folders if d is not None):
        for f in sorted(folder.glob("E=*.json")):
            E, N, dtype, block = _shape(f.name)
            if config_file_name(E, N, parse_config_file_name(f.name)["device_name"], dtype, block) == f.name:
                out.append((folder, f.name))
            else:
                assert ",backend=" in f.name, f
    return out


def test_every_shipped_file_is_read_and_picked_as_vllm_does(vllm) -> None:
    """vLLM's wheel's files (Intel's "grf_mode": "256" strings, ROCm's extra keys, unsorted keys), ours and the
    reference copies: the same table, values and their types, and the same pick at every M where it can change;
    then every M in 1..16384 on one file of each key order (the pick depends on nothing else)."""
    files = _config_files(vllm)
    assert len(files) > 300
    by_order: dict[tuple[int, ...], tuple[Path, str]] = {}
    strings = 0
    for folder, name in files:
        ours = load_configs(folder / name)
        probes = _probes(list(ours))
        theirs, looked_up, their, our = _both(vllm, folder, name, probes)
        assert theirs is not None, (folder, name)
        assert json.dumps(list(looked_up.items())) == json.dumps(list(ours.items())), (folder, name)  # this file
        assert json.dumps(list(looked_up.items())) == json.dumps(list(theirs.items())), (folder, name)
        assert _differ(our, their, probes) is None, (folder, name, _differ(our, their, probes))
        strings += sum(isinstance(v, str) for cfg in ours.values() for v in cfg.values())
        by_order.setdefault(tuple(ours), (folder, name))
    assert strings >= 42  # the Intel files' grf_mode values, kept as strings
    assert any(list(order) != sorted(order) for order in by_order)  # ties follow file order
    for folder, name in by_order.values():
        _, _, their, our = _both(vllm, folder, name, M_ALL)
        assert _differ(our, their, M_ALL) is None, (folder, name, _differ(our, their, M_ALL))


def test_odd_values_and_keys_are_kept_as_vllm_keeps_them(vllm, tmp_path) -> None:
    """Any JSON value stays as it is; keys in any order; "016" and "16" are one batch size (the later value in
    the earlier place, as a dict comprehension keeps it)."""
    cfg = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1, "num_warps": 4}
    raw = {
        "4096": {**cfg, "num_stages": 3, "grf_mode": "256"},
        "016": {**cfg, "num_stages": 2.0},
        "triton_version": "3.6.0",
        "1": {**cfg, "num_stages": 4, "flag": True, "none": None, "list": [1, "2"]},
        "64": {**cfg, "num_stages": "3"},
        "16": {**cfg, "num_stages": 5, "grf_mode": "large"},
        "40": {**cfg, "num_stages": 1},
    }
    name = config_file_name(16, 256, "Intel(R) Arc(TM) Pro B70 Graphics")
    (tmp_path / name).write_text(json.dumps(raw))
    theirs, ours, their, our = _both(vllm, tmp_path, name, M_ALL)
    assert json.dumps(list(ours.items())) == json.dumps(list(theirs.items()))
    assert list(ours) == [4096, 16, 1, 64, 40] and ours[16]["grf_mode"] == "large" and ours[64]["num_stages"] == "3"
    assert _differ(our, their, M_ALL) is None, _differ(our, their, M_ALL)


def _autotune_file(folder: Path, device: str, E: int, N: int, ms: Sequence[int]) -> Path:
    """What ``moesim autotune kernel --save-dir folder`` writes (``tuner.autotune.kernel.results.save_results``)."""
    pytest.importorskip("triton", reason="the autotune writer records the Triton version (the kernels extra)")
    from tuner.autotune import space as ks
    from tuner.autotune.kernel import results as ak
    from tuner.autotune.kernel.spec import KernelTuneSpec

    rng = np.random.default_rng(E * N)
    grid = [dict(zip(ks.PARAM_NAMES, c)) for c in itertools.product(*(ks.PARAM_CHOICES[k] for k in ks.PARAM_NAMES))]
    results = [ak.MResult(m, grid[int(rng.integers(len(grid)))], 10.0, 3, 0, 0, None, None, None, "trials") for m in ms]
    return ak.save_results(KernelTuneSpec(E=E, N=N, K=K, ms=tuple(ms)), results, str(folder), device)


@pytest.mark.parametrize("device", ["NVIDIA_H100_80GB_HBM3", "NVIDIA_H200", CPU_DEVICE_NAME])
def test_autotune_output_is_picked_as_vllm_does(vllm, tmp_path, device: str) -> None:
    """Every M in 1..16384, on files written by the autotune's writer: a new one, then one merged into."""
    path = _autotune_file(tmp_path, device, 8, 7168, (1, 2, 3, 8, 40, 64, 100, 256, 1000, 1024, 4096, 8192))
    theirs, ours, their, our = _both(vllm, tmp_path, path.name, M_ALL, device)
    assert theirs is not None and _differ(our, their, M_ALL) is None, _differ(our, their, M_ALL)
    merged = _autotune_file(tmp_path, device, 8, 7168, (5, 24, 12288, 16384, 32768))
    assert merged == path
    theirs, ours, their, our = _both(vllm, tmp_path, path.name, M_ALL, device)
    assert theirs is not None and len(ours) == 17
    assert _differ(our, their, M_ALL) is None, _differ(our, their, M_ALL)


def test_default_config_is_vllms(vllm) -> None:
    """vLLM 0.33.0's get_default_config, bf16/fp16 (dtype None) on CUDA, for every M in 1..16384."""
    with vllm.on(vllm.cuda_platform("NVIDIA H100 80GB HBM3")):
        for E in (1, 2, 3, 8, 60, 128, 257, 512):
            for M in M_ALL:
                assert vllm_default_config(M, E) == vllm.get_default_config(M, E, 7168, K, 2, None), (E, M)
        for E, M in itertools.product((1, 4, 16, 32, 64, 160, 256, 384), (1, 32, 33, 128, 129, 4096, 16384)):
            for N, top_k in ((384, 8), (14336, 1)):
                assert json.dumps(vllm_default_config(M, E)) == json.dumps(
                    vllm.get_default_config(M, E, N, K, top_k, None)
                ), (E, M)


def test_on_a_cpu_the_file_written_is_the_file_looked_up(vllm, tmp_path, monkeypatch) -> None:
    """`autotune kernel --backend interpret` writes the name that moesim's kernels and vLLM look up on a CPU."""
    torch = pytest.importorskip("torch", reason="the kernels extra")
    from kernels import configs as kconfigs
    from tuner.autotune.kernel.device import device_label

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    label = device_label("interpret")
    assert label == kconfigs.device_name() == CPU_DEVICE_NAME
    path = _autotune_file(tmp_path, label, 4, 32, (1, 2, 16, 64))
    monkeypatch.setenv("VLLM_TUNED_CONFIG_FOLDER", str(tmp_path))
    assert kconfigs.tuned_configs(4, 32) == load_configs(path)  # found by moesim's lookup on this CPU
    with vllm.on(vllm.cpu_platform(), tmp_path):
        assert vllm.device_file_name() == CPU_DEVICE_NAME
        assert vllm.get_config_file_name(4, 32, None) == path.name
    theirs, _, their, our = _both(vllm, tmp_path, path.name, M_ALL, CPU_DEVICE_NAME)
    assert theirs is not None and _differ(our, their, M_ALL) is None, _differ(our, their, M_ALL)

"""The tile vLLM's and SGLang's Triton fused MoE run: tuned files, defaults by engine version, folder order."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.errors import SpecError
from moesim.specs import sglang_configs_dir, vllm_configs_dir
from moesim.vllm_configs import (
    TileSource,
    config_file_name,
    kernel_tile,
    legacy_default_config,
    load_configs,
    pick_config,
    vllm_default_config,
)

H100 = "NVIDIA H100 80GB HBM3"


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

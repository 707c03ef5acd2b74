"""vLLM's grid and the shared-memory filter."""

from __future__ import annotations

import pytest

from moesim.errors import InfeasibleError, SpecError
from tuner.autotune import space as ks


def test_grid_is_vllms_1920_configs():
    grid = ks.full_grid()
    assert len(grid) == 5 * 4 * 3 * 4 * 2 * 4 == 1920
    assert len({ks.config_key(c) for c in grid}) == 1920
    assert list(grid[0]) == list(ks.PARAM_NAMES)


def test_smem_formula():
    cfg = {
        "BLOCK_SIZE_M": 128,
        "BLOCK_SIZE_N": 256,
        "BLOCK_SIZE_K": 64,
        "GROUP_SIZE_M": 16,
        "num_warps": 8,
        "num_stages": 4,
    }
    assert ks.smem_bytes(cfg, 2) == 4 * (128 * 64 + 64 * 256) * 2 == 196608
    assert ks.is_feasible(cfg, 227)
    assert not ks.is_feasible(cfg, 163)  # A100's 163 KB


def test_hopper_filter_keeps_1248_and_all_shipped_mixtral_configs():
    feasible = ks.feasible_grid(227, 2)
    assert len(feasible) == 1248
    assert all(ks.smem_bytes(c) <= 227 * 1024 for c in feasible)
    # Every config vLLM ships for Mixtral TP2 on H100 is in the grid and passes the filter.
    import json

    from moesim.specs import vllm_configs_dir

    path = vllm_configs_dir() / "E=8,N=7168,device_name=NVIDIA_H100_80GB_HBM3.json"
    if not path.exists():
        pytest.skip(f"{path} not present")
    for m, cfg in json.loads(path.read_text()).items():
        if m == "triton_version":
            continue
        assert ks.in_grid(cfg) and ks.is_feasible(cfg, 227), (m, cfg)


def test_fp8_halves_the_footprint():
    assert len(ks.feasible_grid(227, 1)) > len(ks.feasible_grid(227, 2))


def test_empty_space_says_so():
    with pytest.raises(InfeasibleError, match="empty: no config"):
        ks.feasible_grid(8, 2)
    with pytest.raises(SpecError):
        ks.feasible_grid(0, 2)


def test_normalize_config_drops_extras_and_rejects_bad_values():
    cfg = ks.normalize_config(
        {
            "BLOCK_SIZE_M": 16.0,
            "BLOCK_SIZE_N": 64,
            "BLOCK_SIZE_K": 128,
            "GROUP_SIZE_M": 1,
            "num_warps": 4,
            "num_stages": 3,
            "kpack": 2,
        }
    )
    assert cfg == ks.config_from_key(ks.config_key(cfg)) and "kpack" not in cfg
    with pytest.raises(SpecError, match="num_stages"):
        ks.normalize_config({**cfg, "num_stages": 0})
    with pytest.raises(SpecError, match="missing"):
        ks.normalize_config({"BLOCK_SIZE_M": 16})


def test_gpu_profile_limit():
    try:
        from moesim.specs import load_gpu

        gpu = load_gpu("h100-sxm")
    except Exception as exc:  # profile not shipped in this checkout
        pytest.skip(f"h100-sxm profile unavailable: {exc}")
    kb, src = ks.smem_limit_kb_for("h100-sxm")
    assert kb == gpu.smem_per_block_kb and "h100-sxm" in src
    assert ks.gpu_slug_for_device("NVIDIA H100 80GB HBM3") is not None

"""vLLM-format tuned configs for the fused-MoE kernel: file names, load, pick, save, and a batch-size default.

A file ``E={E},N={N},device_name={device}[,dtype={dtype}].json`` maps batch sizes M (JSON keys, strings) to a
config ``{BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K, GROUP_SIZE_M, num_warps, num_stages}``; an optional
``"triton_version"`` key records the Triton the file was tuned with and is not a batch size.

N in the name is the intermediate size per expert per TP shard, i.e. ``w2.shape[2]`` (w1 is [E, 2N, K]):
vLLM's ``benchmarks/kernels/benchmark_moe.py`` names files with ``shard_intermediate_size // 2`` where
``shard_intermediate_size = 2 * intermediate_size // tp``. Mixtral-8x7B (intermediate 14336) at TP2 -> N=7168;
Qwen3-30B-A3B (moe_intermediate 768) at TP2 -> N=384. E is the number of local experts (``w1.shape[0]``).

Device names follow vLLM: ``torch.cuda.get_device_name()`` with spaces and ``/`` replaced by ``_``, and any H200
variant becomes ``NVIDIA_H200``.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from moesim.fileio import atomic_write_text

Config = dict[str, int]

def reference_dir() -> Path | None:
    """The folder of vLLM's shipped config files (:func:`moesim.specs.vllm_configs_dir`), or None."""
    from moesim.specs import vllm_configs_dir

    return vllm_configs_dir()


def normalize_device_name(name: str) -> str:
    """vLLM's spelling: spaces and ``/`` become ``_``; any H200 is ``NVIDIA_H200``."""
    if "H200" in name:
        return "NVIDIA_H200"
    return name.replace(" ", "_").replace("/", "_")


def device_name() -> str:
    """Normalised name of CUDA device 0 (``"cpu"`` without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return normalize_device_name(torch.cuda.get_device_name())


def config_file_name(E: int, N: int, device_name: str, dtype: str | None = None) -> str:
    """``E={E},N={N},device_name={device}[,dtype={dtype}].json`` (bf16/fp16 files carry no dtype)."""
    tag = f",dtype={dtype}" if dtype else ""
    return f"E={E},N={N},device_name={normalize_device_name(device_name)}{tag}.json"


def parse_config_file_name(name: str) -> dict[str, str]:
    """``"E=8,N=7168,device_name=NVIDIA_H200.json"`` -> ``{"E": "8", "N": "7168", "device_name": ...}``."""
    fields: dict[str, str] = {}
    for part in Path(name).name.removesuffix(".json").split(","):
        if "=" in part:
            key, value = part.split("=", 1)
            fields[key] = value
    return fields


def _load_file(path: Path) -> dict[int, Config]:
    with open(path) as f:
        raw = json.load(f)
    if not isinstance(raw, dict):
        raise TypeError(f"{path}: expected a JSON object of batch size -> config")
    out: dict[int, Config] = {}
    for key, cfg in raw.items():
        if key == "triton_version":
            continue
        try:
            m = int(key)
        except ValueError as exc:
            raise ValueError(f"{path}: key {key!r} is not a batch size") from exc
        if not isinstance(cfg, dict):
            raise TypeError(f"{path}: M={key}: config must be an object, got {cfg!r}")
        out[m] = {k: int(v) for k, v in cfg.items()}
    return dict(sorted(out.items()))


def load_configs(dir_or_file: str | os.PathLike) -> dict:
    """Load one file -> ``{M: config}``; or a folder -> ``{file_name: {M: config}}`` for every ``E=*.json``."""
    p = Path(dir_or_file)
    if p.is_dir():
        return {f.name: _load_file(f) for f in sorted(p.glob("E=*.json"))}
    return _load_file(p)


def pick_config(configs: dict[int, Config], M: int) -> Config:
    """The config of the batch size nearest to M (ties: the smaller M), as vLLM does."""
    if not configs:
        raise ValueError("pick_config: no configs")
    best = min(configs, key=lambda m: (abs(int(m) - M), int(m)))
    return dict(configs[best])


def default_config(M: int, E: int, N: int, K: int, top_k: int = 2) -> Config:
    """A config chosen by batch size when no tuned file fits.

    The deciding quantity is tokens per expert, ``M*top_k/E``: below a tile of 16 rows the GEMMs are weight-bound
    (each expert's weights are streamed once for a few rows), so small row blocks and wide K steps keep the
    HBM stream busy; as rows grow the kernel turns compute-bound and wants large square-ish tiles, more warps
    and L2 grouping. All values lie in vLLM's tuning grid (tuner.kernel_space) so the tuner can start from it.
    """
    per_expert = M * top_k / max(E, 1)
    if per_expert <= 16:
        cfg = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1,
               "num_warps": 4, "num_stages": 4}
    elif per_expert <= 64:
        cfg = {"BLOCK_SIZE_M": 32, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 16,
               "num_warps": 4, "num_stages": 4}
    elif per_expert <= 256:
        cfg = {"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 128, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 16,
               "num_warps": 4, "num_stages": 4}
    else:
        cfg = {"BLOCK_SIZE_M": 128, "BLOCK_SIZE_N": 128, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 16,
               "num_warps": 8, "num_stages": 4}
    # narrow experts (small N) leave few column tiles: halve BLOCK_SIZE_N so more programs run
    if N < 512 and cfg["BLOCK_SIZE_N"] > 64:
        cfg["BLOCK_SIZE_N"] = 64
    return cfg


@functools.lru_cache(maxsize=64)
def _shipped(E: int, N: int, device: str, dtype: str | None) -> tuple[tuple[int, tuple], ...] | None:
    folder = reference_dir()
    if folder is None:
        return None
    path = folder / config_file_name(E, N, device, dtype)
    if not path.is_file():
        return None
    return tuple((m, tuple(sorted(c.items()))) for m, c in _load_file(path).items())


def shipped_configs(E: int, N: int, device: str | None = None, dtype: str | None = None) -> dict[int, Config] | None:
    """The shipped vLLM file for (E, N, device[, dtype]) as ``{M: config}``, or None."""
    got = _shipped(E, N, normalize_device_name(device or device_name()), dtype)
    return None if got is None else {m: dict(c) for m, c in got}


def get_config(E: int, N: int, M: int, K: int = 0, top_k: int = 2, dtype: str | None = None) -> Config:
    """Config for one call: the shipped vLLM file for this device and shape (nearest M), else the default."""
    configs = shipped_configs(E, N, None, dtype)
    if configs:
        return pick_config(configs, M)
    return default_config(M, E, N, K, top_k)


def save_configs(path: str | os.PathLike, configs: dict[int, dict[str, Any]],
                 triton_version: str | None = None) -> None:
    """Write ``{M: config}`` as a vLLM JSON file (keys as strings, ascending M), atomically (temp + rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {}
    if triton_version:
        doc["triton_version"] = triton_version
    for m in sorted(configs, key=int):
        doc[str(int(m))] = {k: int(v) for k, v in configs[m].items()}
    atomic_write_text(p, json.dumps(doc, indent=4) + "\n")

"""vLLM-format tuned configs for the fused-MoE kernel: file names, load, pick, save, and a batch-size default.

A file ``E={E},N={N},device_name={device}[,dtype={dtype}][,block_shape=[{bn},{bk}]].json`` maps batch sizes M
(JSON keys, strings) to a config ``{BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K, GROUP_SIZE_M, num_warps, num_stages}``;
an optional ``"triton_version"`` key records the Triton the file was tuned with and is not a batch size. This
mirrors vLLM's ``get_config_file_name`` / ``get_moe_configs`` / ``try_get_optimal_moe_config`` in
``vllm/model_executor/layers/fused_moe/fused_moe.py``: the folder ``$VLLM_TUNED_CONFIG_FOLDER`` is searched
before the shipped one, and a batch size M takes the entry with the nearest key (ties: the first in file order).

N in the name is the intermediate size per expert per TP shard, i.e. ``w2.shape[2]`` (w1 is [E, 2N, K]):
vLLM's ``benchmarks/kernels/benchmark_moe.py`` names files with ``shard_intermediate_size // 2`` where
``shard_intermediate_size = 2 * intermediate_size // tp``. Mixtral-8x7B (intermediate 14336) at TP2 -> N=7168;
Qwen3-30B-A3B (moe_intermediate 768) at TP2 -> N=384. E is the number of local experts (``w1.shape[0]``).

Device names follow vLLM's ``get_config_file_name``: the device name with spaces replaced by ``_``, and a name
with ``H200`` as one of its ``_``-separated words (``NVIDIA H200``, ``NVIDIA H200 NVL``) becomes ``NVIDIA_H200``;
``NVIDIA GH200 480GB`` stays ``NVIDIA_GH200_480GB``. We also replace ``/`` (vLLM does not: such a name would
be a sub-folder path there; vLLM's ROCm platform reports names that are already underscored).
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any

from moesim.fileio import atomic_write_text

Config = dict[str, int]


def reference_dir() -> Path | None:
    """The folder of vLLM's shipped config files (:func:`moesim.specs.vllm_configs_dir`), or None."""
    from moesim.specs import vllm_configs_dir

    return vllm_configs_dir()


def normalize_device_name(name: str) -> str:
    """vLLM's spelling: spaces become ``_``; a name with the word ``H200`` is ``NVIDIA_H200`` (GH200 is not);
    ``/`` also becomes ``_`` (ours, so a name never makes a sub-folder)."""
    name = name.replace(" ", "_")
    if "H200" in name.split("_"):
        return "NVIDIA_H200"
    return name.replace("/", "_")


def device_name() -> str:
    """Normalised name of CUDA device 0 (``"cpu"`` without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return normalize_device_name(torch.cuda.get_device_name())


def config_file_name(E: int, N: int, device_name: str, dtype: str | None = None,
                     block_shape: list[int] | tuple[int, ...] | None = None) -> str:
    """``E={E},N={N},device_name={device}[,dtype={dtype}][,block_shape=[{bn},{bk}]].json``.

    bf16/fp16 files carry no dtype; the block_shape part (block-quantised weights) is written, without spaces,
    only when every entry is non-zero, as vLLM does.
    """
    tag = f",dtype={dtype}" if dtype else ""
    if block_shape and all(block_shape):
        tag += ",block_shape=[" + ",".join(str(int(b)) for b in block_shape) + "]"
    return f"E={E},N={N},device_name={normalize_device_name(device_name)}{tag}.json"


def parse_config_file_name(name: str) -> dict[str, str]:
    """``"E=8,N=7168,device_name=NVIDIA_H200.json"`` -> ``{"E": "8", "N": "7168", "device_name": ...}``.

    A ``block_shape=[128,128]`` part keeps its brackets and inner comma: ``{"block_shape": "[128,128]"}``.
    """
    fields: dict[str, str] = {}
    for part in re.split(r",(?![^\[]*\])", Path(name).name.removesuffix(".json")):
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
    return out  # file order, as vLLM keeps it: pick_config's ties go to the earlier entry


def load_configs(dir_or_file: str | os.PathLike) -> dict:
    """Load one file -> ``{M: config}``; or a folder -> ``{file_name: {M: config}}`` for every ``E=*.json``."""
    p = Path(dir_or_file)
    if p.is_dir():
        return {f.name: _load_file(f) for f in sorted(p.glob("E=*.json"))}
    return _load_file(p)


def pick_config(configs: dict[int, Config], M: int) -> Config:
    """The config of the batch size nearest to M, as vLLM's ``try_get_optimal_moe_config``.

    Ties go to the key met first in the table's order, i.e. file order for a loaded file (every shipped file
    lists M ascending, so there the smaller M wins).
    """
    if not configs:
        raise ValueError("pick_config: no configs")
    best = min(configs, key=lambda m: abs(int(m) - M))
    return dict(configs[best])


def vllm_default_config(M: int, E: int) -> Config:
    """vLLM's fallback for an unquantised layer without a tuned file (``get_default_config``).

    ``M <= E``: 16x32x64 tiles, no grouping; else 64x64x32 with ``GROUP_SIZE_M`` 8. vLLM sets no ``num_warps``
    or ``num_stages`` there, so Triton's launch defaults (4 and 3 on CUDA) apply; they are written out here.
    Our own :func:`default_config` is a different, per-expert-load heuristic.
    """
    if M <= E:
        cfg = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 1}
    else:
        cfg = {"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 8}
    return {**cfg, "num_warps": 4, "num_stages": 3}


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


def shipped_configs(E: int, N: int, device: str | None = None, dtype: str | None = None) -> dict[int, Config] | None:
    """The shipped vLLM file for (E, N, device[, dtype]) as ``{M: config}``, or None."""
    folder = reference_dir()
    return None if folder is None else _read(folder / config_file_name(E, N, device or device_name(), dtype))


def config_dirs() -> list[Path]:
    """The folders searched for a config file, first match wins: ``$VLLM_TUNED_CONFIG_FOLDER`` (vLLM's
    user folder, searched first there too), then the shipped folder (:func:`reference_dir`)."""
    dirs = []
    user = os.environ.get("VLLM_TUNED_CONFIG_FOLDER")
    if user:
        dirs.append(Path(user))
    ref = reference_dir()
    if ref is not None:
        dirs.append(ref)
    return dirs


def tuned_configs(E: int, N: int, device: str | None = None, dtype: str | None = None,
                  block_shape: list[int] | tuple[int, ...] | None = None) -> dict[int, Config] | None:
    """The first file named :func:`config_file_name` in :func:`config_dirs` as ``{M: config}``, or None
    (vLLM's ``get_moe_configs``)."""
    name = config_file_name(E, N, device or device_name(), dtype, block_shape)
    for folder in config_dirs():
        got = _read(folder / name)
        if got is not None:
            return got
    return None


def _read(path: Path) -> dict[int, Config] | None:
    """``{M: config}`` of one file (a fresh copy), or None when there is no such file.

    Looked up on every call (a stat), so a file written later is found; parsed once per (path, mtime).
    """
    if not path.is_file():
        return None
    return {m: dict(c) for m, c in _load_cached(str(path), path.stat().st_mtime_ns)}


@functools.lru_cache(maxsize=64)
def _load_cached(path: str, mtime_ns: int) -> tuple[tuple[int, tuple], ...]:
    del mtime_ns  # part of the cache key only: a rewritten file is read again
    return tuple((m, tuple(c.items())) for m, c in _load_file(Path(path)).items())


def get_config(E: int, N: int, M: int, K: int = 0, top_k: int = 2, dtype: str | None = None) -> Config:
    """Config for one call: the tuned file for this device and shape (:func:`tuned_configs`, nearest M), else
    our :func:`default_config` (not vLLM's :func:`vllm_default_config`)."""
    configs = tuned_configs(E, N, None, dtype)
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

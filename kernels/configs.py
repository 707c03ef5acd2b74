"""vLLM-format tuned configs for the fused-MoE kernel: where they are found on this machine, our own batch-size
default, and saving.

The file format, vLLM's lookup (nearest batch size) and vLLM's own default live in :mod:`moesim.vllm_configs`
(the cost model reads them too) and are re-exported here; this module adds what needs the kernel layer: the CUDA
device's name, our per-expert-load :func:`default_config`, and :func:`get_config` for a kernel call.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from moesim import vllm_configs as _fmt
from moesim.fileio import atomic_write_text
from moesim.vllm_configs import (  # noqa: F401 -- re-exported: the kernel package's config API
    CPU_DEVICE_NAME,
    Config,
    config_file_name,
    load_configs,
    normalize_device_name,
    parse_config_file_name,
    pick_config,
    vllm_default_config,
)


def reference_dir() -> Path | None:
    """The folder of vLLM's shipped config files (:func:`moesim.specs.vllm_configs_dir`), or None."""
    from moesim.specs import vllm_configs_dir

    return vllm_configs_dir()


def device_name() -> str:
    """Normalised name of CUDA device 0 (:data:`CPU_DEVICE_NAME` without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return CPU_DEVICE_NAME
    return normalize_device_name(torch.cuda.get_device_name())


# default_config's tiles by tokens per expert: (up to this many, BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K,
# GROUP_SIZE_M, num_warps), every one with 4 stages. 16 is one row tile; the 64 and 256 steps are our heuristic's
# choice (an assumption, not a measurement or vLLM's rule).
_DEFAULT_TILES = (
    (16, 16, 64, 128, 1, 4),
    (64, 32, 64, 128, 16, 4),
    (256, 64, 128, 64, 16, 4),
    (float("inf"), 128, 128, 64, 16, 8),
)


def default_config(M: int, E: int, N: int, K: int, top_k: int = 2) -> Config:
    """A config chosen by batch size when no tuned file fits.

    The deciding quantity is tokens per expert, ``M*top_k/E``: below a tile of 16 rows the GEMMs are weight-bound
    (each expert's weights are streamed once for a few rows), so small row blocks and wide K steps keep the
    HBM stream busy; as rows grow the kernel turns compute-bound and wants large square-ish tiles, more warps
    and L2 grouping. All values lie in vLLM's tuning grid (tuner.autotune.space) so the tuner can start from it.
    """
    per_expert = M * top_k / max(E, 1)
    _, bm, bn, bk, group, warps = next(row for row in _DEFAULT_TILES if per_expert <= row[0])
    cfg = {
        "BLOCK_SIZE_M": bm,
        "BLOCK_SIZE_N": bn,
        "BLOCK_SIZE_K": bk,
        "GROUP_SIZE_M": group,
        "num_warps": warps,
        "num_stages": 4,
    }
    # narrow experts (small N) leave few column tiles: halve BLOCK_SIZE_N so more programs run
    if N < 512 and cfg["BLOCK_SIZE_N"] > 64:
        cfg["BLOCK_SIZE_N"] = 64
    return cfg


def shipped_configs(E: int, N: int, device: str | None = None, dtype: str | None = None) -> dict[int, Config] | None:
    """The shipped vLLM file for (E, N, device[, dtype]) as ``{M: config}``, or None."""
    folder = reference_dir()
    return None if folder is None else _fmt.tuned_configs(E, N, device or device_name(), dtype, dirs=[folder])


def config_dirs() -> list[Path]:
    """The folders searched for a config file, first match wins: ``$VLLM_TUNED_CONFIG_FOLDER``, then the
    shipped folder (:func:`reference_dir`); :func:`moesim.vllm_configs.config_dirs`."""
    return _fmt.config_dirs(reference_dir())


def tuned_configs(
    E: int,
    N: int,
    device: str | None = None,
    dtype: str | None = None,
    block_shape: list[int] | tuple[int, ...] | None = None,
) -> dict[int, Config] | None:
    """:func:`moesim.vllm_configs.tuned_configs` on :func:`config_dirs`, for this CUDA device by default."""
    return _fmt.tuned_configs(E, N, device or device_name(), dtype, block_shape, config_dirs())


def get_config(E: int, N: int, M: int, K: int = 0, top_k: int = 2, dtype: str | None = None) -> Config:
    """Config for one call: the tuned file for this device and shape (:func:`tuned_configs`, nearest M), else
    our :func:`default_config` (not vLLM's :func:`vllm_default_config`)."""
    configs = tuned_configs(E, N, None, dtype)
    if configs:
        return pick_config(configs, M)
    return default_config(M, E, N, K, top_k)


def save_configs(
    path: str | os.PathLike, configs: dict[int, dict[str, Any]], triton_version: str | None = None
) -> None:
    """Write ``{M: config}`` as a vLLM JSON file (keys as strings, ascending M), atomically (temp + rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {}
    if triton_version:
        doc["triton_version"] = triton_version
    for m in sorted(configs, key=int):
        # values as they are (vLLM keeps a string such as "grf_mode": "256"); numpy integers become JSON ints
        doc[str(int(m))] = {k: (int(v) if isinstance(v, np.integer) else v) for k, v in configs[m].items()}
    atomic_write_text(p, json.dumps(doc, indent=4) + "\n")

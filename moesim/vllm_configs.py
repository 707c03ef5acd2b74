"""vLLM-format tuned fused-MoE config files, and the tile vLLM's or SGLang's Triton fused MoE runs with.

A file ``E={E},N={N},device_name={device}[,dtype={dtype}][,block_shape=[{bn},{bk}]].json`` maps batch sizes M
(JSON keys, strings) to a config ``{BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K, GROUP_SIZE_M, num_warps, num_stages}``
(some vendors' files add keys: ROCm's ``kpack``, Intel's ``"grf_mode": "256"``, a string); an optional
``"triton_version"`` key records the Triton the file was tuned with and is not a batch size. This follows vLLM
0.33.0's ``get_config_file_name`` / ``get_moe_configs`` / ``try_get_optimal_moe_config`` in
``vllm/model_executor/layers/fused_moe/fused_moe.py`` (checked against that code by
``tests/moesim/test_vllm_configs.py``): every value stays as JSON gives it; a batch size M takes the entry with
the nearest key (ties: the first in file order); with no file, ``get_default_config`` decides.

N in the name is the intermediate size per expert per TP shard, ``w2.shape[2]`` (w1 is [E, 2N, K]); E is the
number of local experts (``w1.shape[0]``); M is the tokens of the forward (``hidden_states.shape[0]``), not rows.
Mixtral-8x7B (intermediate 14336) at TP2 -> N=7168; Qwen3-30B-A3B (moe_intermediate 768) at TP2 -> N=384.

Device names follow vLLM 0.33.0 (``get_device_name_as_file_name`` in ``vllm/utils/platform_utils.py``, then
``get_config_file_name``): every run of whitespace and ``/`` becomes one ``_``, and a name with ``H200`` as one
of its ``_``-separated words (``NVIDIA H200``, ``NVIDIA H200 NVL``) becomes ``NVIDIA_H200``;
``NVIDIA GH200 480GB`` stays ``NVIDIA_GH200_480GB``. On a CPU vLLM's platform name is ``cpu``.

SGLang keeps the same format in one folder per Triton version and its own default (:class:`TileSource`).
This is the file format and the engines' choice only; the Triton kernel that runs a config is ``kernels/``.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moesim.errors import field_error

__all__ = [
    "CPU_DEVICE_NAME",
    "Config",
    "config_dirs",
    "config_file_name",
    "load_configs",
    "normalize_device_name",
    "parse_config_file_name",
    "pick_config",
    "tuned_configs",
    "ENGINES",
    "TileSource",
    "kernel_tile",
    "legacy_default_config",
    "vllm_default_config",
]

# The device name of config files on a CPU: vLLM 0.33.0's CpuPlatform.get_device_name() (vllm/platforms/cpu.py).
# kernels.configs.device_name() looks it up without CUDA; `autotune kernel --backend interpret` writes it.
CPU_DEVICE_NAME = "cpu"

# A config's values as the file has them: ints, but vLLM keeps any JSON value (Intel's "grf_mode": "256")
Config = dict[str, Any]

# What vLLM 0.33.0 turns into "_" (``re.sub(r"[\s/]+", "_", name)`` with the third-party ``regex`` module):
# Unicode White_Space and "/". Spelled out because the stdlib ``re``'s ``\s`` also takes U+001C..U+001F.
_NAME_SEPARATORS = re.compile(r"[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000/]+")


def normalize_device_name(name: str) -> str:
    """vLLM 0.33.0's spelling of a device name in a file name: each run of whitespace and ``/`` becomes one
    ``_`` (so a name never makes a sub-folder); then a name with the word ``H200`` is ``NVIDIA_H200`` (GH200
    is not). Already-normalised names are left as they are."""
    name = _NAME_SEPARATORS.sub("_", name)
    return "NVIDIA_H200" if "H200" in name.split("_") else name


def config_file_name(
    E: int, N: int, device_name: str, dtype: str | None = None, block_shape: Sequence[int] | None = None
) -> str:
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
        out[m] = dict(cfg)  # values as JSON gives them, as vLLM keeps them: "grf_mode": "256" stays a string
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
    """vLLM 0.33.0's fallback for a bf16/fp16 layer without a tuned file (``get_default_config`` in
    ``vllm/model_executor/layers/fused_moe/fused_moe.py``, CUDA, ``VLLM_BATCH_INVARIANT`` off)::

    BM = 16 if M <= 32, 32 if M <= 96, 64 if M <= 512, else 128
    BN = 64 if M <= 64 else 128;   BK = 128 if M <= 64 else 64;   SPLIT_K = 1
    GROUP_SIZE_M = 16 if M // E > 128 else 1;   num_warps = 4 if M <= 128 else 8;   num_stages = 4 if M <= 32 else 3

    The tiles equal those of the rule this module restated from vLLM 0.24.0 before (that restatement had no
    ``SPLIT_K``). N, K and top_k, which vLLM's function also takes, do not enter its bf16/fp16 branch.
    """
    bm = 16 if M <= 32 else 32 if M <= 96 else 64 if M <= 512 else 128
    return {
        "BLOCK_SIZE_M": bm,
        "BLOCK_SIZE_N": 64 if M <= 64 else 128,
        "BLOCK_SIZE_K": 128 if M <= 64 else 64,
        "GROUP_SIZE_M": 16 if M // max(E, 1) > 128 else 1,
        "SPLIT_K": 1,
        "num_warps": 4 if M <= 128 else 8,
        "num_stages": 4 if M <= 32 else 3,
    }


def config_dirs(shipped: Path | None = None) -> list[Path]:
    """The folders searched for a config file, first match wins: ``$VLLM_TUNED_CONFIG_FOLDER`` (vLLM's
    user folder, searched first there too), then ``shipped`` (default :func:`moesim.specs.vllm_configs_dir`)."""
    from moesim.specs import vllm_configs_dir

    dirs = []
    user = os.environ.get("VLLM_TUNED_CONFIG_FOLDER")
    if user:
        dirs.append(Path(user))
    ref = shipped if shipped is not None else vllm_configs_dir()
    if ref is not None:
        dirs.append(ref)
    return dirs


def tuned_configs(
    E: int,
    N: int,
    device: str,
    dtype: str | None = None,
    block_shape: Sequence[int] | None = None,
    dirs: Sequence[Path] | None = None,
) -> dict[int, Config] | None:
    """The first file named :func:`config_file_name` in ``dirs`` (default :func:`config_dirs`) as
    ``{M: config}``, or None (vLLM's ``get_moe_configs``)."""
    name = config_file_name(E, N, device, dtype, block_shape)
    for folder in config_dirs() if dirs is None else dirs:
        got = _read(Path(folder) / name)
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


@functools.lru_cache(maxsize=256)
def _load_cached(path: str, mtime_ns: int) -> tuple[tuple[int, tuple], ...]:
    del mtime_ns  # part of the cache key only: a rewritten file is read again
    return tuple((m, tuple(c.items())) for m, c in _load_file(Path(path)).items())


def legacy_default_config(M: int, E: int) -> Config:
    """The older bf16 fallback, kept by vLLM up to 0.14.0 (checked in its wheel) and by SGLang 0.5.14
    (``get_default_config`` in ``moe_runner/triton_utils/fused_moe_triton_config.py``)::

    (BM, BN, BK, GROUP_SIZE_M) = (16, 32, 64, 1) if M <= E else (64, 64, 32, 8)

    Neither sets ``num_warps`` / ``num_stages``; Triton's launch defaults (4 and 3 on CUDA) are written out.
    """
    if M <= E:
        cfg = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 1}
    else:
        cfg = {"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 8}
    return {**cfg, "num_warps": 4, "num_stages": 3}


ENGINES = ("vllm", "sglang")
# What of a config the cost model reads, and Triton's CUDA launch default for a config without it.
TILE_KEYS = (("BLOCK_SIZE_M", 0), ("BLOCK_SIZE_N", 0), ("BLOCK_SIZE_K", 0), ("num_warps", 4), ("num_stages", 3))
# vLLM's bf16 default changed between 0.14.0 (legacy, checked) and 0.24.0 (new, checked); the first release
# with the new rule is not pinned down, so every release before 0.24 takes the legacy rule.
VLLM_NEW_DEFAULT = (0, 24)
# The Triton each SGLang release runs, whose config folder it searches first: the SGLang 0.5.14 wheel requires
# torch==2.11.0, and torch 2.11.0's metadata requires triton==3.6.0 on Linux (both read off PyPI).
SGLANG_TRITON = {"0.5.14": "3.6.0"}


def _version(text: str | None) -> tuple[int, ...] | None:
    nums = re.findall(r"\d+", text or "")
    return tuple(int(n) for n in nums[:3]) if nums else None


@dataclass(frozen=True)
class TileSource:
    """Whose fused-MoE tile choice to follow: the engine, its version (None: the newest rule), and the CUDA
    device name whose tuned files apply (None: the engine's default tile only)."""

    engine: str = "vllm"
    version: str | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise field_error("tile", "engine", f"must be one of {', '.join(ENGINES)}, got {self.engine!r}")

    def default_config(self, M: int, E: int) -> Config:
        """The engine's fallback when no tuned file matches."""
        v = _version(self.version)
        if self.engine == "vllm" and (v is None or v >= VLLM_NEW_DEFAULT):
            return vllm_default_config(M, E)
        return legacy_default_config(M, E)

    def folders(self) -> tuple[Path, ...]:
        """The shipped folders the engine searches, first match wins (never a user's override folder: the
        measured tables ran with the shipped files, and a fit must not move with a user's environment)."""
        from moesim.specs import sglang_configs_dir, vllm_configs_dir

        if self.engine == "vllm":
            ref = vllm_configs_dir()
            return (ref,) if ref is not None else ()
        root = sglang_configs_dir()
        if root is None:
            return ()
        subs = sorted((d for d in root.glob("triton_*") if d.is_dir()), key=lambda d: _version(d.name), reverse=True)
        first = SGLANG_TRITON.get(self.version or "")
        if first:
            subs.sort(key=lambda d: _version(d.name) != _version(first))  # stable: the rest stay newest first
        return tuple(subs)


@functools.lru_cache(maxsize=8192)
def _tile(M: int, E: int, N: int, source: TileSource) -> tuple[int, int, int, int, int]:
    configs = None
    if source.device:
        configs = tuned_configs(E, N, normalize_device_name(source.device), dirs=source.folders())
    cfg = pick_config(configs, M) if configs else source.default_config(M, E)
    # Triton's launch defaults where a config leaves them out (vLLM's and SGLang's own defaults may)
    return tuple(int(cfg.get(k, d)) for k, d in TILE_KEYS)  # type: ignore[return-value]


def kernel_tile(
    tokens: np.ndarray | float, local_experts: int, intermediate_shard: int, source: TileSource | None = None
) -> tuple[np.ndarray, ...]:
    """Tile ``(BM, BN, BK, num_warps, num_stages)`` the engine's Triton fused MoE runs, elementwise over
    ``tokens`` (the forward's M): the tuned file for ``(E_l, N, device)`` in the engine's shipped folders,
    else its default.

    ``tokens`` rounds to the nearest integer (an expectation of tokens may be fractional). ``source`` None:
    vLLM's newest default, no tuned file.
    """
    src = source or TileSource()
    t = np.asarray(tokens, dtype=np.float64)
    flat = np.maximum(np.rint(t), 1).astype(np.int64).ravel()
    uniq, inv = np.unique(flat, return_inverse=True)
    got = np.array([_tile(int(m), int(local_experts), int(intermediate_shard), src) for m in uniq])
    got = got.astype(np.float64).reshape(-1, len(TILE_KEYS))
    out = got[inv].reshape(*t.shape, len(TILE_KEYS)) if t.ndim else got[inv][0]
    return tuple(out[..., i] for i in range(len(TILE_KEYS)))

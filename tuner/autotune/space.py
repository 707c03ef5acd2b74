"""The fused-MoE kernel config space and its shared-memory feasibility filter.

The grid is vLLM's (``benchmarks/kernels/benchmark_moe.py``), so tuned results compare one to one:

    BLOCK_SIZE_M {16, 32, 64, 128, 256} x BLOCK_SIZE_N {32, 64, 128, 256} x BLOCK_SIZE_K {64, 128, 256}
    x GROUP_SIZE_M {1, 16, 32, 64} x num_warps {4, 8} x num_stages {2, 3, 4, 5}  = 1920 configs.

Before anything is compiled or launched, configs whose software pipeline cannot fit in one block's shared
memory are removed. Triton's pipeliner keeps ``num_stages`` copies of the A tile (BM x BK) and the B tile
(BK x BN) in shared memory, so

    smem_bytes = num_stages * (BLOCK_SIZE_M * BLOCK_SIZE_K + BLOCK_SIZE_K * BLOCK_SIZE_N) * dtype_bytes

must not exceed the per-block opt-in limit of the GPU (``GPUSpec.smem_per_block_kb`` from the GPU profile:
227 KB on Hopper, 163 KB on A100, per NVIDIA's Hopper and Ampere tuning guides, docs/DATA.md). This is an
upper bound on what Triton allocates (it may reuse one buffer), so the filter only removes configs that
certainly fail; a config that passes and still fails to compile or launch is recorded as a failed trial by
the tuner, never a crash. At 227 KB with bf16 the filter keeps 1248 of 1920
(tests/tuner/autotune/test_space.py).

Public API: ``PARAM_CHOICES``, ``full_grid()``, ``smem_bytes(config, dtype_bytes)``,
``is_feasible(config, smem_limit_kb, dtype_bytes)``, ``feasible_grid(smem_limit_kb, dtype_bytes)``,
``config_key(config)``, ``normalize_config(config)``, ``DTYPE_BYTES``, ``smem_limit_kb_for(...)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

from moesim.errors import InfeasibleError, SpecError

# Parameter order is the order of vLLM's config dicts, and the order Optuna suggests them in.
PARAM_CHOICES: dict[str, tuple[int, ...]] = {
    "BLOCK_SIZE_M": (16, 32, 64, 128, 256),
    "BLOCK_SIZE_N": (32, 64, 128, 256),
    "BLOCK_SIZE_K": (64, 128, 256),
    "GROUP_SIZE_M": (1, 16, 32, 64),
    "num_warps": (4, 8),
    "num_stages": (2, 3, 4, 5),
}
PARAM_NAMES: tuple[str, ...] = tuple(PARAM_CHOICES)

# Bytes per element of the activations/weights the kernel streams through shared memory.
DTYPE_BYTES: dict[str, float] = {"bf16": 2, "fp16": 2, "fp8": 1, "fp32": 4}

# The GPU profile whose limit applies when neither a profile nor a CUDA device is named (the interpreter
# backend): the reference GPU of the benchmarks.
DEFAULT_GPU = "h100-sxm"

Config = dict[str, int]


def normalize_config(config: Mapping[str, object]) -> Config:
    """Return the six vLLM keys as ints, in canonical order; raise SpecError on a missing or odd key.

    Extra keys (vLLM configs sometimes carry ``"kpack"`` or ``"matrix_instr_nonkdim"`` for ROCm) are dropped.
    """
    out: Config = {}
    for name in PARAM_NAMES:
        if name not in config:
            raise SpecError(f"kernel config: {name}: missing in {dict(config)}")
        value = config[name]
        if not isinstance(value, (int, float)) or int(value) != value or int(value) <= 0:
            raise SpecError(f"kernel config: {name}: must be a positive integer, got {value!r}")
        out[name] = int(value)
    return out


def config_key(config: Mapping[str, object]) -> tuple[int, ...]:
    """Hashable identity of a config: its six values in ``PARAM_NAMES`` order."""
    return tuple(int(config[name]) for name in PARAM_NAMES)  # type: ignore[arg-type]


def config_from_key(key: Iterable[int]) -> Config:
    """Inverse of :func:`config_key`."""
    values = tuple(int(v) for v in key)
    if len(values) != len(PARAM_NAMES):
        raise SpecError(f"kernel config key: expected {len(PARAM_NAMES)} values, got {values}")
    return dict(zip(PARAM_NAMES, values))


def in_grid(config: Mapping[str, object]) -> bool:
    """True when every value of ``config`` is one of the grid's choices."""
    return all(int(config[name]) in choices for name, choices in PARAM_CHOICES.items())  # type: ignore[arg-type]


def full_grid() -> list[Config]:
    """All 1920 configs of vLLM's grid, in a fixed (lexicographic by ``PARAM_NAMES``) order."""
    return [dict(zip(PARAM_NAMES, values)) for values in itertools.product(*PARAM_CHOICES.values())]


def smem_bytes(config: Mapping[str, object], dtype_bytes: float = 2) -> float:
    """Shared memory of the pipelined tiles, in bytes.

    smem_bytes = num_stages * (BLOCK_SIZE_M * BLOCK_SIZE_K + BLOCK_SIZE_K * BLOCK_SIZE_N) * dtype_bytes
    e.g. BM=128, BN=256, BK=64, 4 stages, bf16: 4 * (8192 + 16384) * 2 = 196608 B = 192 KB.
    """
    bm, bn, bk = (int(config[k]) for k in ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K"))  # type: ignore[arg-type]
    return int(config["num_stages"]) * (bm * bk + bk * bn) * dtype_bytes  # type: ignore[arg-type]


def is_feasible(config: Mapping[str, object], smem_limit_kb: float, dtype_bytes: float = 2) -> bool:
    """True when the config's pipelined tiles fit in ``smem_limit_kb`` (units of 1024 bytes)."""
    return smem_bytes(config, dtype_bytes) <= smem_limit_kb * 1024


def feasible_grid(smem_limit_kb: float, dtype_bytes: float = 2) -> list[Config]:
    """The configs of :func:`full_grid` that pass the shared-memory filter, in grid order.

    Raises InfeasibleError (naming the limit) when nothing fits, instead of handing an empty space to a tuner.
    """
    if smem_limit_kb <= 0:
        raise SpecError(f"kernel space: smem_per_block_kb: must be > 0, got {smem_limit_kb}")
    grid = [c for c in full_grid() if is_feasible(c, smem_limit_kb, dtype_bytes)]
    if not grid:
        smallest = min(smem_bytes(c, dtype_bytes) for c in full_grid()) / 1024
        raise InfeasibleError(
            f"kernel space: empty: no config of the 1920-config grid fits {smem_limit_kb:g} KB of shared memory "
            f"per block at {dtype_bytes:g} bytes/element (the smallest needs {smallest:g} KB)"
        )
    return grid


def smem_limit_kb_for(gpu_slug: str | None = None, device_props: object | None = None) -> tuple[float, str]:
    """The per-block shared-memory limit to filter with, and where it came from.

    Order: the GPU profile named by ``gpu_slug`` (``GPUSpec.smem_per_block_kb``), then the CUDA device's own
    ``shared_memory_per_block_optin`` (bytes) when ``device_props`` (``torch.cuda.get_device_properties``)
    is given, then the :data:`DEFAULT_GPU` profile.
    """
    if gpu_slug:
        from moesim.specs import load_gpu

        gpu = load_gpu(gpu_slug)
        return float(gpu.smem_per_block_kb), f"GPU profile {gpu_slug}"
    optin = getattr(device_props, "shared_memory_per_block_optin", None) if device_props is not None else None
    if optin:
        return float(optin) / 1024, "CUDA device properties"
    kb, _ = smem_limit_kb_for(DEFAULT_GPU)
    return kb, f"GPU profile {DEFAULT_GPU} (default)"


def gpu_slug_for_device(device_name: str) -> str | None:
    """Best-effort map from a CUDA device name (``NVIDIA H100 80GB HBM3``) to a GPU profile slug.

    Returns None when no shipped profile matches, so callers fall back to the device's own limit.
    """
    from moesim.specs import list_gpus

    name = device_name.lower().replace("_", " ")
    # family: "h100-sxm" -> "h100"
    candidates = [slug for slug in list_gpus() if slug.split("-")[0] in name]
    if not candidates:
        return None
    # Prefer the SXM part when the name does not say PCIe/NVL (H100 80GB HBM3 is the SXM board).
    for slug in candidates:
        if ("pcie" in name) == ("pcie" in slug) and ("nvl" in name) == ("nvl" in slug):
            return slug
    return candidates[0]

"""The GPU spec: datasheet peaks plus the default fractions of peak, loaded from ``profiles/gpus/*.yaml``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moesim.schema import Fields, float_problem, int_problem, require
from moesim.specs.files import read_spec_yaml, resolve

__all__ = ["GPUSpec", "load_gpu"]

# The rule of every number field (Fields.float_ keywords): the loader and GPUSpec.__post_init__ both read it.
_FLOAT_RULES: dict[str, dict[str, Any]] = {
    "bf16_tflops": {"positive": True},
    "fp8_tflops": {},
    "hbm_gb": {"positive": True},
    "hbm_bw_gb_s": {"positive": True},
    "nvlink_bw_gb_s": {},
    "smem_per_sm_kb": {"positive": True},
    "smem_per_block_kb": {"positive": True},
    "l2_mb": {"positive": True},
    "gemm_efficiency": {"positive": True, "maximum": 1.0},
    "hbm_efficiency": {"positive": True, "maximum": 1.0},
}
_DEFAULTS = {"fp8_tflops": 0.0, "nvlink_bw_gb_s": 0.0}


@dataclass(frozen=True)
class GPUSpec:
    """One GPU: datasheet peaks plus the default fractions of peak the cost model assumes before calibration.

    ``__post_init__`` checks every field (``SLUG: FIELD: PROBLEM``), so no invalid instance exists."""

    slug: str
    name: str
    source: str
    bf16_tflops: float  # dense peak
    fp8_tflops: float  # dense peak (0 when the GPU has no FP8 tensor cores)
    hbm_gb: float
    hbm_bw_gb_s: float
    nvlink_bw_gb_s: float  # per direction, whole GPU (0 = no NVLink)
    sm_count: int
    smem_per_sm_kb: float
    smem_per_block_kb: float
    l2_mb: float
    gemm_efficiency: float  # default achievable fraction of peak (before calibration)
    hbm_efficiency: float  # default achievable fraction of HBM bandwidth

    def __post_init__(self) -> None:
        for key, rule in _FLOAT_RULES.items():
            require(self.slug, key, float_problem(getattr(self, key), **rule))
        require(self.slug, "sm_count", int_problem(self.sm_count, 1))
        if self.smem_per_block_kb > self.smem_per_sm_kb:
            require(
                self.slug,
                "smem_per_block_kb",
                f"must be <= smem_per_sm_kb ({self.smem_per_sm_kb:g}), got {self.smem_per_block_kb:g}",
            )


def _gpu_from(path: Path) -> GPUSpec:
    f = Fields(str(path), read_spec_yaml(path))
    slug = f.str_("slug", path.stem)
    name = f.str_("name")
    source = f.str_("source")
    numbers = {key: f.float_(key, _DEFAULTS.get(key, ...), **rule) for key, rule in _FLOAT_RULES.items()}
    spec = f.build(GPUSpec, slug=slug, name=name, source=source, sm_count=f.int_("sm_count", minimum=1), **numbers)
    f.done(optional=("notes",))
    return spec


def load_gpu(name_or_path: str | Path) -> GPUSpec:
    """Load a GPU by slug (``h100-sxm``) or YAML path; :class:`SpecError` on any problem."""
    return _gpu_from(resolve("gpus", name_or_path))

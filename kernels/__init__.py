"""Triton fused-MoE kernels with a torch reference and vLLM-format configs (extra ``kernels``: torch, triton).

Public API (docs/ARCHITECTURE.md, "Kernels"; docs/KERNELS.md for the tiling and how to run tests/bench):
``fused_moe``, ``reference_moe``, ``moe_align_block_size``, ``apply_capacity``, the config helpers
(``config_file_name``, ``load_configs``, ``pick_config``, ``tuned_configs``, ``default_config``,
``vllm_default_config``, ``save_configs``, ``device_name``)
and ``time_cuda_graph``. Importing this package needs torch, triton and ``moesim`` (capacity semantics, file
writing, the shipped-config folder).
"""

from kernels.align import moe_align_block_size
from kernels.capacity import apply_capacity, capacity_per_expert
from kernels.configs import (
    config_file_name,
    default_config,
    device_name,
    get_config,
    load_configs,
    normalize_device_name,
    pick_config,
    save_configs,
    tuned_configs,
    vllm_default_config,
)
from kernels.fused_moe import fused_moe
from kernels.reference import reference_moe
from kernels.timing import time_cuda_events, time_cuda_graph

__all__ = [
    "apply_capacity",
    "capacity_per_expert",
    "config_file_name",
    "default_config",
    "device_name",
    "fused_moe",
    "get_config",
    "load_configs",
    "moe_align_block_size",
    "normalize_device_name",
    "pick_config",
    "reference_moe",
    "save_configs",
    "time_cuda_events",
    "time_cuda_graph",
    "tuned_configs",
    "vllm_default_config",
]

"""Model, GPU and cluster specs: frozen dataclasses loaded from ``profiles/{models,gpus,clusters}/*.yaml``.

One module per spec (:mod:`~moesim.specs.model`, :mod:`~moesim.specs.gpu`, :mod:`~moesim.specs.cluster`),
:mod:`~moesim.specs.files` to find and read the files, :mod:`~moesim.specs.limits` for the sizes moesim accepts.
Each dataclass validates itself in ``__post_init__`` and the loaders read fields through the one schema walker
(:class:`moesim.schema.Fields`), so every problem becomes a :class:`moesim.errors.SpecError` with the one-line
message ``FILE: FIELD: PROBLEM`` (malformed YAML, a missing, unknown or mistyped field, a negative bandwidth,
``top_k > num_experts``, ``n_group`` not dividing the experts, MoE layers out of range ...).

Names: every loader takes a lower-case slug (``deepseek-v3``, ``h100-sxm``, ``dgx-h100``) or a path to a YAML
file. An unknown slug lists the shipped ones.

Units live in the field names: ``_gb_s`` gigabytes (1e9 bytes) per second, ``_tflops`` 1e12 FLOP/s, ``_gb``
1e9 bytes, ``_kb`` 1024 bytes, ``_mb`` 1e6 bytes (L2 as NVIDIA quotes it), ``_ns`` nanoseconds.

Example::

    >>> from moesim.specs import load_model
    >>> m = load_model("deepseek-v3")
    >>> (m.num_layers, m.num_moe_layers, m.moe_layers[0])
    (61, 58, 3)
"""

from __future__ import annotations

from moesim.specs.cluster import (
    FABRIC_KINDS,
    LEVEL_KINDS,
    NIC_LAYOUTS,
    ClusterSpec,
    FabricSpec,
    LinkLevel,
    NicSpec,
    PcieSpec,
    load_cluster,
)
from moesim.specs.files import (
    list_clusters,
    list_gpus,
    list_models,
    profiles_dir,
    sglang_configs_dir,
    vllm_configs_dir,
)
from moesim.specs.gpu import GPUSpec, load_gpu
from moesim.specs.limits import MAX_EXPERTS, MAX_GPUS, MAX_LAYERS, MAX_TOKENS_PER_GPU, MAX_WIDTH
from moesim.specs.model import SCORE_FUNCTIONS, ModelSpec, load_model

__all__ = [
    "FABRIC_KINDS",
    "LEVEL_KINDS",
    "MAX_EXPERTS",
    "MAX_GPUS",
    "MAX_LAYERS",
    "MAX_TOKENS_PER_GPU",
    "MAX_WIDTH",
    "NIC_LAYOUTS",
    "SCORE_FUNCTIONS",
    "ClusterSpec",
    "FabricSpec",
    "GPUSpec",
    "LinkLevel",
    "ModelSpec",
    "NicSpec",
    "PcieSpec",
    "list_clusters",
    "list_gpus",
    "list_models",
    "load_cluster",
    "load_gpu",
    "load_model",
    "profiles_dir",
    "sglang_configs_dir",
    "vllm_configs_dir",
]

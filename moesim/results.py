"""What a simulation returns: :class:`LayerResult` per MoE layer and :class:`StepResult` per model step.

Times in microseconds (``*_us``), traffic in bytes, token counts in token-expert assignments. ``to_dict`` gives the
JSON of ``moesim simulate --json`` (``LayerResult.JSON_FIELDS`` is the per-layer contract of
docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from moesim.options import SimOptions

# the phases of one MoE layer, in order (each a ``<phase>_us`` field of LayerResult)
PHASES = ("router", "permute", "dispatch", "compute", "combine")


@dataclass(frozen=True)
class LayerResult:
    """One MoE layer. Per-phase times (us) are those of the tail GPU (the one with the largest latency)."""

    layer: int  # model layer index
    latency_us: float
    router_us: float
    permute_us: float
    dispatch_us: float
    compute_us: float
    combine_us: float
    max_gpu_tokens: float  # token-expert assignments processed by the busiest GPU
    mean_gpu_tokens: float
    dropped_fraction: float  # of all assignments
    rerouted_fraction: float
    nvlink_bytes: float  # dispatch + combine bytes over intra-node links, all GPUs
    network_bytes: float  # dispatch + combine bytes over the inter-node network, all GPUs
    tail_gpu: int
    gpu_latency_us: np.ndarray = field(repr=False)  # [G]
    gpu_tokens: np.ndarray = field(repr=False)  # [G] assignments per GPU
    gpu_compute_us: np.ndarray = field(repr=False)  # [G]
    gpu_dispatch_us: np.ndarray = field(repr=False)  # [G]
    gpu_combine_us: np.ndarray = field(repr=False)  # [G]

    JSON_FIELDS = (
        "layer",
        "latency_us",
        "router_us",
        "permute_us",
        "dispatch_us",
        "compute_us",
        "combine_us",
        "max_gpu_tokens",
        "mean_gpu_tokens",
        "dropped_fraction",
        "rerouted_fraction",
        "nvlink_bytes",
        "network_bytes",
        "tail_gpu",
    )
    PER_GPU_FIELDS = ("gpu_latency_us", "gpu_tokens", "gpu_compute_us", "gpu_dispatch_us", "gpu_combine_us")

    def to_dict(self, per_gpu: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {name: _py(getattr(self, name)) for name in self.JSON_FIELDS}
        if per_gpu:
            for name in self.PER_GPU_FIELDS:
                out[name] = [float(x) for x in getattr(self, name)]
        return out


@dataclass(frozen=True)
class StepResult:
    """A model step: the simulated MoE layers plus attention, dense layers and the LM head."""

    model: str
    cluster: str
    num_gpus: int
    options: SimOptions
    step_latency_us: float
    moe_us: float  # all MoE layers (unsimulated ones at the simulated mean)
    attention_us: float
    dense_us: float
    lm_head_us: float
    alltoall_us: float  # exposed dispatch + combine over all MoE layers
    moe_share: float
    alltoall_share: float
    layers: tuple[LayerResult, ...]

    def phase_us(self) -> dict[str, float]:
        """Phase times of the tail GPUs summed over the simulated layers (us)."""
        names = (*(f"{p}_us" for p in PHASES), "latency_us")
        return {n: float(sum(getattr(layer, n) for layer in self.layers)) for n in names}

    def to_dict(self, per_gpu: bool = False) -> dict[str, Any]:
        """JSON-ready: ``step_latency_us``, ``moe_share``, ``alltoall_share``, ``layers`` and the details."""
        return {
            "model": self.model,
            "cluster": self.cluster,
            "num_gpus": self.num_gpus,
            "options": asdict(self.options),
            "step_latency_us": self.step_latency_us,
            "moe_share": self.moe_share,
            "alltoall_share": self.alltoall_share,
            "moe_us": self.moe_us,
            "attention_us": self.attention_us,
            "dense_us": self.dense_us,
            "lm_head_us": self.lm_head_us,
            "alltoall_us": self.alltoall_us,
            "phase_us": self.phase_us(),
            "dropped_fraction": float(np.mean([la.dropped_fraction for la in self.layers])) if self.layers else 0.0,
            "layers": [layer.to_dict(per_gpu) for layer in self.layers],
        }


def _py(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x


__all__ = ["LayerResult", "StepResult"]

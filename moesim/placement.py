"""Expert placement: which GPU slot holds which logical expert, per MoE layer, and the replica shares.

Dimension legend: L MoE layers (in the order of ``ModelSpec.moe_layers``), E logical experts, G GPUs,
S slots per GPU, P = G*S physical experts (slots). Physical slot p lives on GPU p // S (SGLang's convention).

- ``phy2log``: int64 ``[L, P]``, the logical expert held in each slot.
- ``shares``: float64 ``[L, P]``, the fraction of its logical expert's tokens that slot serves; for each layer
  and logical expert the shares of its replicas sum to 1. A placement without replicas has all shares 1.

This module owns the dataclass, its validation, the contiguous default (Megatron's) and the YAML file format.
Solvers and the other baselines live in ``tuner``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Placement:
    num_gpus: int
    slots_per_gpu: int
    num_experts: int
    phy2log: np.ndarray  # [L, P] int64
    shares: np.ndarray  # [L, P] float64
    meta: dict[str, Any] = field(default_factory=dict)  # model, cluster, trace, method, predicted figures

    @property
    def num_layers(self) -> int:
        return int(self.phy2log.shape[0])

    @property
    def num_physical(self) -> int:
        return self.num_gpus * self.slots_per_gpu

    def gpu_of_slot(self) -> np.ndarray:
        """[P] GPU index of each physical slot."""
        return np.arange(self.num_physical) // self.slots_per_gpu

    def expert_gpu_share(self) -> np.ndarray:
        """[L, E, G] fraction of each logical expert's tokens processed on each GPU."""
        out = np.zeros((self.num_layers, self.num_experts, self.num_gpus))
        gpu = self.gpu_of_slot()
        for layer in range(self.num_layers):
            np.add.at(out[layer], (self.phy2log[layer], gpu), self.shares[layer])
        return out


def contiguous(num_experts: int, num_gpus: int, num_layers: int) -> Placement:
    """Megatron's default: GPU g holds experts [g*E/G, (g+1)*E/G). Requires E % G == 0."""
    from moesim.errors import PlacementError

    if num_experts % num_gpus:
        raise PlacementError(
            f"contiguous placement: num_experts {num_experts} is not divisible by {num_gpus} GPUs"
        )
    row = np.arange(num_experts, dtype=np.int64)
    phy2log = np.tile(row, (num_layers, 1))
    return Placement(
        num_gpus=num_gpus,
        slots_per_gpu=num_experts // num_gpus,
        num_experts=num_experts,
        phy2log=phy2log,
        shares=np.ones(phy2log.shape),
        meta={"method": "contiguous"},
    )

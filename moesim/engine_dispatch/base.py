"""The engine-dispatch family's protocol, and the replica arithmetic its members share.

Dimension legend: L layers, E logical experts, G GPUs (EP ranks), N nodes, S slots per GPU, P = G*S physical
slots; slot ``p`` lives on GPU ``p // S``, node ``(p // S) // (G / N)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from moesim.errors import field_error

if TYPE_CHECKING:
    from moesim.placement import Placement
    from moesim.specs import ModelSpec

__all__ = ["EngineRule", "check_shape", "checked_weights", "even_weights", "replica_counts"]


@runtime_checkable
class EngineRule(Protocol):
    """One engine's replica choice (registry: ``moesim.engine_dispatch.ENGINES``)."""

    name: str
    summary: str  # one phrase, for the CLI's help
    source: str  # the engine code it reproduces
    per_rank: bool  # False: the placement's own shares, no per-rank weights

    def weights(self, phy2log: np.ndarray, num_experts: int, num_gpus: int, gpus_per_node: int) -> np.ndarray:
        """``W [L, G, P]``: the expected fraction of rank r's assignments of expert ``phy2log[l, p]`` that slot p
        receives; each rank's weights over an expert's replicas sum to 1."""
        ...

    def view_weights(
        self, placement: Placement, gpus_per_node: int, model: ModelSpec | None, layers: Sequence[int] | None
    ) -> tuple[np.ndarray | None, dict[str, str]]:
        """Each rank's split ``W [rows, G, P]`` of ``placement`` as the engine runs it, or None where every rank
        splits alike; and the ``meta`` entries the view adds besides ``engine``."""
        ...


def replica_counts(phy2log: np.ndarray, num_experts: int) -> np.ndarray:
    """``[L, E]`` replicas of each expert."""
    num_layers = phy2log.shape[0]
    off = np.arange(num_layers)[:, None] * num_experts
    return np.bincount((off + phy2log).ravel(), minlength=num_layers * num_experts).reshape(num_layers, num_experts)


def even_weights(phy2log: np.ndarray, num_experts: int, num_gpus: int, gpus_per_node: int) -> np.ndarray:
    cnt = replica_counts(phy2log, num_experts)
    share = 1.0 / np.take_along_axis(cnt, phy2log, axis=1)  # [L, P]
    return np.broadcast_to(share[:, None, :], (phy2log.shape[0], num_gpus, phy2log.shape[1]))


def check_shape(phy2log: np.ndarray, num_gpus: int, gpus_per_node: int) -> None:
    if phy2log.ndim != 2 or num_gpus < 1 or phy2log.shape[1] % num_gpus:
        raise field_error("placement", "phy2log", f"shape {phy2log.shape} does not split over {num_gpus} GPUs")
    if gpus_per_node < 1 or num_gpus % gpus_per_node:
        raise field_error("cluster", "gpus_per_node", f"{gpus_per_node} does not divide {num_gpus} GPUs")


def checked_weights(
    rule: EngineRule, phy2log: np.ndarray, num_experts: int, num_gpus: int, gpus_per_node: int
) -> np.ndarray:
    """``rule.weights`` of ``phy2log`` (as int64) once its shape splits over the GPUs and nodes."""
    phy2log = np.asarray(phy2log, dtype=np.int64)
    check_shape(phy2log, num_gpus, gpus_per_node)
    return rule.weights(phy2log, num_experts, num_gpus, gpus_per_node)

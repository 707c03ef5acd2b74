"""The drop-policy family's protocol, and what its members share: Megatron's capacity and the rank of an
assignment within its expert.

Dimension legend: T tokens, k top-k, E logical experts, G GPUs, L layers.

Capacity follows Megatron-LM's definition (``moe_capacity_factor``)::

    capacity = ceil(T * k / E * factor)          # assignments an expert may take in one layer
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Protocol, runtime_checkable

import numpy as np

from moesim.errors import field_error

__all__ = ["DropPolicy", "DropsOverflow", "capacity_per_expert", "rank_within_expert"]


@runtime_checkable
class DropPolicy(Protocol):
    """What an expert does with the assignments beyond its capacity."""

    name: str  # the registry key (moesim.capacity.DROP_POLICIES)
    needs_expert_gpu: bool  # the policy needs the GPU of every expert (``expert_gpu``)

    def order(self, flat_ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``[T*k]`` permutation of one layer's assignments (``flat_ids`` in (token, k) order) sorted by expert,
        each expert's assignments in the order it keeps them (the first ``capacity`` are kept)."""
        ...

    def place_overflow(
        self, new_ids: np.ndarray, keep: np.ndarray, capacity: int, expert_gpu: np.ndarray | None
    ) -> None:
        """Per-token: move or leave dropped the assignments beyond capacity (``keep`` False), in place."""
        ...

    def place_overflow_counts(
        self, kept: np.ndarray, overflow: np.ndarray, capacity: np.ndarray, expert_gpu: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-expert counts ``kept [L, E] <= capacity [L, 1]`` and ``overflow [L, E]`` ->
        ``(kept [L, E], dropped [L], rerouted [L])``."""
        ...


def capacity_per_expert(num_tokens: int, top_k: int, num_experts: int, factor: float) -> int:
    """Megatron's expert capacity in assignments: ``ceil(num_tokens * top_k / num_experts * factor)``.

    Computed in exact rational arithmetic where the factor is a short decimal, so that e.g. 4096*8/256*1.25
    gives 160 and not 161 from a floating-point ulp.
    """
    if num_tokens < 0 or top_k < 1 or num_experts < 1:
        raise field_error(
            "capacity",
            "shape",
            f"need tokens>=0, top_k>=1, experts>=1, got {num_tokens}, {top_k}, {num_experts}",
        )
    if not factor > 0:
        raise field_error("capacity", "capacity_factor", f"must be > 0, got {factor}")
    exact = Fraction(num_tokens * top_k, num_experts) * Fraction(str(float(factor)))
    return math.ceil(exact)


def rank_within_expert(flat_ids: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Rank of each assignment among those of its expert, following ``order`` (a permutation sorted by
    expert)."""
    sorted_ids = flat_ids[order]
    n = sorted_ids.size
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]]) if n else np.zeros(0, np.int64)
    run_start = np.zeros(n, dtype=np.int64)
    if n:
        run_start[starts] = starts
        run_start = np.maximum.accumulate(run_start)
    rank_sorted = np.arange(n, dtype=np.int64) - run_start
    rank = np.empty(n, dtype=np.int64)
    rank[order] = rank_sorted
    return rank


class DropsOverflow(DropPolicy):
    """The members that drop every assignment beyond capacity (``position``, ``probs``): only ``order`` differs."""

    def place_overflow(
        self, new_ids: np.ndarray, keep: np.ndarray, capacity: int, expert_gpu: np.ndarray | None
    ) -> None:
        return None

    def place_overflow_counts(
        self, kept: np.ndarray, overflow: np.ndarray, capacity: np.ndarray, expert_gpu: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every overflow assignment dropped: ``(kept, overflow summed per layer, no reroutes)``."""
        return kept, overflow.sum(axis=1), np.zeros(kept.shape[0], dtype=np.int64)

"""Factories the trace tests share: a small real ModelSpec and seeded random top-k ids."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    from moesim.specs import ModelSpec


@pytest.fixture(scope="session")
def make_model(deepseek_v3: ModelSpec) -> Callable[..., ModelSpec]:
    """``make_model(E, k, moe, num_layers, slug="m")``: a real ModelSpec (DeepSeek-V3's, ungrouped) with ``E``
    experts, top-``k``, MoE layers ``moe`` of ``num_layers``."""

    def make(E: int, k: int, moe: tuple[int, ...], num_layers: int, slug: str = "m") -> ModelSpec:
        return replace(
            deepseek_v3,
            slug=slug,
            num_experts=E,
            top_k=k,
            moe_layers=moe,
            num_layers=num_layers,
            n_group=1,
            topk_group=1,
        )

    return make


def _random_ids(T: int, L: int, E: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((T, L, E)), axis=2)[:, :, :k].astype(np.int32)


@pytest.fixture(scope="session")
def random_ids() -> Callable[..., np.ndarray]:
    """``random_ids(T, L, E, k, seed=0)``: ``[T, L, k]`` int32 ids, for each token and layer ``k`` distinct
    experts of ``E`` drawn with ``seed``."""
    return _random_ids

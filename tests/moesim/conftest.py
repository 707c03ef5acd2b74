"""Fixtures the moesim tests share: shipped model, GPU and cluster specs, and a small seeded synthetic trace.

The specs are the files under ``profiles/`` (frozen dataclasses, loaded once per session); the trace is OLMoE's
(64 experts, top-8, 16 MoE layers) with per-token ids, small enough to check formulas token by token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from moesim.specs import ClusterSpec, GPUSpec, ModelSpec
    from moesim.traces.trace import RoutingTrace

TRACE_TOKENS = 256  # tokens of the synthetic trace (T)
TRACE_SEED = 0


@pytest.fixture(scope="session")
def h100_sxm() -> GPUSpec:
    """``profiles/gpus/h100-sxm.yaml``: BF16 989.4 TFLOP/s, HBM 3350 GB/s, efficiencies 0.807 / 0.896."""
    from moesim.specs import load_gpu

    return load_gpu("h100-sxm")


@pytest.fixture(scope="session")
def deepseek_v3() -> ModelSpec:
    """``profiles/models/deepseek-v3.yaml``: H 7168, 256 experts top-8 in 8 groups, dense layers 0..2."""
    from moesim.specs import load_model

    return load_model("deepseek-v3")


@pytest.fixture(scope="session")
def olmoe() -> ModelSpec:
    """``profiles/models/olmoe-1b-7b.yaml``: H 2048, 64 experts top-8, no groups, every layer MoE, no dense MLP."""
    from moesim.specs import load_model

    return load_model("olmoe-1b-7b")


@pytest.fixture(scope="session")
def h100_cluster() -> ClusterSpec:
    """``profiles/clusters/h100-8x8-ib400.yaml``: 8 nodes of 8 H100s."""
    from moesim.specs import load_cluster

    return load_cluster("h100-8x8-ib400")


@pytest.fixture(scope="session")
def olmoe_trace(olmoe: ModelSpec) -> RoutingTrace:
    """A seeded Zipf(1.2) trace of :data:`TRACE_TOKENS` OLMoE tokens with ``topk_ids`` ``[T, L, k]``."""
    from moesim.traces.synthetic import synthetic_trace

    return synthetic_trace(olmoe, TRACE_TOKENS, skew="zipf", alpha=1.2, seed=TRACE_SEED)

"""Measuring one config: CUDA graphs on a GPU; wall clock on the Triton interpreter (loop tests only).

Each graph replay first copies the next of R routing draws (fresh top-k ids and weights) into the kernel's input
buffers, so the median is over routings users really have (trace, uniform or Dirichlet-skewed); the cost of that
copy, timed alone in the same way, is subtracted:  time_us = median(copy + kernel) - median(copy).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tuner.autotune.kernel.problem import Problem, next_routing
from tuner.autotune.space import Config


def _time_fn(fn: Callable[[], Any], backend: str, warmup: int, repeats: int) -> float:
    """Median time of ``fn`` in us: ``kernels.timing.time_cuda_graph`` on CUDA, else per-call wall clock."""
    if backend == "cuda":
        from kernels.timing import time_cuda_graph

        return float(time_cuda_graph(fn, warmup=warmup, repeats=repeats))
    samples = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        fn()
        if i >= warmup:
            samples.append((time.perf_counter() - start) * 1e6)
    return float(np.median(samples))


def measure_us(p: Problem, config: Config, warmup: int = 5, repeats: int = 20) -> float:
    """Median time of one fused-MoE call (us) with ``config``, fresh routing per repeat; raises on failure.

    The first eager call compiles (or loads from Triton's cache) and surfaces compile/launch errors before
    graph capture. The routing-copy cost ``p.base_us`` is measured once per problem and subtracted.
    """
    from kernels import fused_moe

    def call() -> Any:
        next_routing(p)
        return fused_moe(p.hidden, p.w1, p.w2, p.topk_weights, p.topk_ids, config=dict(config))

    out = call()
    if p.backend == "cuda":
        import torch

        torch.cuda.synchronize()
        if not bool(torch.isfinite(out).all()):
            raise RuntimeError("non-finite output")
    if p.base_us is None:
        p.base_us = _time_fn(lambda: next_routing(p), p.backend, warmup, repeats)
    total = _time_fn(call, p.backend, warmup, repeats)
    return max(total - p.base_us, 0.0)

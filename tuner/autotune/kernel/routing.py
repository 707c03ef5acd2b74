"""Routing draws for timing the kernel: R fresh top-k choices, one per timed repeat.

Dimension legend: M tokens in the batch, E experts, k top-k, R routing draws, T tokens of a trace.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from moesim.errors import SpecError, TraceError
from tuner.autotune.kernel.errors import KernelSpecError


def parse_routing(spec: str) -> tuple[str, float]:
    """``"uniform"`` -> ("uniform", 0); ``"dirichlet:0.3"`` -> ("dirichlet", 0.3). KernelSpecError otherwise."""
    if spec == "uniform":
        return "uniform", 0.0
    if spec.startswith("dirichlet:"):
        try:
            alpha = float(spec.split(":", 1)[1])
        except ValueError:
            alpha = -1.0
        if not alpha > 0:
            raise KernelSpecError("routing", f"{spec}: Dirichlet concentration must be a number > 0")
        return "dirichlet", alpha
    raise KernelSpecError("routing", f"{spec}: expected 'uniform' or 'dirichlet:ALPHA'")


def _sample_topk(rng: np.random.Generator, probs: np.ndarray, m: int, k: int) -> np.ndarray:
    """k distinct experts per token, drawn without replacement from ``probs`` [E] (Gumbel top-k). -> [m, k]."""
    logp = np.log(np.maximum(probs, 1e-30))
    gumbel = rng.gumbel(size=(m, probs.shape[0]))
    return np.argsort(-(logp[None, :] + gumbel), axis=1)[:, :k]


def check_trace_shape(trace: Any, num_experts: int, top_k: int, layer: int | None, origin: str) -> None:
    """The trace fits the kernel shape: same E and top-k, and ``layer`` (if given) recorded; else a TraceError
    naming ``origin`` (the trace's path on the command line)."""
    if trace.num_experts != num_experts or trace.top_k != top_k:
        raise TraceError(
            f"{origin}: num_experts/top_k: trace has E={trace.num_experts}, k={trace.top_k}; the kernel shape has "
            f"E={num_experts}, k={top_k}"
        )
    layers = list(trace.layers)
    if layer is not None and layer not in layers:
        raise TraceError(f"{origin}: layer: {layer} not recorded (has {layers})")


def routing_bank(
    num_experts: int,
    top_k: int,
    m: int,
    draws: int,
    routing: str = "uniform",
    trace: Any = None,
    layer: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """R = ``draws`` routings of ``m`` tokens: ids [R, m, k] int32 and weights [R, m, k] float32 (rows sum to 1).

    Sources: ``trace`` (a moesim RoutingTrace): rows of ``topk_ids`` of one recorded layer, sampled with
    replacement (real per-token choices), or, without per-token ids, k experts per token drawn from that layer's
    counts; ``routing="uniform"``: k distinct experts uniformly; ``"dirichlet:ALPHA"``: per draw, expert
    probabilities p ~ Dirichlet(ALPHA) (small ALPHA = skewed), then k distinct experts per token from p.
    Weights are softmax-normalised positive scores, as a router's top-k weights are.
    """
    if m < 1 or draws < 1 or top_k < 1 or top_k > num_experts:
        raise SpecError(f"routing: need m >= 1, draws >= 1, 1 <= top_k <= E; got m={m} R={draws} k={top_k}")
    rng = np.random.default_rng(seed)
    ids = np.empty((draws, m, top_k), dtype=np.int32)
    if trace is not None:
        check_trace_shape(trace, num_experts, top_k, layer, trace.source or "trace")
        layers = list(trace.layers)
        li = 0 if layer is None else layers.index(layer)
        if trace.topk_ids is not None:
            rows = np.asarray(trace.topk_ids)[:, li, :]  # [T, k]
            for r in range(draws):
                ids[r] = rows[rng.integers(0, rows.shape[0], size=m)]
        else:
            counts = np.asarray(trace.counts[li], dtype=np.float64)
            probs = counts / counts.sum()
            for r in range(draws):
                ids[r] = _sample_topk(rng, probs, m, top_k)
    else:
        kind, alpha = parse_routing(routing)
        for r in range(draws):
            probs = (
                np.full(num_experts, 1.0 / num_experts)
                if kind == "uniform"
                else rng.dirichlet(np.full(num_experts, alpha))
            )
            ids[r] = _sample_topk(rng, probs, m, top_k)
    scores = rng.standard_normal((draws, m, top_k)).astype(np.float32)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    return ids, weights.astype(np.float32)

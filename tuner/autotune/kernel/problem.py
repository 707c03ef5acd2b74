"""One (E, N, K, M) problem on the device: weights, inputs and the bank of routing draws the timed calls cycle.

Dimension legend: M tokens in the batch, E experts, N intermediate size per expert (vLLM's N: w1 is [E, 2N, K]),
K hidden size, k top-k, R routing draws (one per timed repeat).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tuner.autotune.kernel.routing import routing_bank

TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


@dataclass
class Problem:
    """Device tensors of one (E, N, K, M) problem plus its routing bank.

    hidden [M, K], w1 [E, 2N, K], w2 [E, K, N], ids_bank [R, M, k] int32, weights_bank [R, M, k] float32,
    topk_ids / topk_weights [M, k]: the static buffers the kernel reads (graph inputs), cursor [1] int64.
    """

    hidden: Any
    w1: Any
    w2: Any
    ids_bank: Any
    weights_bank: Any
    topk_ids: Any
    topk_weights: Any
    cursor: Any
    backend: str
    base_us: float | None = None  # cost of the routing copy alone, subtracted from every measurement


def make_weights(E: int, N: int, K: int, dtype: str, backend: str, seed: int = 0) -> tuple[Any, Any]:
    """w1 [E, 2N, K] and w2 [E, K, N], scaled like a trained layer (std 1/sqrt(fan_in)) so bf16 stays finite."""
    import torch

    device = "cuda" if backend == "cuda" else "cpu"
    tdtype = getattr(torch, TORCH_DTYPES.get(dtype, dtype))
    gen = torch.Generator(device=device).manual_seed(seed)
    w1 = torch.randn(E, 2 * N, K, device=device, dtype=tdtype, generator=gen) / math.sqrt(K)
    w2 = torch.randn(E, K, N, device=device, dtype=tdtype, generator=gen) / math.sqrt(N)
    return w1, w2


def make_problem(
    w1: Any,
    w2: Any,
    m: int,
    top_k: int,
    backend: str,
    draws: int = 16,
    routing: str = "uniform",
    trace: Any = None,
    layer: int | None = None,
    seed: int = 0,
) -> Problem:
    """Inputs for batch size ``m`` on the weights' device, with a bank of ``draws`` routings."""
    import torch

    E, _, K = w1.shape
    ids, weights = routing_bank(E, top_k, m, draws, routing, trace, layer, seed)
    device = w1.device
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    hidden = torch.randn(m, K, device=device, dtype=w1.dtype, generator=gen)
    ids_bank = torch.from_numpy(ids).to(device)
    weights_bank = torch.from_numpy(weights).to(device)
    return Problem(
        hidden=hidden,
        w1=w1,
        w2=w2,
        ids_bank=ids_bank,
        weights_bank=weights_bank,
        topk_ids=ids_bank[0].clone(),
        topk_weights=weights_bank[0].clone(),
        cursor=torch.zeros(1, dtype=torch.int64, device=device),
        backend=backend,
    )


def next_routing(p: Problem) -> None:
    """Copy routing draw number ``cursor`` into the static buffers, then advance the cursor (all on device, so a
    CUDA graph replays a fresh routing each time without any host work)."""
    p.topk_ids.copy_(p.ids_bank.index_select(0, p.cursor).squeeze(0))
    p.topk_weights.copy_(p.weights_bank.index_select(0, p.cursor).squeeze(0))
    p.cursor.add_(1).remainder_(p.ids_bank.shape[0])

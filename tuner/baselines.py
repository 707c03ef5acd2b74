"""Baseline expert placements, each a small pure function returning a :class:`moesim.placement.Placement`.

Dimension legend: L MoE layers, E logical experts, G GPUs, S slots per GPU, P = G*S physical slots.

- :func:`contiguous`: Megatron's default, GPU g holds experts ``[g*E/G, (g+1)*E/G)`` (re-exported from moesim);
  also vLLM's default ``linear`` strategy when G divides E.
- :func:`round_robin`: vLLM's ``--expert-placement-strategy round_robin``: GPU g holds ``g, g+G, g+2G, ...`` as
  local experts ``0, 1, 2, ...`` (``determine_expert_map``, vllm/model_executor/layers/fused_moe/layer.py, later
  expert_map_manager.py: ``arange(ep_rank, E, ep_size)``). vLLM honours it only for models with expert groups
  (``num_expert_group > 1``, e.g. DeepSeek-V3), without redundant experts or EPLB, and, with an all-to-all
  kernel backend, only DeepEP low-latency or NIXL EP; otherwise it falls back to ``linear`` (our contiguous).
  We allow no replicas either.
- EPLB, with replicas, is :func:`tuner.eplb.eplb_placement`.

When G does not divide E, vLLM gives the first ``E % G`` ranks one extra expert under both strategies
(``linear``: rank r starts at ``r*(E//G) + min(r, E%G)``); our placements need equal slot counts, so both
functions reject that case.
"""

from __future__ import annotations

import numpy as np

from moesim.placement import Placement, contiguous

__all__ = ["contiguous", "round_robin"]


def round_robin(num_experts: int, num_gpus: int, num_layers: int) -> Placement:
    """vLLM's round-robin placement: physical slot ``g*S + i`` of GPU g holds expert ``g + i*G``.

    Our placements need the same slot count on every GPU, so ``E % G == 0`` is required (vLLM gives the first
    ``E % G`` ranks one extra expert otherwise).
    """
    from moesim.errors import PlacementError

    if num_experts % num_gpus:
        raise PlacementError(f"round_robin placement: num_experts {num_experts} is not divisible by {num_gpus} GPUs")
    slots = num_experts // num_gpus
    # [G, S]: row g = g, g+G, g+2G, ...
    row = (np.arange(num_gpus)[:, None] + num_gpus * np.arange(slots)[None, :]).ravel().astype(np.int64)
    phy2log = np.tile(row, (num_layers, 1))
    return Placement(
        num_gpus=num_gpus,
        slots_per_gpu=slots,
        num_experts=num_experts,
        phy2log=phy2log,
        shares=np.ones(phy2log.shape),
        meta={"method": "round_robin"},
    )

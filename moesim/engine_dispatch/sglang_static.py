"""``sglang-static`` (``--ep-dispatch-algorithm static``, SGLang 0.5.14 ``srt/eplb/expert_location.py``,
``compute_logical_to_rank_dispatch_physical_map``): the nearest replica, else one replica fixed per (rank,
layer, expert) at start-up with ``_fair_choices`` (every replica gets ``floor`` or ``ceil`` of the remaining
ranks, drawn by ``random.Random(42)``).

``static`` draws once at start-up, and each rank from its own random stream: fair within a node (its ranks
share the stream's draw), not across nodes, so a realised share can differ from the expectation by several
ranks' worth. :func:`sglang_static_map` reproduces the draw itself, draw for draw, and the rule's view scores
with it whenever the model is known (the simulator always; the planner's inner search uses the expectation).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from moesim.engine_dispatch.base import check_shape
from moesim.engine_dispatch.sglang_nearest import NearestReplica, sglang_nearest
from moesim.errors import field_error

if TYPE_CHECKING:
    from moesim.placement import Placement
    from moesim.specs import ModelSpec

__all__ = [
    "MAX_EXACT_DRAW",
    "SGLANG_STATIC_SEED",
    "SglangStatic",
    "sglang_static_map",
    "static_draw_cost",
    "static_shares",
]

SGLANG_STATIC_SEED = 42  # compute_logical_to_rank_dispatch_physical_map(..., seed=42)
# Largest static draw replayed exactly, in list elements shuffled (Python's random.shuffle, one call per element):
# DeepSeek-V3 on 64 GPUs (8 nodes, +64, global EPLB) is about 1e6 and takes about 0.5 s on one core; on 256 GPUs
# (+256) 5e7 and about 40 s, so there the expected shares stand in (the draw's luck averages out over more ranks).
MAX_EXACT_DRAW = 4e6


class SglangStatic(NearestReplica):
    """Nearest replica, else one fair-drawn replica per rank: the draw itself when the model is known."""

    name = "sglang-static"
    summary = "nearest replica (same GPU, else same node), else one fair-drawn replica per rank"
    source = "SGLang 0.5.14 srt/eplb/expert_location.py compute_logical_to_rank_dispatch_physical_map"

    def view_weights(
        self, placement: Placement, gpus_per_node: int, model: ModelSpec | None, layers: Sequence[int] | None
    ) -> tuple[np.ndarray | None, dict[str, str]]:
        """With ``model``, SGLang's start-up draw itself (:func:`sglang_static_map`) on the map SGLang would
        load: the placement's rows at their model layers (``meta["layers"]``, else the MoE layers in order, else
        ``layers``), every other hidden layer the trivial ``arange(P) % E`` row, as the SGLang export writes it,
        unless the draw is larger than :data:`MAX_EXACT_DRAW`. Otherwise the expected split.
        ``engine_draw`` says which (``exact`` | ``expected``)."""
        if model is not None:
            rows = _model_rows(placement, model, layers)
            full = np.tile(np.arange(placement.num_physical) % placement.num_experts, (int(model.num_layers), 1))
            full[rows] = placement.phy2log
            nnodes = placement.num_gpus // gpus_per_node
            if static_draw_cost(full, placement.num_gpus, nnodes) <= MAX_EXACT_DRAW:
                chosen = _cached_static_map(full.tobytes(), full.shape, placement.num_gpus, nnodes)[:, rows, :]
                phy = np.asarray(placement.phy2log, dtype=np.int64)
                picked = np.take_along_axis(chosen, np.broadcast_to(phy[None], (chosen.shape[0], *phy.shape)), axis=2)
                weights = (picked == np.arange(phy.shape[1])).astype(np.float64).transpose(1, 0, 2)  # [R, G, P]
                return weights, {"engine_draw": "exact"}
        expected, _ = super().view_weights(placement, gpus_per_node, model, layers)
        return expected, {"engine_draw": "expected"}


def _fair_choices(candidates: list[int], k: int, rng: random.Random) -> list[int]:
    """SGLang's ``_fair_choices``: every candidate ``k // c`` times, ``k % c`` more drawn without replacement,
    then shuffled; the same calls on ``rng`` in the same order, so the draws match SGLang's."""
    whole, extra = divmod(k, len(candidates))
    picked = candidates * whole + rng.sample(candidates, k=extra)
    rng.shuffle(picked)
    return picked


def sglang_static_map(
    physical_to_logical_map: np.ndarray, ep_size: int, nnodes: int, seed: int = SGLANG_STATIC_SEED
) -> np.ndarray:
    """``[G, L, E]`` the physical slot every EP rank sends each logical expert to under SGLang's ``static``
    dispatch, draw for draw (``logical_to_rank_dispatch_physical_map`` of each rank).

    ``physical_to_logical_map`` is the whole map SGLang loads (``[hidden layers, P]``, dense layers included:
    their rows consume draws too). Each rank builds the map from its own candidate lists, which it first
    shortens to its nearest replica (``_compute_logical_to_all_physical_map`` with ``moe_ep_rank``), so a rank
    draws only for the (layer, expert) pairs it has no nearest replica of. That set depends on the rank's node
    only, so one random stream per node reproduces every rank.
    """
    phy = np.asarray(physical_to_logical_map, dtype=np.int64)
    gpn = ep_size // nnodes
    check_shape(phy, ep_size, gpn)
    num_experts = int(phy.max()) + 1
    near = sglang_nearest(phy, num_experts, ep_size, gpn)  # [L, G, E]
    out = near.transpose(1, 0, 2).copy()  # [G, L, E]
    num_layers = phy.shape[0]
    candidates = [[np.flatnonzero(phy[layer] == e).tolist() for e in range(num_experts)] for layer in range(num_layers)]
    for node in range(nnodes):
        rng = random.Random(seed)
        ranks = np.arange(node * gpn, (node + 1) * gpn)
        lead = node * gpn  # every rank of the node lacks the same pairs
        for layer in range(num_layers):
            missing = np.flatnonzero(near[layer, lead] < 0)
            for e in missing.tolist():
                remaining = np.flatnonzero(near[layer, :, e] < 0)
                choices = _fair_choices(candidates[layer][e], len(remaining), rng)
                first = int(np.searchsorted(remaining, lead))  # the node's ranks are consecutive there
                out[ranks, layer, e] = choices[first : first + gpn]
    return out


def static_draw_cost(physical_to_logical_map: np.ndarray, ep_size: int, nnodes: int) -> float:
    """List elements :func:`sglang_static_map` shuffles: over nodes and the (layer, expert) pairs the node has
    no nearest replica of, the ranks left to draw for."""
    phy = np.asarray(physical_to_logical_map, dtype=np.int64)
    gpn = ep_size // nnodes
    near = sglang_nearest(phy, int(phy.max()) + 1, ep_size, gpn)  # [L, G, E]
    missing = near < 0
    left = missing.sum(axis=1)  # [L, E] ranks left per pair
    leads = missing[:, ::gpn, :]  # [L, N, E] does the node draw for the pair
    return float((leads * left[:, None, :]).sum())


def static_shares(physical_to_logical_map: np.ndarray, ep_size: int, nnodes: int) -> np.ndarray:
    """``[layers, P]`` the share of each slot under SGLang's ``static`` draw (:func:`sglang_static_map`): the
    fraction of ranks that send the slot's expert there (every rank routes alike)."""
    phy = np.asarray(physical_to_logical_map, dtype=np.int64)
    chosen = sglang_static_map(phy, ep_size, nnodes)  # [G, L, E]
    num_layers, num_slots = phy.shape
    idx = (np.arange(num_layers)[None, :, None] * num_slots + chosen).ravel()
    return np.bincount(idx, minlength=num_layers * num_slots).reshape(num_layers, num_slots) / ep_size


def _model_rows(placement: Placement, model: ModelSpec, layers: Sequence[int] | None) -> list[int]:
    """The model layer of each placement row: ``meta["layers"]``, else one row per MoE layer, else ``layers``."""
    meta = (placement.meta or {}).get("layers")
    if meta is not None and len(meta) == placement.num_layers:
        return [int(x) for x in meta]
    if placement.num_layers == model.num_moe_layers:
        return list(model.moe_layers)
    if layers is not None and len(layers) == placement.num_layers:
        return [int(x) for x in layers]
    raise field_error(
        "placement",
        "layers",
        f"{placement.num_layers} rows match neither the model's "
        f"{model.num_moe_layers} MoE layers nor the trace's layers",
    )


@lru_cache(maxsize=8)
def _cached_static_map(data: bytes, shape: tuple[int, int], ep_size: int, nnodes: int) -> np.ndarray:
    """:func:`sglang_static_map` of one map, kept: a plan scores the same placement for its loads and in the
    simulator (8 maps of DeepSeek-V3 on 64 GPUs are 64 MB)."""
    out = sglang_static_map(np.frombuffer(data, dtype=np.int64).reshape(shape), ep_size, nnodes)
    out.setflags(write=False)
    return out

"""Engine dispatch rules: which replica of an expert each source rank sends its tokens to.

A placement file (SGLang's ``physical_to_logical_map``, TensorRT-LLM's slot lists) carries no replica shares:
the serving engine decides at run time how a replicated expert's tokens are split. This module reproduces
those decisions so that the simulator and the planner score a placement as the engine will run it.

Dimension legend: L layers, E logical experts, G GPUs (EP ranks), N nodes, S slots per GPU, P = G*S physical
slots; slot ``p`` lives on GPU ``p // S``, node ``(p // S) // (G / N)``.

Rules (registry :data:`ENGINES`):

- ``placement``: the shares the placement states (moesim's own format; even for files of other engines).
- ``even``: every replica gets ``1 / c_e`` of every rank's tokens (``c_e`` replicas of expert e).
- ``vllm``: vLLM's EPLB sends assignment number ``i`` of a batch (flattened ``[tokens, k]`` position) to
  replica ``i mod c_e`` (vLLM 0.19.0 ``vllm/model_executor/layers/fused_moe/router/base_router.py``,
  ``eplb_map_to_physical_and_record``). Source independent and ``1 / c_e`` per replica in expectation.
- ``sglang-static`` (``--ep-dispatch-algorithm static``) and ``sglang-dynamic``: SGLang 0.5.14
  ``python/sglang/srt/eplb/expert_location.py``. Every rank first looks for a *nearest* replica
  (``_find_nearest_expert``): the only replica if there is one, else the lowest-numbered replica on its own
  GPU, else the lowest-numbered one on its own node. A rank with a nearest replica sends it all its tokens of
  the expert. A rank without one: ``static`` fixes one replica per (rank, layer, expert) at start-up with
  ``_fair_choices`` (every replica gets ``floor`` or ``ceil`` of the remaining ranks, drawn by
  ``random.Random(42)``); ``dynamic`` draws a replica uniformly per assignment
  (``expert_location_dispatch.py``, ``_topk_ids_logical_to_physical_dynamic``).

Expected weights (what :func:`replica_weights` returns, ``W [L, G, P]``: the fraction of rank r's assignments
of expert ``e(p)`` that slot p receives)::

    W[l, r, p] = 1                      if p is rank r's nearest replica of e(p)
               = 1 / c_e                if rank r has no nearest replica (static: the expectation of the fair draw)
               = 0                      otherwise

and the effective shares (every rank routes alike, the simulator's assumption) ``a[l, p] = mean_r W[l, r, p]``,
so a slot's load is ``a[l, p] * count[l, e(p)]`` exactly in expectation. ``static`` draws once at start-up,
and each rank from its own random stream: fair within a node (its ranks share the stream's draw), not across
nodes, so a realised share can differ from the expectation by several ranks' worth. :func:`sglang_static_map`
reproduces the draw itself, draw for draw, and :func:`apply_engine` scores ``sglang-static`` with it whenever
the model is known (the simulator always; the planner's inner search uses the expectation).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from moesim.errors import field_error
from moesim.placement import Placement

if TYPE_CHECKING:
    from moesim.specs import ModelSpec

__all__ = [
    "ENGINES",
    "apply_engine",
    "EngineRule",
    "engine_names",
    "engine_shares",
    "engine_view",
    "replica_weights",
    "sglang_nearest",
    "sglang_static_map",
    "static_draw_cost",
    "static_shares",
]

SGLANG_STATIC_SEED = 42  # compute_logical_to_rank_dispatch_physical_map(..., seed=42)
# Largest static draw replayed exactly, in list elements shuffled (Python's random.shuffle, one call per element):
# DeepSeek-V3 on 64 GPUs (8 nodes, +64, global EPLB) is about 1e6 and takes about 0.5 s on one core; on 256 GPUs
# (+256) 5e7 and about 40 s, so there the expected shares stand in (the draw's luck averages out over more ranks).
MAX_EXACT_DRAW = 4e6


@dataclass(frozen=True)
class EngineRule:
    """One engine's replica choice: ``weights(phy2log [L, P], E, G, gpus_per_node) -> W [L, G, P]``."""

    name: str
    summary: str
    source: str
    weights: Callable[[np.ndarray, int, int, int], np.ndarray] | None  # None: the placement's own shares


def _replica_counts(phy2log: np.ndarray, num_experts: int) -> np.ndarray:
    """``[L, E]`` replicas of each expert."""
    num_layers = phy2log.shape[0]
    off = np.arange(num_layers)[:, None] * num_experts
    return np.bincount((off + phy2log).ravel(), minlength=num_layers * num_experts).reshape(num_layers, num_experts)


def _even_weights(phy2log: np.ndarray, num_experts: int, num_gpus: int, gpus_per_node: int) -> np.ndarray:
    cnt = _replica_counts(phy2log, num_experts)
    share = 1.0 / np.take_along_axis(cnt, phy2log, axis=1)  # [L, P]
    return np.broadcast_to(share[:, None, :], (phy2log.shape[0], num_gpus, phy2log.shape[1]))


def sglang_nearest(phy2log: np.ndarray, num_experts: int, num_gpus: int, gpus_per_node: int) -> np.ndarray:
    """``[L, G, E]`` the slot each rank's ``_find_nearest_expert`` returns, -1 where the rank has none.

    The only replica if there is one; else the lowest-numbered replica on the rank's GPU; else the
    lowest-numbered one on its node (candidates are listed in slot order, the first match wins).
    """
    phy2log = np.asarray(phy2log, dtype=np.int64)
    num_layers, num_slots = phy2log.shape
    spg = num_slots // num_gpus
    num_nodes = num_gpus // gpus_per_node
    gpu = np.arange(num_slots) // spg
    node = gpu // gpus_per_node
    big = np.iinfo(np.int64).max
    slots = np.broadcast_to(np.arange(num_slots), phy2log.shape)
    layer = np.broadcast_to(np.arange(num_layers)[:, None], phy2log.shape)
    first_gpu = np.full((num_layers, num_experts, num_gpus), big, dtype=np.int64)
    np.minimum.at(first_gpu, (layer, phy2log, np.broadcast_to(gpu, phy2log.shape)), slots)
    first_node = np.full((num_layers, num_experts, num_nodes), big, dtype=np.int64)
    np.minimum.at(first_node, (layer, phy2log, np.broadcast_to(node, phy2log.shape)), slots)
    only = first_node.min(axis=-1)  # [L, E] the lowest slot of each expert
    cnt = _replica_counts(phy2log, num_experts)
    rank_node = np.arange(num_gpus) // gpus_per_node
    on_node = first_node[:, :, rank_node]  # [L, E, G]
    near = np.where(first_gpu < big, first_gpu, np.where(on_node < big, on_node, -1))
    near = np.where((cnt == 1)[:, :, None], only[:, :, None], near)
    return near.transpose(0, 2, 1)


def _sglang_weights(phy2log: np.ndarray, num_experts: int, num_gpus: int, gpus_per_node: int) -> np.ndarray:
    phy2log = np.asarray(phy2log, dtype=np.int64)
    near = sglang_nearest(phy2log, num_experts, num_gpus, gpus_per_node)  # [L, G, E]
    cnt = _replica_counts(phy2log, num_experts)
    target = np.take_along_axis(
        near, np.broadcast_to(phy2log[:, None, :], (near.shape[0], num_gpus, phy2log.shape[1])), axis=2
    )
    slot = np.arange(phy2log.shape[1])[None, None, :]
    fair = 1.0 / np.take_along_axis(cnt, phy2log, axis=1)[:, None, :]
    return np.where(target == slot, 1.0, 0.0) + np.where(target < 0, fair, 0.0)


ENGINES: dict[str, EngineRule] = {
    rule.name: rule
    for rule in (
        EngineRule("placement", "the shares the placement file states", "moesim placement format", None),
        EngineRule("even", "every replica 1/c of every rank's tokens", "moesim", _even_weights),
        EngineRule(
            "vllm",
            "assignment i to replica i mod c (even in expectation)",
            "vLLM 0.19.0 fused_moe/router/base_router.py eplb_map_to_physical_and_record",
            _even_weights,
        ),
        EngineRule(
            "sglang-static",
            "nearest replica (same GPU, else same node), else one fair-drawn replica per rank",
            "SGLang 0.5.14 srt/eplb/expert_location.py compute_logical_to_rank_dispatch_physical_map",
            _sglang_weights,
        ),
        EngineRule(
            "sglang-dynamic",
            "nearest replica (same GPU, else same node), else a uniform draw per assignment",
            "SGLang 0.5.14 srt/eplb/expert_location_dispatch.py _topk_ids_logical_to_physical_dynamic",
            _sglang_weights,
        ),
    )
}


def engine_names() -> tuple[str, ...]:
    """The rule names, registry order."""
    return tuple(ENGINES)


def _rule(engine: str) -> EngineRule:
    try:
        return ENGINES[engine]
    except KeyError:
        raise field_error("options", "engine", f"must be one of {', '.join(ENGINES)}, got {engine!r}") from None


def replica_weights(
    phy2log: np.ndarray, num_experts: int, num_gpus: int, gpus_per_node: int, engine: str
) -> np.ndarray:
    """``W [L, G, P]``: the expected fraction of rank r's assignments of expert ``phy2log[l, p]`` that slot p
    receives under ``engine`` (module docstring). Each rank's weights over an expert's replicas sum to 1."""
    rule = _rule(engine)
    if rule.weights is None:
        raise field_error("options", "engine", "'placement' has no per-rank weights; use engine_shares")
    phy2log = np.asarray(phy2log, dtype=np.int64)
    _check_shape(phy2log, num_gpus, gpus_per_node)
    return rule.weights(phy2log, num_experts, num_gpus, gpus_per_node)


def engine_shares(
    phy2log: np.ndarray,
    shares: np.ndarray,
    num_experts: int,
    num_gpus: int,
    gpus_per_node: int,
    engine: str,
) -> np.ndarray:
    """``[L, P]`` effective replica shares ``a = mean_r W[:, r, :]`` (``shares`` itself for ``placement``)."""
    rule = _rule(engine)
    if rule.weights is None:
        return np.asarray(shares, dtype=np.float64)
    return replica_weights(phy2log, num_experts, num_gpus, gpus_per_node, engine).mean(axis=1)


def _check_shape(phy2log: np.ndarray, num_gpus: int, gpus_per_node: int) -> None:
    if phy2log.ndim != 2 or num_gpus < 1 or phy2log.shape[1] % num_gpus:
        raise field_error("placement", "phy2log", f"shape {phy2log.shape} does not split over {num_gpus} GPUs")
    if gpus_per_node < 1 or num_gpus % gpus_per_node:
        raise field_error("cluster", "gpus_per_node", f"{gpus_per_node} does not divide {num_gpus} GPUs")


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
    _check_shape(phy, ep_size, gpn)
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


def engine_view(
    placement: Placement,
    engine: str,
    gpus_per_node: int,
    model: ModelSpec | None = None,
    layers: Sequence[int] | None = None,
) -> tuple[Placement, np.ndarray | None]:
    """``placement`` as ``engine`` runs it: the copy with the rule's shares (:func:`apply_engine`) and each
    rank's split ``W [rows, G, P]``, or None where every rank splits alike (``placement``, ``even``, ``vllm``).

    With ``model``, ``sglang-static`` runs SGLang's start-up draw itself (:func:`sglang_static_map`) on the map
    SGLang would load: the placement's rows at their model layers (``meta["layers"]``, else the MoE layers in
    order, else ``layers``), every other hidden layer the trivial ``arange(P) % E`` row, as the SGLang export
    writes it, unless the draw is larger than :data:`MAX_EXACT_DRAW`. Otherwise the expected split
    (:func:`replica_weights`). ``meta["engine_draw"]`` says which (``exact`` | ``expected``).
    """
    rule = _rule(engine)
    if rule.weights is None:
        return placement, None
    exact = False
    if engine == "sglang-static" and model is not None:
        rows = _model_rows(placement, model, layers)
        full = np.tile(np.arange(placement.num_physical) % placement.num_experts, (int(model.num_layers), 1))
        full[rows] = placement.phy2log
        nnodes = placement.num_gpus // gpus_per_node
        exact = static_draw_cost(full, placement.num_gpus, nnodes) <= MAX_EXACT_DRAW
    weights: np.ndarray | None
    if exact:
        chosen = _cached_static_map(full.tobytes(), full.shape, placement.num_gpus, nnodes)[:, rows, :]  # [G, R, E]
        phy = np.asarray(placement.phy2log, dtype=np.int64)
        picked = np.take_along_axis(chosen, np.broadcast_to(phy[None], (chosen.shape[0], *phy.shape)), axis=2)
        weights = (picked == np.arange(phy.shape[1])).astype(np.float64).transpose(1, 0, 2)  # [R, G, P]
    elif rule.weights is _even_weights:
        weights = None  # every rank alike
    else:
        weights = replica_weights(
            placement.phy2log, placement.num_experts, placement.num_gpus, gpus_per_node, engine
        ).copy()
    if weights is None:
        shares = engine_shares(
            placement.phy2log, placement.shares, placement.num_experts, placement.num_gpus, gpus_per_node, engine
        )
    else:
        shares = weights.mean(axis=1)
    meta = dict(placement.meta or {})
    meta["engine"] = engine
    if engine == "sglang-static":
        meta["engine_draw"] = "exact" if exact else "expected"
    view = Placement(
        placement.num_gpus, placement.slots_per_gpu, placement.num_experts, placement.phy2log, shares, meta
    )
    return view, weights


@lru_cache(maxsize=8)
def _cached_static_map(data: bytes, shape: tuple[int, int], ep_size: int, nnodes: int) -> np.ndarray:
    """:func:`sglang_static_map` of one map, kept: a plan scores the same placement for its loads and in the
    simulator (8 maps of DeepSeek-V3 on 64 GPUs are 64 MB)."""
    out = sglang_static_map(np.frombuffer(data, dtype=np.int64).reshape(shape), ep_size, nnodes)
    out.setflags(write=False)
    return out


def apply_engine(
    placement: Placement,
    engine: str,
    gpus_per_node: int,
    model: ModelSpec | None = None,
    layers: Sequence[int] | None = None,
) -> Placement:
    """``placement`` with its shares replaced by those ``engine`` gives it, for scoring (:func:`engine_view`);
    ``meta["engine"]`` names the rule. A share may be 0 (a replica no rank picks)."""
    return engine_view(placement, engine, gpus_per_node, model, layers)[0]

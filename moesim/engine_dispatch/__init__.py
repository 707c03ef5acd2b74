"""Engine dispatch rules: which replica of an expert each source rank sends its tokens to.

A placement file (SGLang's ``physical_to_logical_map``, TensorRT-LLM's slot lists) carries no replica shares:
the serving engine decides at run time how a replicated expert's tokens are split. This module reproduces
those decisions so that the simulator and the planner score a placement as the engine will run it.

Dimension legend: L layers, E logical experts, G GPUs (EP ranks), N nodes, S slots per GPU, P = G*S physical
slots; slot ``p`` lives on GPU ``p // S``, node ``(p // S) // (G / N)``.

Rules (registry :data:`ENGINES`; the protocol is :class:`~moesim.engine_dispatch.base.EngineRule`, one file per
rule; to add one: a file with a class that follows ``EngineRule``, one entry in :data:`ENGINES`):

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

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from moesim.engine_dispatch.base import EngineRule, checked_weights
from moesim.engine_dispatch.even import Even
from moesim.engine_dispatch.placement_shares import PlacementShares
from moesim.engine_dispatch.sglang_dynamic import SglangDynamic
from moesim.engine_dispatch.sglang_nearest import sglang_nearest
from moesim.engine_dispatch.sglang_static import (
    MAX_EXACT_DRAW,
    SGLANG_STATIC_SEED,
    SglangStatic,
    sglang_static_map,
    static_draw_cost,
    static_shares,
)
from moesim.engine_dispatch.vllm import Vllm
from moesim.errors import field_error
from moesim.placement import Placement

if TYPE_CHECKING:
    from moesim.specs import ModelSpec

__all__ = [
    "ENGINES",
    "MAX_EXACT_DRAW",
    "SGLANG_STATIC_SEED",
    "EngineRule",
    "apply_engine",
    "engine_names",
    "engine_shares",
    "engine_view",
    "replica_weights",
    "sglang_nearest",
    "sglang_static_map",
    "static_draw_cost",
    "static_shares",
]

# The engine-dispatch family's registry: rule name -> member (each follows EngineRule), in the CLI's order.
ENGINES: dict[str, EngineRule] = {
    rule.name: rule for rule in (PlacementShares(), Even(), Vllm(), SglangStatic(), SglangDynamic())
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
    if not rule.per_rank:
        raise field_error("options", "engine", "'placement' has no per-rank weights; use engine_shares")
    return checked_weights(rule, phy2log, num_experts, num_gpus, gpus_per_node)


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
    if not rule.per_rank:
        return np.asarray(shares, dtype=np.float64)
    return replica_weights(phy2log, num_experts, num_gpus, gpus_per_node, engine).mean(axis=1)


def engine_view(
    placement: Placement,
    engine: str,
    gpus_per_node: int,
    model: ModelSpec | None = None,
    layers: Sequence[int] | None = None,
) -> tuple[Placement, np.ndarray | None]:
    """``placement`` as ``engine`` runs it: the copy with the rule's shares (:func:`apply_engine`) and each
    rank's split ``W [rows, G, P]``, or None where every rank splits alike (``placement``, ``even``, ``vllm``).

    ``sglang-static`` with ``model`` runs SGLang's start-up draw itself (``SglangStatic.view_weights``);
    ``meta["engine_draw"]`` says whether it did (``exact`` | ``expected``).
    """
    rule = _rule(engine)
    if not rule.per_rank:
        return placement, None
    weights, extra = rule.view_weights(placement, gpus_per_node, model, layers)
    if weights is None:
        shares = engine_shares(
            placement.phy2log, placement.shares, placement.num_experts, placement.num_gpus, gpus_per_node, engine
        )
    else:
        shares = weights.mean(axis=1)
    meta = dict(placement.meta or {})
    meta["engine"] = engine
    meta.update(extra)
    view = Placement(
        placement.num_gpus, placement.slots_per_gpu, placement.num_experts, placement.phy2log, shares, meta
    )
    return view, weights


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

"""Refine a placement under SGLang's dispatch rule: slot swaps that lower the busiest GPU's load as SGLang splits it.

Dimension legend: L layers, E logical experts, G GPUs, N nodes, S slots per GPU, P = G*S slots.

The MILP assumes a replicated expert's tokens split evenly over its replicas. SGLang does not split them so
(:mod:`moesim.engine_dispatch`): a rank uses the replica on its own GPU, else the first one on its node, and
only ranks of nodes without a replica spread over all of them. For an expert with ``c`` replicas, on ``nn``
distinct nodes, replica ``i`` on a node where ``ng`` distinct GPUs hold one receives, of the ``G`` ranks::

    ranks(i) = [i first on its GPU] + [i first on its node] (gpn - ng) + (G - gpn nn) / c
    share(i) = ranks(i) / G                        # every rank routes alike (the simulator's assumption)

so replicas on distinct nodes split evenly, and two replicas on one node do not. :func:`refine` runs a
steepest descent per layer: among swaps of a slot of the busiest GPU with a slot of one of the ``partners``
least-loaded GPUs (different experts, neither GPU holding the other's expert already), take the one that most
lowers ``(max_g load, sum_g load^2)`` under these shares; stop when none does, after ``max_swaps``, or at the
deadline. Slot counts never change; the rule's shares are recomputed exactly after every swap.

``static`` fixes its draw at start-up, so :func:`settle_static` then balances against the realised draw itself,
with swaps that leave every draw unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from moesim.placement import Placement, even_shares

if TYPE_CHECKING:
    from moesim.specs import ModelSpec

__all__ = ["refine", "settle_static", "sglang_shares_row"]


def sglang_shares_row(phy2log: np.ndarray, num_experts: int, num_gpus: int, gpus_per_node: int) -> np.ndarray:
    """``[P]`` SGLang's expected share of each slot of one layer (module docstring), in closed form."""
    phy = np.asarray(phy2log, dtype=np.int64)
    num_slots = phy.shape[0]
    spg = num_slots // num_gpus
    num_nodes = num_gpus // gpus_per_node
    gpu = np.arange(num_slots) // spg
    node = gpu // gpus_per_node
    cnt = np.bincount(phy, minlength=num_experts)
    # first slot of each (expert, GPU) and (expert, node): slots are visited in order, so a stable sort by key
    # puts the first occurrence first
    key_gpu = phy * num_gpus + gpu
    key_node = phy * num_nodes + node
    first_gpu = np.zeros(num_slots, dtype=bool)
    first_gpu[np.unique(key_gpu, return_index=True)[1]] = True
    first_node = np.zeros(num_slots, dtype=bool)
    first_node[np.unique(key_node, return_index=True)[1]] = True
    # distinct GPUs holding the expert on each node, distinct nodes holding it
    ng = np.bincount(key_node[first_gpu], minlength=num_experts * num_nodes)[key_node]
    nn = np.bincount(phy[first_node], minlength=num_experts)[phy]
    ranks = first_gpu + first_node * (gpus_per_node - ng) + (num_gpus - gpus_per_node * nn) / cnt[phy]
    return np.where(cnt[phy] == 1, 1.0, ranks / num_gpus)


def _loads(phy: np.ndarray, counts: np.ndarray, num_gpus: int, gpn: int) -> np.ndarray:
    shares = sglang_shares_row(phy, counts.shape[0], num_gpus, gpn)
    return np.bincount(
        np.arange(phy.shape[0]) // (phy.shape[0] // num_gpus), weights=counts[phy] * shares, minlength=num_gpus
    )


def _score(loads: np.ndarray) -> tuple[float, float]:
    return float(loads.max()), float((loads**2).sum())


def refine_row(
    phy2log: np.ndarray,
    counts: np.ndarray,
    num_gpus: int,
    gpus_per_node: int,
    partners: int = 4,
    max_swaps: int = 200,
    deadline: float | None = None,
    spread: bool = False,
) -> tuple[np.ndarray, int]:
    """One layer's ``phy2log [P]`` refined (module docstring), and the swaps made. ``spread``: no swap puts an
    expert on a node that already holds it (``tuner.placers.node_spread``'s layout is kept)."""
    phy = np.asarray(phy2log, dtype=np.int64).copy()
    counts = np.asarray(counts, dtype=np.float64)
    spg = phy.shape[0] // num_gpus
    num_nodes = max(1, num_gpus // gpus_per_node)
    node_of_slot = np.arange(phy.shape[0]) // spg // gpus_per_node
    on_node = np.zeros((counts.shape[0], num_nodes), dtype=np.int64)
    np.add.at(on_node, (phy, node_of_slot), 1)
    loads = _loads(phy, counts, num_gpus, gpus_per_node)
    best = _score(loads)
    swaps = 0
    while swaps < max_swaps and (deadline is None or time.perf_counter() < deadline):
        hot = int(np.argmax(loads))
        cold = [int(g) for g in np.argsort(loads)[:partners] if g != hot]
        held = {g: set(phy[g * spg : (g + 1) * spg].tolist()) for g in [hot, *cold]}
        found = None
        for p in range(hot * spg, (hot + 1) * spg):
            for g in cold:
                for q in range(g * spg, (g + 1) * spg):
                    a, b = int(phy[p]), int(phy[q])
                    if a == b or a in held[g] or b in held[hot]:
                        continue
                    na, nb = node_of_slot[p], node_of_slot[q]
                    if spread and na != nb and (on_node[a, nb] or on_node[b, na]):
                        continue
                    phy[p], phy[q] = b, a
                    trial = _loads(phy, counts, num_gpus, gpus_per_node)
                    phy[p], phy[q] = a, b
                    score = _score(trial)
                    if score < best and (found is None or score < found[0]):
                        found = (score, p, q, trial)
        if found is None:
            break
        best, p, q, loads = found
        a, b = int(phy[p]), int(phy[q])
        on_node[a, node_of_slot[p]] -= 1
        on_node[b, node_of_slot[q]] -= 1
        on_node[a, node_of_slot[q]] += 1
        on_node[b, node_of_slot[p]] += 1
        phy[p], phy[q] = b, a
        swaps += 1
    return phy, swaps


def refine(
    placement: Placement,
    counts: np.ndarray,
    gpus_per_node: int,
    time_limit_s: float = 5.0,
    partners: int = 4,
    max_swaps: int = 200,
    spread: bool = False,
) -> tuple[Placement, int]:
    """``placement`` with every layer refined under SGLang's rule (shares even, as a placement file implies),
    and the swaps made; the time limit is shared evenly over the layers. ``spread``: see :func:`refine_row`."""
    counts = np.asarray(counts, dtype=np.float64)
    rows = []
    total = 0
    start = time.perf_counter()
    num_layers = placement.num_layers
    for layer in range(num_layers):
        deadline = start + time_limit_s * (layer + 1) / num_layers
        row, n = refine_row(
            placement.phy2log[layer],
            counts[layer],
            placement.num_gpus,
            gpus_per_node,
            partners,
            max_swaps,
            deadline,
            spread,
        )
        rows.append(row)
        total += n
    phy = np.stack(rows)
    out = Placement(
        placement.num_gpus,
        placement.slots_per_gpu,
        placement.num_experts,
        phy,
        even_shares(phy, placement.num_experts),
        dict(placement.meta or {}),
    )
    return out, total


def settle_static(
    placement: Placement,
    counts: np.ndarray,
    gpus_per_node: int,
    model: ModelSpec,
    layers: Sequence[int] | None = None,
    partners: int = 8,
    max_swaps: int = 400,
    time_limit_s: float = 5.0,
) -> tuple[Placement, int]:
    """Balance ``placement`` against SGLang's actual ``static`` draw, not its expectation.

    The draw (:func:`moesim.engine_dispatch.static_shares`) is fixed by the map and seed 42, but one rank's
    luck cannot be averaged away, so the busiest GPU it realises is above the expectation's. Swapping two
    experts that have one replica each changes no draw: a lone replica is every rank's nearest, so it consumes
    no random number and leaves every replicated expert's candidates where they were. The realised shares are
    therefore computed once, and a steepest descent over such swaps (the busiest GPU's lone experts against the
    ``partners`` least-loaded GPUs', lowering ``(max, sum of squares)`` of the realised loads) is exact.
    """
    from moesim.engine_dispatch import apply_engine

    counts = np.asarray(counts, dtype=np.float64)
    shares = apply_engine(placement, "sglang-static", gpus_per_node, model, layers).shares
    phy = np.asarray(placement.phy2log, dtype=np.int64).copy()
    num_gpus, spg = placement.num_gpus, placement.slots_per_gpu
    slot_gpu = np.arange(placement.num_physical) // spg
    start = time.perf_counter()
    total = 0
    for layer in range(placement.num_layers):
        deadline = start + time_limit_s * (layer + 1) / placement.num_layers
        row = phy[layer]
        lone = np.bincount(row, minlength=placement.num_experts)[row] == 1  # [P]
        loads = np.bincount(slot_gpu, weights=counts[layer, row] * shares[layer], minlength=num_gpus)
        best = _score(loads)
        swaps = 0
        while swaps < max_swaps and time.perf_counter() < deadline:
            hot = int(np.argmax(loads))
            cold = [int(g) for g in np.argsort(loads)[:partners] if g != hot]
            found = None
            for p in np.flatnonzero(lone & (slot_gpu == hot)):
                for q in np.flatnonzero(lone & np.isin(slot_gpu, cold)):
                    delta = counts[layer, row[q]] - counts[layer, row[p]]
                    if delta >= 0:
                        continue
                    trial = loads.copy()
                    trial[hot] += delta
                    trial[slot_gpu[q]] -= delta
                    score = _score(trial)
                    if score < best and (found is None or score < found[0]):
                        found = (score, p, q, trial)
            if found is None:
                break
            best, p, q, loads = found
            row[p], row[q] = row[q], row[p]  # both lone: shares stay 1
            swaps += 1
        total += swaps
    out = Placement(
        placement.num_gpus,
        placement.slots_per_gpu,
        placement.num_experts,
        phy,
        even_shares(phy, placement.num_experts),
        dict(placement.meta or {}),
    )
    return out, total

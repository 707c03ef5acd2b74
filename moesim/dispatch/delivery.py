"""Delivery probabilities of the dispatch: how many of a token's rows reach each GPU or node.

Dimension legend: L MoE layers, E logical experts, k top-k, G GPUs, N nodes (g = node * gpn + local rank),
S slots per GPU, P = G*S physical slots, J = n_group expert groups (1 without group-limited routing).

1. Delivery probabilities (from per-expert counts only, no loop over tokens)
-------------------------------------------------------------------------------
Every GPU holds T tokens whose routing follows the layer's expert distribution ``p_e`` (fraction of all
assignments; modelling assumption: the source GPU does not change the distribution). A slot (physical expert)
of expert e with replica share ``a`` receives a fraction ``x = p_e * a`` of the assignments. A token includes
expert e with probability ``k * p_e`` exactly (an expert is chosen at most once).

The token reaches a bin (a GPU, or a node for the inter-node hop of the hierarchical scheme) unless none of
the bin's slots is chosen. Plain top-k, with ``n`` = the bin's share of experts::

    P_miss(bin) = prod_{slots in bin} (1 - min(1, k x)) * C_k(n)
    C_k(n)      = prod_{i<k} (1 - n / (E - i)) / (1 - k / E) ** n       # sampling without replacement
    u(bin)      = 1 - P_miss(bin)         # expected deliveries of one token to the bin, deduplicated

``C_k`` corrects the independence product for drawing k distinct experts: exact for uniform routing
(``P_miss = C(E-n, k) / C(E, k)``) and for a single expert under any skew (``P_miss = 1 - k p_e``); in between
an approximation, checked against exact top-k sampling in ``tests/moesim/test_dispatch.py``.

Group-limited routing (``topk_group < n_group``): group j is selected with probability ``s_j = min(1, c
m_j)``,
``sum_j s_j = topk_group`` (water-filling on the group masses ``m_j``). A selected group always gets one pick
(it was selected for its strongest experts), landing on a slot in proportion to ``w = x / m_j``; the other
``k - topk_group`` picks spread over the selected groups (``E_sel = E * topk_group / n_group`` experts) with
inclusion ``x * (k / s_j - 1 / m_j)``::

    M(bin, j)   = (1 - sum w) * prod (1 - x (k / s_j - 1 / m_j)) * C_{k - topk_group}(n)   # over E_sel - k_g
    P_miss(bin) = prod_j (1 - s_j + s_j * M(bin, j))                                   # groups independent

Exact for uniform routing. Without dedup ``u(bin) = k * sum x``: every assignment is sent separately.
All equations with their assumptions: ``docs/COSTMODEL.md``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["delivery_per_token", "group_selection"]

_TINY = 1e-300


def group_selection(group_mass: np.ndarray, topk_group: int) -> np.ndarray:
    """``[L, J]`` probability that a token selects each group: ``s_j = min(1, c * m_j)``, ``sum_j s_j
    = topk_group``.

    ``group_mass``: ``[L, J]`` fraction of assignments in each group (rows sum to 1).
    """
    m = np.asarray(group_mass, dtype=np.float64)
    num_groups = m.shape[-1]
    if topk_group >= num_groups:
        return np.ones_like(m)
    capped = np.zeros(m.shape, dtype=bool)
    s = m
    for _ in range(num_groups):  # at most J rounds of capping; J is 8 for DeepSeek-V3
        free_mass = np.where(capped, 0.0, m).sum(axis=-1, keepdims=True)
        room = topk_group - capped.sum(axis=-1, keepdims=True)
        c = np.where(free_mass > 0, room / np.maximum(free_mass, _TINY), 0.0)
        s = np.where(capped, 1.0, np.minimum(1.0, c * m))
        newly = (s >= 1.0) & ~capped
        if not newly.any():
            break
        capped |= newly
    return s


def _log_correction(n: np.ndarray, top_k: int, e_sel: float) -> np.ndarray:
    """``log C(n)``: exact sampling without replacement over the independence product, for a uniform bin."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros(n.shape)
    for i in range(top_k):
        out += np.log(np.maximum(1.0 - n / (e_sel - i), 1e-12))
    base = np.log(max(1.0 - top_k / e_sel, 1e-12))
    return out - n * base


def delivery_per_token(
    slot_mass: np.ndarray,
    slot_share: np.ndarray,
    slot_bin: np.ndarray,
    slot_group: np.ndarray,
    num_bins: int,
    group_sel: np.ndarray,
    top_k: int,
    num_experts: int,
    topk_group: int,
    dedup: bool = True,
) -> np.ndarray:
    """Expected deliveries of one source token to each bin (GPU or node), ``[L, num_bins]``.

    Args:
        slot_mass: ``[L, P]`` fraction of the layer's assignments served by each slot (``p_e * share``), after
            drops (rows may sum to < 1).
        slot_share: ``[L, P]`` replica share of each slot (its count towards ``n``, the bin's experts).
        slot_bin: ``[P]`` or ``[L, P]`` bin of each slot.
        slot_group: ``[L, P]`` group of each slot's logical expert.
        group_sel: ``[L, J]`` from :func:`group_selection`.
    See the module docstring for the equations.
    """
    mass = np.asarray(slot_mass, dtype=np.float64)
    num_layers = mass.shape[0]
    num_groups = group_sel.shape[-1]
    if topk_group >= num_groups > 1:
        # every group may be selected: the limit is vacuous and routing is plain top-k
        return delivery_per_token(
            mass,
            slot_share,
            slot_bin,
            np.zeros_like(slot_group),
            num_bins,
            np.ones((num_layers, 1)),
            top_k,
            num_experts,
            1,
            dedup,
        )
    bins = np.broadcast_to(slot_bin, mass.shape)
    layer_off = np.arange(num_layers)[:, None]
    if not dedup:
        idx = (layer_off * num_bins + bins).ravel()
        out = np.bincount(idx, weights=mass.ravel(), minlength=num_layers * num_bins)
        return top_k * out.reshape(num_layers, num_bins)
    sel = np.take_along_axis(group_sel, slot_group, axis=1)  # [L, P]
    share = np.asarray(slot_share, dtype=np.float64)
    idx = ((layer_off * num_bins + bins) * num_groups + slot_group).ravel()
    size = num_layers * num_bins * num_groups
    n = np.bincount(idx, weights=share.ravel(), minlength=size)
    e_sel = num_experts * min(topk_group, num_groups) / num_groups
    if num_groups == 1:
        pi = np.minimum(1.0, top_k * mass)
        log_keep = np.log(np.maximum(1.0 - pi, 1e-12))
        log_m = np.bincount(idx, weights=log_keep.ravel(), minlength=size)
        miss_given_sel = np.exp(log_m + _log_correction(n, top_k, e_sel))
    else:
        # A group is selected for its strongest experts, so each selected group gets one pick for sure,
        # landing on a slot in proportion to the slot's share w of the group's mass; the remaining
        # k - topk_group picks spread over the selected groups with inclusion pi'' = x * (k / s_j - 1 / m_j)
        # (the expected picks k * x minus the sure pick's s_j * x / m_j, given selection). Exact for uniform
        # routing.
        gidx = (layer_off * num_groups + slot_group).ravel()
        m_group = np.bincount(gidx, weights=mass.ravel(), minlength=num_layers * num_groups)
        m_slot = m_group.reshape(num_layers, num_groups)[layer_off, slot_group]
        w = mass / np.maximum(m_slot, _TINY)
        first = np.bincount(idx, weights=w.ravel(), minlength=size)
        rest_k = max(top_k - min(topk_group, num_groups), 0)
        pi = np.clip(mass * (top_k / np.maximum(sel, _TINY) - 1.0 / np.maximum(m_slot, _TINY)), 0.0, 1.0)
        log_keep = np.log(np.maximum(1.0 - pi, 1e-12))
        log_m = np.bincount(idx, weights=log_keep.ravel(), minlength=size)
        log_first = np.log(np.maximum(1.0 - first, 1e-12))
        rest = log_m + _log_correction(n, rest_k, e_sel - min(topk_group, num_groups)) if rest_k else 0.0
        miss_given_sel = np.exp(log_first + rest)
    miss_given_sel = np.clip(miss_given_sel, 0.0, 1.0).reshape(num_layers, num_bins, num_groups)
    s = group_sel[:, None, :]
    p_miss = np.prod(1.0 - s + s * miss_given_sel, axis=-1)
    return 1.0 - p_miss

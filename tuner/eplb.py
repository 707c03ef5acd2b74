"""EPLB-equivalent expert placement, written from the published description of deepseek-ai/EPLB.

Dimension legend: X independent rows (layers, or layers x nodes), n items per row, m packs, L MoE layers,
E logical experts, P physical slots (``E + redundant``), G GPUs, N nodes, J expert groups.

The published algorithm (DeepSeek-V3 report, section 3.4, and the EPLB README):

1. **balanced packing**: ``n`` weighted items into ``m`` packs of exactly ``n/m`` items each; items are taken
   heaviest first and each goes to the lightest pack that still has room (ties: lowest pack index).
2. **replication**: starting from one replica per expert, each redundant slot goes to the expert with the
   highest load per replica ``w_e / r_e`` (ties: lowest expert id). Replicas split their expert's tokens evenly.
3. **hierarchical** (when ``J % N == 0``): pack expert groups onto nodes (step 1 on group loads), replicate
   within each node (step 2 with ``P/N`` slots), then pack the node's replicas onto its GPUs (step 1 on
   per-replica loads). Keeping a group on one node bounds the inter-node traffic of group-limited routing.
4. **global** (otherwise): replicate over all experts, then pack all replicas onto all GPUs, ignoring groups.
   It is the hierarchical scheme with one group and one node.

Slot order within a GPU is the packing order (rank in pack), as in EPLB, so ``phy2log`` matches the README's
printed output for its example.
"""

from __future__ import annotations

import numpy as np

from moesim.placement import Placement, even_shares


def balanced_packing(weight: np.ndarray, num_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack ``n`` items per row into ``num_packs`` packs of ``n / num_packs`` items, balancing pack weight.

    Args:
        weight: ``[X, n]`` item weights.
        num_packs: ``m``; must divide ``n``.
    Returns:
        ``pack_index [X, n]`` (pack of each item) and ``rank_in_pack [X, n]`` (its position in the pack).
    """
    weight = np.asarray(weight, dtype=np.float64)
    rows, n = weight.shape
    assert n % num_packs == 0, "items must divide evenly into packs"
    per_pack = n // num_packs
    if per_pack == 1:
        idx = np.broadcast_to(np.arange(n), (rows, n)).copy()
        return idx, np.zeros((rows, n), dtype=np.int64)
    pack_index = np.empty((rows, n), dtype=np.int64)
    rank_in_pack = np.empty((rows, n), dtype=np.int64)
    for x in range(rows):
        load = np.zeros(num_packs)
        fill = np.zeros(num_packs, dtype=np.int64)
        for item in np.argsort(-weight[x], kind="stable"):  # heaviest first
            open_load = np.where(fill < per_pack, load, np.inf)
            pack = int(np.argmin(open_load))  # lightest pack with room, lowest index on ties
            pack_index[x, item] = pack
            rank_in_pack[x, item] = fill[pack]
            load[pack] += weight[x, item]
            fill[pack] += 1
    return pack_index, rank_in_pack


def replicate_experts(weight: np.ndarray, num_physical: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Give ``num_physical - n`` extra replicas to the experts with the highest load per replica.

    Args:
        weight: ``[X, n]`` load of each logical expert.
        num_physical: total replicas per row (``>= n``).
    Returns:
        ``phy2log [X, num_physical]`` (slots ``0..n-1`` hold experts ``0..n-1``, extras follow),
        ``rank [X, num_physical]`` (replica index of each slot within its expert), ``count [X, n]``.
    """
    weight = np.asarray(weight, dtype=np.float64)
    rows, n = weight.shape
    assert num_physical >= n, "need at least one replica per expert"
    phy2log = np.empty((rows, num_physical), dtype=np.int64)
    phy2log[:, :n] = np.arange(n)
    rank = np.zeros((rows, num_physical), dtype=np.int64)
    count = np.ones((rows, n), dtype=np.int64)
    r = np.arange(rows)
    for slot in range(n, num_physical):
        best = np.argmax(weight / count, axis=1)  # first maximum: lowest id on ties
        phy2log[:, slot] = best
        rank[:, slot] = count[r, best]
        count[r, best] += 1
    return phy2log, rank, count


def _inverse(perm: np.ndarray) -> np.ndarray:
    """Row-wise inverse of permutations ``[X, n]``."""
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.broadcast_to(np.arange(perm.shape[1]), perm.shape), axis=1)
    return inv


def rebalance_hierarchical(
    weight: np.ndarray, num_physical: int, num_groups: int, num_nodes: int, num_gpus: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Groups to nodes, replicas within nodes, replicas to GPUs.

    Args:
        weight: ``[L, E]`` load per logical expert.
        num_physical: ``P`` slots in all (a multiple of ``num_gpus``).
        num_groups: ``J`` expert groups (contiguous id ranges of ``E/J`` experts); ``J % N == 0``.
    Returns:
        ``phy2log [L, P]``, ``phy_rank [L, P]`` (replica index of each slot), ``logcnt [L, E]``.
    """
    weight = np.asarray(weight, dtype=np.float64)
    num_layers, num_logical = weight.shape
    assert num_logical % num_groups == 0 and num_groups % num_nodes == 0
    assert num_gpus % num_nodes == 0 and num_physical % num_gpus == 0
    group_size = num_logical // num_groups
    groups_per_node = num_groups // num_nodes
    per_gpu = num_physical // num_gpus
    per_node_log = num_logical // num_nodes

    # 1. groups -> nodes; "mlog" numbers experts node by node (node-major, groups in packing order)
    group_load = weight.reshape(num_layers, num_groups, group_size).sum(-1)
    g_pack, g_rank = balanced_packing(group_load, num_nodes)
    log2mlog = (((g_pack * groups_per_node + g_rank) * group_size)[:, :, None] + np.arange(group_size)).reshape(
        num_layers, num_logical
    )
    mlog2log = _inverse(log2mlog)

    # 2. replicas within each node: rows are (layer, node)
    mlog_load = np.take_along_axis(weight, mlog2log, axis=1).reshape(-1, per_node_log)
    phy2mlog, phy_rank, mlogcnt = replicate_experts(mlog_load, num_physical // num_nodes)

    # 3. the node's replicas -> its GPUs, by load per replica
    phy_load = np.take_along_axis(mlog_load / mlogcnt, phy2mlog, axis=1)
    pack, rank = balanced_packing(phy_load, num_gpus // num_nodes)
    phy2pphy = pack * per_gpu + rank
    pphy2phy = _inverse(phy2pphy)
    pphy2mlog = np.take_along_axis(phy2mlog, pphy2phy, axis=1)
    node_off = np.arange(0, num_logical, per_node_log)
    pphy2mlog = (pphy2mlog.reshape(num_layers, num_nodes, -1) + node_off[None, :, None]).reshape(num_layers, -1)
    pphy2log = np.take_along_axis(mlog2log, pphy2mlog, axis=1)
    pphy_rank = np.take_along_axis(phy_rank, pphy2phy, axis=1).reshape(num_layers, -1)
    logcnt = np.take_along_axis(mlogcnt.reshape(num_layers, -1), log2mlog, axis=1)
    return pphy2log, pphy_rank, logcnt


def rebalance_experts(
    weight: np.ndarray,
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
    hierarchical: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EPLB's entry point: ``phy2log [L, P]``, ``log2phy [L, E, P - E + 1]`` (-1 padded), ``logcnt [L, E]``.

    ``hierarchical=None`` picks as EPLB does: hierarchical when ``num_groups % num_nodes == 0``, global
    otherwise. ``hierarchical=False`` forces the global policy.
    """
    weight = np.asarray(weight, dtype=np.float64)
    if weight.ndim == 1:
        weight = weight[None, :]
    num_layers, num_logical = weight.shape
    if hierarchical is None:
        hierarchical = num_groups % num_nodes == 0
    if hierarchical:
        phy2log, phy_rank, logcnt = rebalance_hierarchical(weight, num_replicas, num_groups, num_nodes, num_gpus)
    else:
        phy2log, phy_rank, logcnt = rebalance_hierarchical(weight, num_replicas, 1, 1, num_gpus)
    max_cnt = num_replicas - num_logical + 1
    log2phy = np.full((num_layers, num_logical * max_cnt), -1, dtype=np.int64)
    np.put_along_axis(
        log2phy,
        phy2log * max_cnt + phy_rank,
        np.broadcast_to(np.arange(num_replicas), (num_layers, num_replicas)),
        axis=1,
    )
    return phy2log, log2phy.reshape(num_layers, num_logical, max_cnt), logcnt


def eplb_placement(
    counts: np.ndarray,
    num_gpus: int,
    redundant_experts: int,
    num_groups: int = 1,
    num_nodes: int = 1,
    hierarchical: bool | None = None,
) -> Placement:
    """A :class:`Placement` from EPLB over ``counts [L, E]`` with ``E + redundant_experts`` slots.

    Falls back to the global policy when the hierarchical one's divisibility conditions do not hold (groups
    not a multiple of nodes, or experts not a multiple of groups). Shares are even: SGLang and vLLM send a
    replicated expert's tokens to its replicas in equal parts.
    """
    from moesim.placement import slots_per_gpu

    counts = np.asarray(counts, dtype=np.float64)
    num_experts = counts.shape[1]
    slots_per_gpu(num_experts, redundant_experts, num_gpus, origin="eplb")
    num_groups = max(1, int(num_groups))
    num_nodes = max(1, int(num_nodes))
    can_hier = (
        num_experts % num_groups == 0
        and num_groups % num_nodes == 0
        and num_gpus % num_nodes == 0
        and (num_experts + redundant_experts) % num_nodes == 0
    )
    use_hier = can_hier if hierarchical is None else (hierarchical and can_hier)
    phy2log, _, _ = rebalance_experts(
        counts, num_experts + redundant_experts, num_groups, num_nodes, num_gpus, hierarchical=use_hier
    )
    method = "eplb-hierarchical" if use_hier and num_nodes > 1 else "eplb-global"
    return Placement(
        num_gpus=num_gpus,
        slots_per_gpu=(num_experts + redundant_experts) // num_gpus,
        num_experts=num_experts,
        phy2log=phy2log,
        shares=even_shares(phy2log, num_experts),
        meta={"method": method},
    )

"""Packing replicas into bins without a solver: LPT (:func:`greedy_bins`) and a swap search (:func:`improve_bins`);
the per-node GPU subproblem (:func:`node_gpu_sub`); and a layer's slot rows from a bin solution.

Dimension legend: n items (logical experts), B bins (GPUs), E experts, S slots per GPU, P = G*S slots.
"""

from __future__ import annotations

import numpy as np

from tuner.ilp.model import Subproblem


def greedy_bins(
    w: np.ndarray, counts: np.ndarray, slots: np.ndarray, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """LPT packing of replicas (``counts[e]`` of weight ``w[e]/counts[e]``) into bins with ``slots``, at most one
    replica of an expert per bin. Returns ``(y [n, B], x [n, B])`` or None if it gets stuck."""
    n, B = len(w), len(slots)
    y = np.zeros((n, B))
    load = np.zeros(B)
    free = np.asarray(slots, dtype=np.int64).copy()
    reps = [(w[e] / counts[e], e) for e in range(n) for _ in range(int(counts[e]))]
    reps.sort(key=lambda t: (-t[0], t[1]))
    for wr, e in reps:
        ok = (free > 0) & (y[e] == 0)
        if allowed is not None:
            ok &= allowed[e]
        if not ok.any():  # more replicas than bins: a second replica on one GPU (its share doubles)
            ok = free > 0
            if allowed is not None:
                ok &= allowed[e]
        if not ok.any():
            return None
        b = int(np.argmin(np.where(ok, load, np.inf)))
        y[e, b] += 1
        load[b] += wr
        free[b] -= 1
    x = y / np.maximum(y.sum(axis=1, keepdims=True), 1)
    return y, x


def improve_bins(
    w: np.ndarray, counts: np.ndarray, y: np.ndarray, max_rounds: int = 2000
) -> tuple[np.ndarray, np.ndarray]:
    """Even out a packing ``y [n, B]`` (replicas of weight ``w[e] / counts[e]``) by swapping two replicas in
    different bins: first the swap that most lowers the sum of squared bin loads (a swap of weights ``a`` in bin
    i and ``b`` in bin j changes it by ``2d (load_i - load_j) + 2d^2``, ``d = b - a``), until none does; then
    swaps out of the busiest bin that lower it. On the shipped OLMoE traces (EPLB's node sets on 2 x 8 GPUs: 40
    replicas into 8 bins of 5, every layer and node) LPT leaves the busiest bin 0.3-4.9% above the mean, this
    search 0.03-2.3%. A swap never puts two replicas of an expert in one bin unless ``counts[e]`` exceeds the bins.
    Returns ``(y, x)`` as :func:`greedy_bins`."""
    y = np.array(y, dtype=np.float64, copy=True)
    n, B = y.shape
    wr = np.asarray(w, dtype=np.float64) / np.asarray(counts, dtype=np.float64)  # [n] weight of one replica
    per_bin = np.maximum(1, -(-np.asarray(counts, dtype=np.int64) // B))  # [n] replicas of e one bin may hold
    scale = max(float(wr.max()), 1e-12) ** 2
    for phase in ("squares", "max"):
        for _ in range(max_rounds):
            load = wr @ y
            r_item, r_bin = np.nonzero(y > 0.5)  # one entry per (expert, bin) held; swaps move one replica
            d = wr[r_item][None, :] - wr[r_item][:, None]  # [r, q]: weight in minus weight out for r's bin
            li, lq = load[r_bin][:, None], load[r_bin][None, :]
            ok = (r_bin[:, None] != r_bin[None, :]) & (r_item[:, None] != r_item[None, :])
            ok &= y[r_item[:, None], r_bin[None, :]] + 1 <= per_bin[r_item][:, None]  # r's expert into q's bin
            ok &= y[r_item[None, :], r_bin[:, None]] + 1 <= per_bin[r_item][None, :]  # q's expert into r's bin
            if phase == "squares":
                delta = np.where(ok, 2 * d * (li - lq) + 2 * d * d, np.inf)
                j = int(np.argmin(delta))
                if delta.flat[j] >= -1e-9 * scale:
                    break
            else:
                top = int(np.argmax(load))
                worse = np.where(ok & (r_bin[:, None] == top), np.maximum(li + d, lq - d), np.inf)
                j = int(np.argmin(worse))
                if not worse.flat[j] < load[top] * (1 - 1e-12):
                    break
            r, q = divmod(j, len(r_item))
            e, f, bi, bq = r_item[r], r_item[q], r_bin[r], r_bin[q]
            y[e, bi] -= 1
            y[e, bq] += 1
            y[f, bq] -= 1
            y[f, bi] += 1
    return y, y / np.maximum(y.sum(axis=1, keepdims=True), 1)


# --------------------------------------------------------------------------------------------- driver
def layer_rows(
    y: np.ndarray, x: np.ndarray, share_scale: np.ndarray, experts: np.ndarray, slots: int
) -> list[list[tuple[int, float]]]:
    """Per GPU (bin) the slot list ``[(expert, share)]`` from a GPU-level solution."""
    out = []
    for b in range(y.shape[1]):
        items = []
        for i in np.nonzero(y[:, b] > 0.5)[0]:
            reps = round(y[i, b])  # even split may put two replicas of an expert on one GPU
            items += [(int(experts[i]), float(x[i, b] * share_scale[i]) / reps)] * reps
        items.sort()
        if len(items) != slots:
            return []
        out.append(items)
    return out


def rows_to_arrays(rows: list[list[tuple[int, float]]], num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """A layer's ``phy2log [P]`` and ``shares [P]`` from per-GPU slot lists, each expert's shares rescaled to sum
    to 1."""
    phy = np.array([e for gpu in rows for e, _ in gpu], dtype=np.int64)
    sh = np.array([s for gpu in rows for _, s in gpu], dtype=np.float64)
    return phy, sh / np.bincount(phy, weights=sh, minlength=num_experts)[phy]


def row_max_load(w: np.ndarray, phy: np.ndarray, sh: np.ndarray, slots: int) -> float:
    """Busiest GPU's tokens in one layer: ``w [E]`` tokens per expert, ``phy``/``sh [P]`` the layer's row."""
    return float((w[phy] * sh).reshape(-1, slots).sum(axis=1).max())


def node_gpu_sub(
    iw: np.ndarray,
    k_items: np.ndarray,
    gpn: int,
    S: int,
    per_bin: int,
    even: bool,
    c_tok: float,
    *,
    benefit: np.ndarray | None = None,
    ycost: np.ndarray | None = None,
    const: float = 0.0,
    load_cap: float | None = None,
    net_w: np.ndarray | None = None,
    net_group: np.ndarray | None = None,
    c_net: float = 0.0,
    out_const: float = 0.0,
) -> Subproblem:
    """One node's replicas onto its ``gpn`` GPUs of ``S`` slots: items ``iw [n]`` (the node's tokens of each of its
    experts) with ``k_items [n]`` replicas there, at most ``ceil(k / gpn)`` of one expert on a GPU. The warm start
    is LPT (:func:`greedy_bins`) when it keeps to those bounds. ``net_w [n]``: network inbound per unit of an
    item, priced at ``c_net`` on the busiest of the GPU groups ``net_group [gpn]`` (the node's NICs), which also
    carries at least ``out_const`` (what the node sends away)."""
    n = len(iw)
    ub = -(-k_items // gpn)
    g = greedy_bins(iw, k_items, np.full(gpn, S))
    warm = g if g is not None and np.all(g[0] <= np.minimum(per_bin, ub)[:, None]) else None
    return Subproblem(
        w=iw,
        slots=np.full(gpn, S),
        max_per_bin=per_bin,
        counts=k_items if even else None,
        ub=ub,
        benefit=np.zeros((n, gpn)) if benefit is None else benefit,
        ycost=np.zeros((n, gpn)) if ycost is None else ycost,
        c_tok=c_tok,
        const=const,
        blocks=[np.arange(gpn)],
        allowed=np.ones((n, gpn), bool),
        load_cap=load_cap,
        warm=warm,
        net_w=net_w,
        net_group=net_group,
        c_net=c_net,
        out_const=out_const,
    )

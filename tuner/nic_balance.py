"""Balance the busiest GPU and the busiest NIC together, by slot swaps that change no replica's share.

Dimension legend: E logical experts, G GPUs, N nodes, gpn GPUs per node, K = G / gpnic NICs, S slots per GPU,
P = G*S slots.

Why. Under a nearest-replica rule the objective of one layer is (``tuner.ilp.predicted_terms``)::

    cost = c_tok * max_g load(g) + c_nic * max_k max(in(k), gpnic * out(node k))          # us

The load passes (``tuner.engine_refine``) balance ``load`` alone. A GPU holding experts that every node also
holds receives no network traffic, one holding single-replica experts receives ``(N - 1) / N`` of their tokens
over its NIC, so load-balanced GPUs can differ by half in NIC inbound, and the NIC term (``c_nic`` is several
times ``c_tok``) is then most of the objective.

Which swaps. A slot of expert a on node n swaps with a slot of expert b on node m when a has no other replica on
n and none on m, and b none on m besides this one and none on n (n = m: a and b each alone on that node). Then
every expert keeps its replica count and its number of nodes, and each replica stays alone on its node, so
SGLang's share of every slot (``tuner.engine_refine.sglang_shares_row``) and its inbound
``w = c_e (N - n_e) / N / r_e`` (``tuner.ilp.nic_inbound``) move with the slot unchanged. Only the two GPUs'
loads and inbounds change, and, across nodes, the outbound of the two nodes: a rank sends an expert's tokens
away when its node holds no replica, so ``out(n) += (c_a - c_b) / G`` and ``out(m) -= (c_a - c_b) / G``.

How. Steepest descent: each step prices, in one vectorised pass, every allowed swap of a slot of the hot GPUs
(the busiest GPU, the busiest NIC's GPUs, and the busiest sender node's GPUs when its outbound binds) with every
other slot, and takes the one that most lowers ``(cost, sum of squared loads and weighted inbounds)``; it stops
when none does, after ``max_swaps``, or at the deadline. Then, while time is left, an iterated local search: a
kick of :data:`KICK_SWAPS` random within-node swaps (experts each alone on their node, which keep every share)
and a new descent, kept when it ends lower.

With ``keep_draw`` only swaps that leave SGLang's static draw (``moesim.engine_dispatch.sglang_static_map``) as
it was are made, so the realised shares given as ``shares`` stay exact: across nodes only experts with one
replica move (a lone replica is every rank's nearest: it consumes no random number,
``tuner.engine_refine.settle_static``); within a node any two experts each alone on it. Such a swap keeps which
experts every node lacks and every candidate list's length, so each node's random stream is consumed as before,
and it keeps each expert's slots in the same order (its other replicas are on other nodes, outside the node's
slot range), so each drawn position names the moved slot.

A load cap (the plan's callers pass the best EPLB's busiest GPU, layer by layer) adds :data:`CAP_PENALTY` per
assignment above it, so the NIC is never bought with load beyond the cap.
"""

from __future__ import annotations

import time

import numpy as np

from moesim.placement import Placement, even_shares

__all__ = ["CAP_PENALTY", "KICK_SWAPS", "balance", "balance_cost", "balance_row", "row_cost"]

# cost per assignment of the busiest GPU above the caller's load cap, in c_tok: large enough that no NIC gain buys
# load above the cap (the plan promises a busiest GPU no worse than EPLB's, layer by layer)
CAP_PENALTY = 1e3
# random swaps per kick of balance_row's iterated local search: enough to leave the descent's local optimum, few
# enough that the next descent starts near it. A tuning choice: on DeepSeek-V3 dirichlet 0.5 (64 GPUs, 30 s)
# 4 swaps per kick took the objective's gap to the bound from 3.7% to 1.7%
KICK_SWAPS = 4


def _nic_terms(phy: np.ndarray, counts: np.ndarray, num_gpus: int, gpn: int) -> tuple[np.ndarray, np.ndarray]:
    """``(w [P], out [N])``: each slot's inbound from other nodes, each node's per-GPU outbound (module docstring)."""
    E = counts.shape[0]
    P = phy.shape[0]
    N = num_gpus // gpn
    node = np.arange(P) // (P // num_gpus) // gpn
    cnt = np.zeros((E, N))
    np.add.at(cnt, (phy, node), 1.0)
    r = cnt.sum(axis=1)
    n_e = (cnt > 0).sum(axis=1)
    w = (counts * (N - n_e) / N / np.maximum(r, 1.0))[phy]
    local = counts @ (cnt > 0)  # [N] tokens of experts each node holds
    return w, (counts.sum() - local) / num_gpus


def _max_excluding(a: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """``max(a)`` over the entries other than ``i`` and ``j`` (arrays of indices), from ``a``'s top three."""
    top = np.argsort(-a)[:3]
    out = np.full(np.shape(i), -np.inf)
    for t in top[::-1]:  # the first top entry that is neither i nor j wins
        out = np.where((t != i) & (t != j), a[t], out)
    return out


def _node_max_excluding(a: np.ndarray) -> np.ndarray:
    """``[N, k]``: for each entry, the largest other entry of its row (``-inf`` when alone)."""
    if a.shape[1] == 1:
        return np.full(a.shape, -np.inf)
    order = np.sort(a, axis=1)
    first, second = order[:, -1:], order[:, -2:-1]
    return np.where(a >= first, second, first)


def row_cost(
    load: np.ndarray, inbound: np.ndarray, out: np.ndarray, gpnic: int, ratio: float, load_cap: float = np.inf
) -> float:
    """One layer's cost in units of ``c_tok``: ``max load + ratio * max_k max(in_k, gpnic * out(node k))``, with
    ``ratio = c_nic / c_tok``, plus :data:`CAP_PENALTY` per assignment of the busiest GPU above ``load_cap``;
    load ``[G]``, inbound ``[K]``, out ``[N]`` (per GPU)."""
    k_per_node = inbound.shape[0] // out.shape[0]
    x = np.maximum(inbound, gpnic * np.repeat(out, k_per_node))
    m = float(load.max())
    return m + ratio * float(x.max()) + CAP_PENALTY * max(0.0, m - load_cap)


def balance_row(
    phy2log: np.ndarray,
    counts: np.ndarray,
    shares: np.ndarray,
    num_gpus: int,
    gpus_per_node: int,
    ratio: float,
    gpus_per_nic: int = 1,
    keep_draw: bool = False,
    max_swaps: int = 400,
    deadline: float | None = None,
    load_cap: float = np.inf,
    kicks: int | None = 0,
    seed: int = 0,
) -> tuple[np.ndarray, int]:
    """One layer's ``phy2log [P]`` balanced (module docstring), and the swaps made. ``shares [P]``: each slot's
    share of its expert's tokens (they move with the slot); ``ratio = c_nic / c_tok``; ``load_cap``: the busiest
    GPU's load above it is priced at :data:`CAP_PENALTY` (a swap never lifts it over the cap, and one that
    brings it down to the cap wins first).

    ``kicks``: after the descent, up to that many rounds (None: no limit but ``deadline``) of :data:`KICK_SWAPS` random
    within-node swaps of experts each alone on their node (allowed under ``keep_draw`` too) followed by a new
    descent, each kept only if it ends lower (an iterated local search; ``seed`` fixes the kicks)."""
    if kicks is None and deadline is None:
        raise ValueError("balance_row: kicks=None needs a deadline")
    phy = np.asarray(phy2log, dtype=np.int64).copy()
    sh = np.asarray(shares, dtype=np.float64).copy()
    c = np.asarray(counts, dtype=np.float64)
    args = (
        c,
        int(num_gpus),
        int(gpus_per_node),
        float(ratio),
        int(gpus_per_nic),
        keep_draw,
        max_swaps,
        deadline,
        load_cap,
    )
    phy, sh, best, swaps = _descend(phy, sh, *args)
    rng = np.random.default_rng(seed)
    P, G, gpn = phy.shape[0], int(num_gpus), int(gpus_per_node)
    spg, N = P // G, G // gpn
    done = 0
    while kicks is None or done < kicks:
        if deadline is not None and time.perf_counter() >= deadline:
            break
        done += 1
        q, qs = phy.copy(), sh.copy()
        kicked = 0
        for n in rng.integers(0, N, size=KICK_SWAPS):
            slots = np.arange(n * gpn * spg, (n + 1) * gpn * spg)
            alone = slots[np.bincount(q[slots], minlength=c.shape[0])[q[slots]] == 1]
            if alone.size < 2:
                continue
            a, b = rng.choice(alone, 2, replace=False)
            if a // spg != b // spg:  # two GPUs of the node: the node's experts and each expert's order unchanged
                q[[a, b]], qs[[a, b]] = q[[b, a]], qs[[b, a]]
                kicked += 1
        if not kicked:
            break
        q, qs, val, m = _descend(q, qs, *args)
        if val < best:
            phy, sh, best, swaps = q, qs, val, swaps + kicked + m
    return phy, swaps


def _descend(
    phy: np.ndarray,
    sh: np.ndarray,
    c: np.ndarray,
    G: int,
    gpn: int,
    ratio: float,
    gpnic: int,
    keep_draw: bool,
    max_swaps: int,
    deadline: float | None,
    load_cap: float,
) -> tuple[np.ndarray, np.ndarray, tuple[float, float], int]:
    """The steepest descent of :func:`balance_row` from ``phy`` (changed in place, with its slot shares ``sh``):
    ``(phy, sh, (cost, sum of squares), swaps)``."""
    E, P = c.shape[0], phy.shape[0]
    N, spg = G // gpn, P // G
    K = G // gpnic
    slot_gpu = np.arange(P) // spg
    slot_node = slot_gpu // gpn
    slot_nic = slot_gpu // gpnic
    v = c[phy] * sh  # [P] load of each slot, moves with it
    w, out = _nic_terms(phy, c, G, gpn)
    load = np.bincount(slot_gpu, weights=v, minlength=G)
    inb = np.bincount(slot_nic, weights=w, minlength=K)
    cnt = np.zeros((E, N), dtype=np.int64)
    np.add.at(cnt, (phy, slot_node), 1)
    lone = np.bincount(phy, minlength=E) == 1  # [E]
    k_node = K // N  # NICs per node
    nic_node = np.arange(K) // k_node

    def score(ld: np.ndarray, ib: np.ndarray, ot: np.ndarray) -> tuple[float, float]:
        return row_cost(ld, ib, ot, gpnic, ratio, load_cap), float((ld**2).sum() + ratio**2 * (ib**2).sum())

    best = score(load, inb, out)
    swaps = 0
    while swaps < max_swaps and (deadline is None or time.perf_counter() < deadline):
        x = np.maximum(inb, gpnic * out[nic_node])  # [K]
        node_x = x.reshape(N, k_node).max(axis=1)  # [N]
        excl_in = _node_max_excluding(inb.reshape(N, k_node)).ravel()  # [K] the node's other NICs' inbound
        hot = {int(np.argmax(load))}
        k_hot = int(np.argmax(x))
        hot.update(range(k_hot * gpnic, (k_hot + 1) * gpnic))
        if gpnic * out[nic_node[k_hot]] >= inb[k_hot]:  # the node's sending binds: any of its GPUs may give
            n_hot = int(nic_node[k_hot])
            hot.update(range(n_hot * gpn, (n_hot + 1) * gpn))
        ps = np.flatnonzero(np.isin(slot_gpu, sorted(hot)))  # [A]
        a, b = phy[ps][:, None], phy[None, :]  # [A, 1], [1, P]
        npn, nqn = slot_node[ps][:, None], slot_node[None, :]
        same = npn == nqn
        ok = (a != b) & (slot_gpu[ps][:, None] != slot_gpu[None, :])
        ok &= (cnt[a, npn] == 1) & (cnt[b, nqn] == 1)  # each alone on its node
        ok &= same | ((cnt[a, nqn] == 0) & (cnt[b, npn] == 0))  # and absent from the other's
        if keep_draw:  # module docstring: lone experts, or both alone on one node
            ok &= (lone[a] & lone[b]) | same
        ia, ib_ = np.nonzero(ok)
        if ia.size == 0:
            break
        p, q = ps[ia], ib_
        dv = v[q] - v[p]  # the hot slot's GPU gains dv, the partner's loses it
        dw = w[q] - w[p]
        cross = ~same[ia, ib_]
        dc = np.where(cross, (c[phy[p]] - c[phy[q]]) / G, 0.0)  # out(node p) += dc, out(node q) -= dc
        gp, gq = slot_gpu[p], slot_gpu[q]
        kp, kq = slot_nic[p], slot_nic[q]
        np_, nq = slot_node[p], slot_node[q]
        # the busiest GPU: the two changed ones, or the largest of the rest (top three by load)
        lp, lq = load[gp] + dv, load[gq] - dv
        max_load = np.maximum(np.maximum(lp, lq), _max_excluding(load, gp, gq))
        # the busiest NIC. Its own node's NIC k changes as max(in, gpnic * out), in at kp / kq only
        one = kp == kq
        ip = inb[kp] + np.where(one, 0.0, dw)
        iq = inb[kq] - np.where(one, 0.0, dw)
        op, oq = gpnic * (out[np_] + dc), gpnic * (out[nq] - dc)
        # same node: the rest of the NICs keep their value (top three over NICs); across nodes: the two nodes'
        # other NICs take the new outbound, and the other nodes keep theirs (top three over nodes)
        x_same = np.maximum(np.maximum(np.maximum(ip, op), np.maximum(iq, oq)), _max_excluding(x, kp, kq))
        x_cross = np.maximum.reduce([ip, iq, op, oq, excl_in[kp], excl_in[kq], _max_excluding(node_x, np_, nq)])
        max_x = np.where(cross, x_cross, x_same)
        cost = max_load + ratio * max_x + CAP_PENALTY * np.maximum(0.0, max_load - load_cap)
        ss = best[1] + 2 * dv * (load[gp] - load[gq]) + 2 * dv**2
        ss = ss + np.where(one, 0.0, ratio**2 * (2 * dw * (inb[kp] - inb[kq]) + 2 * dw**2))
        tol = 1e-12 * max(1.0, best[0])
        better = (cost < best[0] - tol) | ((cost <= best[0] + tol) & (ss < best[1] * (1 - 1e-12)))
        if not better.any():
            break
        cand = np.flatnonzero(better)
        j = cand[np.lexsort((ss[cand], cost[cand]))[0]]
        pj, qj = int(p[j]), int(q[j])
        ea, eb = int(phy[pj]), int(phy[qj])
        cnt[ea, slot_node[pj]] -= 1
        cnt[eb, slot_node[qj]] -= 1
        cnt[ea, slot_node[qj]] += 1
        cnt[eb, slot_node[pj]] += 1
        phy[pj], phy[qj] = eb, ea
        v[pj], v[qj] = v[qj], v[pj]
        sh[pj], sh[qj] = sh[qj], sh[pj]
        w[pj], w[qj] = w[qj], w[pj]
        load[slot_gpu[pj]] += dv[j]
        load[slot_gpu[qj]] -= dv[j]
        inb[slot_nic[pj]] += dw[j]
        inb[slot_nic[qj]] -= dw[j]
        out[slot_node[pj]] += dc[j]
        out[slot_node[qj]] -= dc[j]
        best = score(load, inb, out)  # recomputed: no drift
        swaps += 1
    return phy, sh, best, swaps


def balance(
    placement: Placement,
    counts: np.ndarray,
    gpus_per_node: int,
    ratio: float,
    gpus_per_nic: int = 1,
    shares: np.ndarray | None = None,
    keep_draw: bool = False,
    time_limit_s: float = 5.0,
    max_swaps: int = 400,
    load_caps: np.ndarray | None = None,
    kicks: int | None = 0,
) -> tuple[Placement, int]:
    """``placement`` with every layer balanced (module docstring), and the swaps made; the time limit is shared
    evenly over the layers. ``shares [L, P]``: the slots' shares (default: SGLang's expectation,
    ``tuner.engine_refine.sglang_shares_row``); ``load_caps [L]``: each layer's cap on the busiest GPU's load
    (:func:`balance_row`); ``kicks``: perturbation rounds per layer after its descent (:func:`balance_row`,
    seeded by the layer's row), within the layer's share of the time."""
    from tuner.engine_refine import sglang_shares_row

    counts = np.asarray(counts, dtype=np.float64)
    G, E = placement.num_gpus, placement.num_experts
    gpn = min(int(gpus_per_node), G)
    if G // gpn < 2 or ratio <= 0:
        return placement, 0
    rows, total = [], 0
    start = time.perf_counter()
    L = placement.num_layers
    for layer in range(L):
        phy = placement.phy2log[layer]
        sh = sglang_shares_row(phy, E, G, gpn) if shares is None else shares[layer]
        deadline = start + time_limit_s * (layer + 1) / L
        cap = np.inf if load_caps is None else float(load_caps[layer])
        row, n = balance_row(
            phy, counts[layer], sh, G, gpn, ratio, gpus_per_nic, keep_draw, max_swaps, deadline, cap, kicks, layer
        )
        rows.append(row)
        total += n
    phy = np.stack(rows)
    out = Placement(G, placement.slots_per_gpu, E, phy, even_shares(phy, E), dict(placement.meta or {}))
    return out, total


def balance_cost(
    placement: Placement,
    counts: np.ndarray,
    gpus_per_node: int,
    ratio: float,
    gpus_per_nic: int = 1,
    load_caps: np.ndarray | None = None,
) -> float:
    """What :func:`balance` lowers, summed over layers (units of ``c_tok``): :func:`row_cost` of each layer under
    SGLang's expected shares (``tuner.engine_refine.sglang_shares_row``), with the layer's load cap."""
    from tuner.engine_refine import sglang_shares_row

    counts = np.asarray(counts, dtype=np.float64)
    G, E, S = placement.num_gpus, placement.num_experts, placement.slots_per_gpu
    gpn = min(int(gpus_per_node), G)
    slot_gpu = np.arange(G * S) // S
    total = 0.0
    for layer in range(placement.num_layers):
        phy, c = placement.phy2log[layer], counts[layer]
        load = np.bincount(slot_gpu, weights=c[phy] * sglang_shares_row(phy, E, G, gpn), minlength=G)
        w, out = _nic_terms(phy, c, G, gpn)
        inb = np.bincount(slot_gpu // int(gpus_per_nic), weights=w, minlength=G // int(gpus_per_nic))
        cap = np.inf if load_caps is None else float(load_caps[layer])
        total += row_cost(load, inb, out, int(gpus_per_nic), float(ratio), cap)
    return total

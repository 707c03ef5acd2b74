"""The moves a rebalance makes, layer by layer: a greedy search from the deployed map toward a balanced one.

Dimension legend: E logical experts, G GPUs, N nodes, S slots per GPU, P = G*S slots, C candidate moves.

One layer's state is its map ``row [P]``. A *move* loads one expert onto a GPU that did not hold it; two kinds:

- **replace** (1 move): slot p on GPU h gives up expert c (which keeps a replica elsewhere) for expert e (not on
  h yet): c loses a replica, e gains one;
- **swap** (2 moves): slots p (GPU h, expert a) and q (GPU h', expert b) exchange experts.

Each step takes the candidate with the largest drop of the objective per move, the MILP's per-layer objective
(``tuner.ilp.predicted_terms``, ``dependency="home"``)::

    obj = c_tok * max_g load_g + c_nic * max_nic max(inbound_nic, outbound_nic)

scored by the rule's expected split: *nearest* (SGLang: a rank's own replica, else the lowest-numbered one on
its node, else every replica alike) or *even* (every replica ``1 / r_e``). A replica of expert e on GPU g gets::

    nearest:  share_g = (1 + first_g * (gpn - k_{e,node(g)}) + gpn * (N - n_e) / r_e) / G
    even:     share_g = 1 / r_e

(``first_g``: g holds the node's lowest-numbered replica; ``k``: replicas on the node; ``n_e``: nodes holding
e; ``r_e``: replicas), and ``load_g = sum_e w_e * share_{e,g}``. A move changes two experts' replica sets, so a
candidate's loads are ``load + delta(c) + delta(e)``, priced for every candidate at once. Only candidates that
touch the busiest GPUs (:data:`HOT_GPUS`) can lower the maximum, so those are the ones priced. The choice adds
:data:`SPREAD` times the loads' sum of squares (normalised) so that ties at the maximum still make progress;
the recorded objective is the plain one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from moesim.errors import PlacementError

if TYPE_CHECKING:
    from moesim.specs import ClusterSpec
    from tuner.ilp import CostModel

HOT_GPUS = 1  # candidates touch the busiest GPU by load (and by NIC traffic where it is priced); 3 found no better
SPREAD = 0.01  # weight of the loads' sum of squares in the choice (tie-break, not in the recorded objective)
SWAP_EXACT = 32  # swaps priced exactly per step, the best by the toggles' sum (8: 1.4% higher objective, DSV3)
TOL = 1e-9  # relative: a step, or a curve state, must lower the objective by more than this


@dataclass(frozen=True)
class LayerPrices:
    """One layer's prices: ``c_tok`` us per assignment on the busiest GPU, ``c_nic`` us per assignment on the
    busiest NIC (0: not priced), and the rule (``nearest`` or not)."""

    c_tok: float
    c_nic: float
    nearest: bool
    gpus_per_node: int
    gpus_per_nic: int = 1

    def __post_init__(self) -> None:
        for name in ("c_tok", "c_nic"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise PlacementError(f"rebalance: {name}: must be a finite number >= 0, got {v}")
        for name in ("gpus_per_node", "gpus_per_nic"):
            v = getattr(self, name)
            if v < 1:
                raise PlacementError(f"rebalance: {name}: must be >= 1, got {v}")


def layer_prices(cost: CostModel, cluster: ClusterSpec, engine: str) -> LayerPrices:
    """The search's prices from the MILP's cost model (``tuner.placers.ilp.cost_model``); the busiest NIC priced
    under SGLang's nearest-replica rules on more than one node, as the MILP prices it."""
    G, gpn = int(cluster.num_gpus), int(cluster.gpus_per_node)
    network = engine.startswith("sglang") and G > gpn
    return LayerPrices(
        cost.us_per_token,
        cost.us_per_nic_assignment if network else 0.0,
        nearest=engine.startswith("sglang"),
        gpus_per_node=gpn,
        gpus_per_nic=cost.gpus_per_nic,
    )


def expert_terms(sets: np.ndarray, w: np.ndarray, prices: LayerPrices) -> tuple[np.ndarray, np.ndarray]:
    """``(load [B, G], inbound [B, G])``: each expert's assignments on every GPU, and those arriving from other
    nodes, when expert b (``w[b]`` assignments) is held by the GPUs ``sets[b]`` (bool ``[B, G]``, each set
    non-empty; module docstring)."""
    B, G = sets.shape
    gpn = prices.gpus_per_node
    N = G // gpn
    x = sets.astype(np.float64)
    r = x.sum(axis=1)  # [B]
    by_node = x.reshape(B, N, gpn)
    k = by_node.sum(axis=2)  # [B, N]
    n_e = (k > 0).sum(axis=1)  # [B]
    far = (N - n_e) / N / r  # [B]: share of every replica from ranks of nodes holding none
    if prices.nearest:
        first = (by_node > 0) & (np.cumsum(by_node, axis=2) == 1)
        share = (x + (first * (gpn - k)[:, :, None]).reshape(B, G)) / G + x * far[:, None]
    else:
        share = x / r[:, None]
    load = share * w[:, None]
    inbound = x * (w * far)[:, None]
    return load, inbound


class LayerSearch:
    """The greedy search on one layer (module docstring). ``history`` holds ``(moves, objective_us, row)`` after
    every improving step, starting at the deployed row with 0 moves."""

    def __init__(
        self,
        row: np.ndarray,
        w: np.ndarray,
        num_gpus: int,
        prices: LayerPrices,
        search: bool = True,
        held: np.ndarray | None = None,
    ) -> None:
        self.row = np.asarray(row, dtype=np.int64).copy()
        self.w = np.asarray(w, dtype=np.float64)
        self.E = int(self.w.shape[0])
        self.G = int(num_gpus)
        self.P = int(self.row.shape[0])
        self.S = self.P // self.G
        self.prices = prices
        self.gpn = prices.gpus_per_node
        self.N = self.G // self.gpn
        self.gpu = np.arange(self.P) // self.S
        self.network = prices.c_nic > 0 and self.N > 1
        self.done = not search
        self._refresh(() if not search else None)  # a state to price only: no toggle tables
        # moves are counted against the deployed map: this row's own, or ``held [E, G]`` when the search starts
        # elsewhere (a replan pruned by a walk)
        self.start_sets = self.sets.copy() if held is None else np.asarray(held, dtype=bool)
        self.history: list[tuple[int, float, np.ndarray]] = [(self.moves, self.objective, self.row.copy())]

    # ------------------------------------------------------------------ state
    @property
    def moves(self) -> int:
        """Experts now on a GPU that did not hold them at the start (a move undone is no move)."""
        return int((self.sets & ~self.start_sets).sum())

    def _refresh(self, changed: tuple[int, ...] | None = None) -> None:
        """Recompute the state after a move of the experts ``changed`` (all experts when None)."""
        sets = np.zeros((self.E, self.G), dtype=bool)
        sets[self.row, self.gpu] = True
        self.sets = sets
        if changed:  # only the moved experts' terms change
            idx = np.asarray(changed, dtype=np.int64)
            self.load_e[idx], self.in_e[idx] = expert_terms(sets[idx], self.w[idx], self.prices)
        else:
            self.load_e, self.in_e = expert_terms(sets, self.w, self.prices)
        self.load = self.load_e.sum(axis=0)
        self.inbound = self.in_e.sum(axis=0)
        # k[e, n]: e's replicas on node n; outbound per GPU of node n: the assignments its ranks send away
        self.k = sets.reshape(self.E, self.N, self.gpn).sum(axis=2)
        local = (self.w[:, None] * (self.k > 0)).sum(axis=0)  # [N]
        self.out_node = (self.w.sum() - local) / self.G
        self.objective = float(self._objective(self.load[None], self.inbound[None], self.out_node[None])[0])
        # toggle deltas [E, h, G]: load and inbound change when GPU h joins (or leaves) expert e's set; an
        # expert's row changes only when its own set does
        if changed == ():
            self.tog_load = self.tog_in = np.zeros((0, self.G, self.G), dtype=np.float32)
            return
        experts = np.arange(self.E) if changed is None else np.asarray(changed, dtype=np.int64)
        tog = np.repeat(sets[experts], self.G, axis=0).reshape(experts.size, self.G, self.G)
        tog ^= np.eye(self.G, dtype=bool)[None]
        flat = tog.reshape(-1, self.G)
        empty = ~flat.any(axis=1)
        flat[empty] = True  # a set emptied by the toggle: priced as anything, never a candidate
        load, inbound = expert_terms(flat, np.repeat(self.w[experts], self.G), self.prices)
        load = load.reshape(experts.size, self.G, self.G) - self.load_e[experts][:, None, :]
        inbound = inbound.reshape(experts.size, self.G, self.G) - self.in_e[experts][:, None, :]
        # float32: the tables are the search's memory and bandwidth; the chosen move is priced again in float64
        load, inbound = load.astype(np.float32), inbound.astype(np.float32)
        if changed is None:
            self.tog_load, self.tog_in = load, inbound
        else:
            self.tog_load[experts], self.tog_in[experts] = load, inbound

    def release(self) -> None:
        """Drop the toggle tables (``[E, G, G]`` twice) once the search is over; ``history`` stays."""
        self.tog_load = self.tog_in = np.zeros((0, self.G, self.G))
        self.done = True

    def _nic(self, inbound: np.ndarray, out_node: np.ndarray) -> np.ndarray:
        """[C] busiest NIC's assignments in its busier direction: ``max_nic max(in, out)`` is the larger of the
        two maxima, and a node's outbound is the same on each of its NICs."""
        per = self.prices.gpus_per_nic
        C = inbound.shape[0]
        nic_in = inbound.reshape(C, -1, per).sum(axis=2) if per > 1 else inbound
        return np.maximum(nic_in.max(axis=1), out_node.max(axis=1) * per)

    def _objective(self, load: np.ndarray, inbound: np.ndarray, out_node: np.ndarray) -> np.ndarray:
        obj = self.prices.c_tok * load.max(axis=1)
        if self.network:
            obj = obj + self.prices.c_nic * self._nic(inbound, out_node)
        return obj

    def _score(self, obj: np.ndarray, load: np.ndarray) -> np.ndarray:
        total = max(float(self.load.sum()), 1e-30)
        return obj + SPREAD * self.prices.c_tok * (load**2).sum(axis=1) / total

    # ------------------------------------------------------------------ candidates
    def _hot(self) -> np.ndarray:
        hot = set(np.argsort(-self.load)[:HOT_GPUS].tolist())
        if self.network:
            hot |= set(np.argsort(-self.inbound)[:HOT_GPUS].tolist())
        return np.array(sorted(hot), dtype=np.int64)

    def _changed(self, experts: np.ndarray, sets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Load and inbound deltas ``[C, G]`` of giving ``experts [C]`` the replica sets ``sets [C, G]``."""
        load, inbound = expert_terms(sets, self.w[experts], self.prices)
        return load - self.load_e[experts], inbound - self.in_e[experts]

    def _replace_candidates(self, hot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(slots [C], experts [C])`` of the replace moves priced: any slot of a replicated expert taking an
        expert of a hot GPU, and a hot GPU's replicated slots taking any expert."""
        r = self.sets.sum(axis=1)
        spare = np.flatnonzero(r[self.row] >= 2)  # slots whose expert keeps a replica elsewhere
        if spare.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        hot_experts = np.unique(self.row[np.isin(self.gpu, hot)])
        pick = np.zeros((self.P, self.E), dtype=bool)  # [slot, expert]: a candidate once, however found
        pick[np.ix_(spare, hot_experts)] = True
        pick[spare[np.isin(self.gpu[spare], hot)]] = True
        pick &= ~self.sets[:, self.gpu].T  # e not on the slot's GPU yet (so e != the slot's expert)
        p, e = np.nonzero(pick)
        return p, e

    def _price_replace(self, p: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(objective [C], score [C], moves [C])`` after each replace move: c leaves GPU h and e joins it,
        two different experts, so the two toggles are exact."""
        h = self.gpu[p]
        c = self.row[p]
        rows = np.arange(p.size)
        load = self.load[None] + self.tog_load[c, h] + self.tog_load[e, h]
        inbound = self.inbound[None] + self.tog_in[c, h] + self.tog_in[e, h]
        out = np.broadcast_to(self.out_node, (p.size, self.N)).copy()
        n = h // self.gpn
        out[rows, n] += (self.k[c, n] == 1) * self.w[c] / self.G - (self.k[e, n] == 0) * self.w[e] / self.G
        obj = self._objective(load, inbound, out)
        return obj, self._score(obj, load), np.ones(p.size)

    def _swap_candidates(self, hot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(p [C], q [C])``: a hot GPU's slot and a slot of another GPU, each expert new to the other GPU."""
        hp = np.flatnonzero(np.isin(self.gpu, hot))
        # the other slot on a GPU below the median load (taking load off a hot GPU onto a busy one rarely helps)
        cold = np.flatnonzero(self.load[self.gpu] <= np.median(self.load))
        p, q = np.meshgrid(hp, cold, indexing="ij")
        p, q = p.ravel(), q.ravel()
        a, b = self.row[p], self.row[q]
        ok = (self.gpu[p] != self.gpu[q]) & ~self.sets[a, self.gpu[q]] & ~self.sets[b, self.gpu[p]]
        return p[ok], q[ok]

    def _price_swap(self, p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As :meth:`_price_replace` for swaps: each expert's two toggles (leave one GPU, join the other) are
        summed as if independent to rank the candidates, and the best :data:`SWAP_EXACT` are priced exactly;
        the rest score +inf."""
        h, h2 = self.gpu[p], self.gpu[q]
        a, b = self.row[p], self.row[q]
        approx = (
            self.load[None] + self.tog_load[a, h] + self.tog_load[a, h2] + self.tog_load[b, h2] + self.tog_load[b, h]
        )
        rough = self._score(self.prices.c_tok * approx.max(axis=1), approx)
        keep = np.argpartition(rough, SWAP_EXACT)[:SWAP_EXACT] if rough.size > SWAP_EXACT else np.arange(rough.size)
        p, q, h, h2, a, b = p[keep], q[keep], h[keep], h2[keep], a[keep], b[keep]
        rows = np.arange(p.size)
        sa = self.sets[a].copy()
        sa[rows, h] = False
        sa[rows, h2] = True
        sb = self.sets[b].copy()
        sb[rows, h2] = False
        sb[rows, h] = True
        dl_a, di_a = self._changed(a, sa)
        dl_b, di_b = self._changed(b, sb)
        load = self.load[None] + dl_a + dl_b
        inbound = self.inbound[None] + di_a + di_b
        out = np.broadcast_to(self.out_node, (p.size, self.N)).copy()
        n, n2 = h // self.gpn, h2 // self.gpn
        cross = n != n2
        wa, wb = self.w[a] / self.G, self.w[b] / self.G
        out[rows, n] += cross * ((self.k[a, n] == 1) * wa - (self.k[b, n] == 0) * wb)
        out[rows, n2] += cross * ((self.k[b, n2] == 1) * wb - (self.k[a, n2] == 0) * wa)
        obj_k = self._objective(load, inbound, out)
        obj = np.full(rough.shape, np.inf)
        score = np.full(rough.shape, np.inf)
        obj[keep] = obj_k
        score[keep] = self._score(obj_k, load)
        return obj, score, np.full(rough.shape, 2.0)

    # ------------------------------------------------------------------ search
    def step(self) -> bool:
        """Make the best move (per move) if it lowers the choice score; False (and ``done``) otherwise."""
        if self.done:
            return False
        hot = self._hot()
        base = float(self._score(np.array([self.objective]), self.load[None])[0])
        best: tuple[float, str, int, int] | None = None
        rp, re = self._replace_candidates(hot)
        sp, sq = self._swap_candidates(hot)
        for kind, (x, y), pricer in (("replace", (rp, re), self._price_replace), ("swap", (sp, sq), self._price_swap)):
            if x.size == 0:
                continue
            _, score, moves = pricer(x, y)
            gain = (base - score) / moves
            i = int(np.argmax(gain))
            if gain[i] > TOL * max(base, 1e-30) and (best is None or gain[i] > best[0]):
                best = (float(gain[i]), kind, int(x[i]), int(y[i]))
        if best is None:
            self.done = True
            return False
        _, kind, x, y = best
        if kind == "replace":
            changed = (int(self.row[x]), y)
            self.row[x] = y
        else:
            changed = (int(self.row[x]), int(self.row[y]))
            self.row[x], self.row[y] = self.row[y], self.row[x]
        self._refresh(changed)
        if self.objective < min(o for _, o, _ in self.history) - TOL * abs(self.history[-1][1]):
            self.history.append((self.moves, self.objective, self.row.copy()))
        return True

    def walk(
        self, towards: np.ndarray, held: np.ndarray, until: float = math.inf
    ) -> list[tuple[int, float, np.ndarray]]:
        """Slot by slot from this row to ``towards [P]`` (a replan's row, or the deployed one from the replan),
        each step the slot change that leaves the lowest objective among those that keep a valid map (the
        expert leaving keeps a replica, the one arriving is new to that GPU), until none is left. Returns every
        state as ``(moves, objective, row)``, moves counted against ``held [E, G]`` (the deployed map's
        experts per GPU). The walk's states join the layer's options: a replan with its least useful moves
        dropped, or its most useful made first. Stops at ``time.perf_counter() >= until``."""
        out = []
        while time.perf_counter() < until:
            p = np.flatnonzero(self.row != towards)
            if p.size == 0:
                break
            e = towards[p]
            r = self.sets.sum(axis=1)
            ok = (r[self.row[p]] >= 2) & ~self.sets[e, self.gpu[p]]
            if not ok.any():
                break  # only cycles left (each slot waits for another): the replan's own row is an option
            p, e = p[ok], e[ok]
            obj, _, _ = self._price_replace(p, e)
            i = int(np.argmin(obj))
            changed = (int(self.row[p[i]]), int(e[i]))
            self.row[p[i]] = e[i]
            self._refresh(changed)
            out.append((int((self.sets & ~held).sum()), self.objective, self.row.copy()))
        return out


def search_layers(
    deployed: np.ndarray,
    counts: np.ndarray,
    num_gpus: int,
    prices: LayerPrices,
    caps: list[int],
    time_limit_s: float,
    progress: Callable[[int, int, str], None] | None = None,
) -> tuple[list[LayerSearch], int]:
    """The greedy search of every row of ``deployed [L, P]`` under ``counts [L, E]``, each up to ``caps[l]``
    moves, one layer at a time (a search holds ``[E, G, G]`` tables) with an even share of the time left.
    Returns the searches (their ``history``) and how many layers the time cut short."""
    limit = time.perf_counter() + time_limit_s
    searches, cut = [], 0
    L = deployed.shape[0]
    for l in range(L):
        s = LayerSearch(deployed[l], counts[l], num_gpus, prices)
        until = time.perf_counter() + max(0.0, limit - time.perf_counter()) / (L - l)
        while s.moves < caps[l] and time.perf_counter() < until and s.step():
            pass
        cut += not s.done and s.moves < caps[l]
        s.release()
        searches.append(s)
        if progress:
            progress(l + 1, L, "searching moves")
    return searches, cut

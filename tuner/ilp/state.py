"""The state the layer search shares (:class:`SearchState`): the current rows of every layer, the solves so far, the
time left, and what one layer's subproblem needs from its neighbours' rows.

Dimension legend: L layers, E logical experts, G GPUs, N nodes, gpn GPUs per node, S slots per GPU, P = G*S.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from moesim.placement import Placement
from tuner.ilp.objective import CostModel, crossings, held_matrix, nic_traffic, share_matrix
from tuner.ilp.outcome import SubResult
from tuner.ilp.packing import row_max_load

# one layer's subproblem data (SearchState.layer_inputs): cin, tr_mass, warm_a, warm_y, kcounts, ycost
Inputs = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]


class SearchState:
    """One :func:`tuner.ilp.solve_ilp` run: the current rows ``phy``/``sh [L, P]`` (from the warm start), the
    subproblems solved (``subs``; ``last``: the last solve of each layer and stage whose row was kept), and the time
    left; and one layer's data and predicted time given its neighbours' current rows."""

    def __init__(
        self,
        counts: np.ndarray,
        T: np.ndarray | None,
        G: int,
        gpn: int,
        S: int,
        cost: CostModel,
        warm_start: Placement,
        *,
        solver: str,
        time_limit_s: float,
        split: str,
        hierarchical: bool,
        current: Placement | None,
        sweeps: int,
        gap_rel: float,
        threads: int,
        spread: bool,
        progress: Callable[[int, int, str], None] | None,
        t0: float,
    ) -> None:
        self.counts, self.T, self.cost, self.current = counts, T, cost, current
        self.L, self.E = counts.shape
        self.G, self.gpn, self.S, self.N = G, gpn, S, G // gpn
        self.solver, self.gap_rel, self.threads, self.split = solver, gap_rel, threads, split
        self.time_limit_s, self.t0, self.sweeps, self.progress = time_limit_s, t0, sweeps, progress
        self.hierarchical, self.spread = hierarchical, spread
        self.phy = warm_start.phy2log.astype(np.int64).copy()
        self.sh = warm_start.shares.astype(np.float64).copy()
        self.node_of_gpu = np.arange(G) // gpn
        self.total = max(1, sweeps) * self.L * (2 if hierarchical else 1)
        self.done = 0
        self.last: dict[tuple[int, str], SubResult] = {}
        self.subs: list[SubResult] = []
        self.c_tok = cost.us_per_token
        self.held_cur = None
        if current is not None:
            self.held_cur = [held_matrix(current, min(l, current.num_layers - 1)) for l in range(self.L)]
        # busiest GPU of every layer in the warm start: the load cap of every later solve of that layer
        self.warm_max = [row_max_load(counts[l], self.phy[l], self.sh[l], S) for l in range(self.L)]
        # under spread (nearest-replica rules), the busiest NIC's network inbound is priced too
        self.net = spread and self.N > 1 and split == "even" and cost.us_per_nic_assignment > 0
        self.gpnic = max(1, min(int(cost.gpus_per_nic), gpn))
        self.nic_of_gpu = np.arange(G) // self.gpnic

    def budget_left(self) -> float:
        return self.time_limit_s - (time.perf_counter() - self.t0)

    def report(self, text: str) -> None:
        """One subproblem (or stage) done: count it and tell ``progress``."""
        self.done += 1
        if self.progress:
            self.progress(self.done, self.total, text)

    # ---------------------------------------------------------------------------------------- one layer's data
    def layer_cost(self, l: int, prow: np.ndarray, srow: np.ndarray) -> float:
        """t_l with the neighbours' current rows: compute + crossings to both neighbours + moves (+ network)."""
        E, G, S, T, cost = self.E, self.G, self.S, self.T, self.cost
        a = share_matrix(prow, srow, E, G, S)
        t = self.c_tok * float((self.counts[l] @ a).max())
        if self.net:
            t += cost.us_per_nic_assignment * float(nic_traffic(prow, self.counts[l], E, G, self.gpn, self.gpnic).max())
        if T is not None:
            for nb, tr in ((l - 1, T[l - 1].T if l > 0 else None), (l + 1, T[l] if l < self.L - 1 else None)):
                if tr is not None:
                    g_tok, n_tok = crossings(tr, a, share_matrix(self.phy[nb], self.sh[nb], E, G, S), self.N)
                    t += cost.us_per_gpu_token * g_tok + cost.us_per_node_token * n_tok
        if self.held_cur is not None:
            t += cost.us_per_moved_replica * float((1.0 - self.held_cur[l][prow, np.arange(G * S) // S]).sum())
        return t

    def accept(self, l: int, p_new: np.ndarray, s_new: np.ndarray) -> bool:
        """Coordinate descent never makes a layer worse than its current row (e.g. the warm start), neither
        in predicted time nor in its busiest GPU's load."""
        if row_max_load(self.counts[l], p_new, s_new, self.S) > self.warm_max[l] * (1 + 1e-6):
            return False
        if self.layer_cost(l, p_new, s_new) <= self.layer_cost(l, self.phy[l], self.sh[l]) * (1 + 1e-9):
            self.phy[l], self.sh[l] = p_new, s_new
            return True
        return False

    def layer_inputs(self, l: int) -> Inputs:
        """Layer l's subproblem data given the neighbours' current rows: ``cin [E, G]`` (co-location benefit of
        expert e's share on GPU g: transitions from the previous layer's experts on g and into the next layer's
        experts on g), ``tr_mass [E]`` (transitions into and out of each expert; their sum is the objective's
        constant), the current row as ``warm_a``/``warm_y`` ``[E, G]`` (shares, replicas), the replica counts
        (even split) and the move cost ``ycost [E, G]``."""
        E, G, S, T, phy, sh = self.E, self.G, self.S, self.T, self.phy, self.sh
        cin, tr_mass = np.zeros((E, G)), np.zeros(E)
        if T is not None and l > 0:
            cin += T[l - 1].T @ share_matrix(phy[l - 1], sh[l - 1], E, G, S)
            tr_mass += T[l - 1].sum(axis=0)
        if T is not None and l < self.L - 1:
            cin += T[l] @ share_matrix(phy[l + 1], sh[l + 1], E, G, S)
            tr_mass += T[l].sum(axis=1)
        warm_a = share_matrix(phy[l], sh[l], E, G, S)
        warm_y = share_matrix(phy[l], np.ones(G * S), E, G, S)
        kcounts = np.bincount(phy[l], minlength=E) if self.split == "even" else None
        held = self.held_cur
        ycost = np.zeros((E, G)) if held is None else self.cost.us_per_moved_replica * (1.0 - held[l])
        return cin, tr_mass, warm_a, warm_y, kcounts, ycost

    def spread_ub(self, kcounts: np.ndarray | None) -> np.ndarray | None:
        """Replicas an expert may have on one node under ``spread``: 1 while it has at most N."""
        return None if not self.spread or kcounts is None else np.maximum(1, -(-kcounts // self.N))

    def net_weights(self, l: int, kcounts: np.ndarray | None) -> np.ndarray | None:
        """``[E]`` network inbound per unit share of expert e (:func:`nic_inbound` with its replicas spread)."""
        if not self.net or kcounts is None:
            return None
        return self.counts[l] * np.maximum(0, self.N - kcounts) / self.N

    def out_weights(self, l: int, kcounts: np.ndarray | None) -> tuple[np.ndarray | None, float]:
        """``(out_w [E], out_const)``: a NIC sends ``out_const - sum_e out_w[e] y_en`` (:func:`nic_outbound`,
        ``y_en`` e's replicas on its node, one under the spread; an expert with more replicas than nodes counts
        ``1 / ceil(k / N)`` per replica)."""
        if not self.net or kcounts is None:
            return None, 0.0
        scale = self.gpnic / self.G
        return self.counts[l] * scale / np.maximum(1, -(-kcounts // self.N)), float(self.counts[l].sum()) * scale

"""The layer search: coordinate descent over the layers, one MILP per layer (flat) or two stages (hierarchical:
experts to nodes, then each node's experts to its GPUs), from a warm start, within a time limit.

Dimension legend: L layers, E logical experts, G GPUs, N nodes, gpn GPUs per node, S slots per GPU, P = G*S.
The model and the decomposition are the ``tuner.ilp`` package docstring's; :class:`_LayerSearch` holds the state
every step shares (:class:`tuner.ilp.state.SearchState`: the current rows, the solves so far, the time left).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from moesim.errors import SpecError
from moesim.placement import Placement, slots_per_gpu
from tuner.ilp.backends import SOLVERS
from tuner.ilp.model import MIN_SHARE, Subproblem, timed_solve
from tuner.ilp.node_start import CLUSTER_SHARE, cluster_start, placement_objective
from tuner.ilp.objective import CostModel, predicted_terms
from tuner.ilp.outcome import ILPResult, SubResult, gaps_and_status
from tuner.ilp.packing import layer_rows, node_gpu_sub, rows_to_arrays
from tuner.ilp.state import Inputs, SearchState

SPLITS = ("continuous", "even")

# Search and time-budget constants. None of them is measured or taken from a source: they are tuning choices
# (assumptions), kept because with them the benchmark's goals hold (docs/PLACEMENT.md, "Results"); the
# reason for each value is beside it.
FLAT_LIMIT = 4096  # E*G above which a multi-node instance is decomposed hierarchically: OLMoE on 16 GPUs
#                    (64 * 16 = 1024) stays flat, DeepSeek-V3 on 32 GPUs (256 * 32 = 8192) is split
NODE_CANDIDATES = 3  # hierarchical: nodes an expert may move to besides where it is (keeps the node MILP small)
HOT_EXPERT_FACTOR = 2.0  # hierarchical: an expert above this many mean slot loads may go to any node (it will
#                          be replicated, and its replicas should be free to spread)
HIER_NODE_SHARE = 0.15  # hierarchical: share of a layer's time for its one node MILP; the rest for its N GPU MILPs
SWEEP_SHARE = 0.95  # share of (time left / layers left) a layer's solve may use; the rest covers the Python work
MIN_SOLVE_S = 0.2  # no subproblem (nor the node stage) is started with less time left than this


class _LayerSearch(SearchState):
    """The steps (one layer's flat MILP, or its two stages) and the phases (node-clustering start, sweeps, the
    result) of one :func:`solve_ilp` run."""

    def flat_sub(self, l: int, inputs: Inputs) -> Subproblem:
        """Layer l as one MILP over all G GPUs, its busiest GPU capped at the warm start's."""
        cin, tr_mass, warm_a, warm_y, kcounts, ycost = inputs
        E, G, N, gpn, S, cost = self.E, self.G, self.N, self.gpn, self.S, self.cost
        node_ub = self.spread_ub(kcounts)
        out_w, out_c = self.out_weights(l, kcounts)
        # a warm start that breaks the spread is no MIP start
        spread_ok = node_ub is None or N == 1 or not (warm_y.reshape(E, N, gpn).sum(-1) > node_ub[:, None]).any()
        cin_node = cin.reshape(E, N, gpn).sum(-1)
        benefit = cost.us_per_gpu_token * cin + cost.us_per_node_token * cin_node[:, self.node_of_gpu]
        per_bin = S if self.split == "even" else 1
        warm_ok = spread_ok and warm_y.max() <= per_bin
        # EPLB's packing may put two replicas of one expert on a GPU: allow what the warm start has, so that it
        # stays feasible
        ub = None if kcounts is None else np.maximum(-(-kcounts // G), warm_y.max(axis=1).astype(np.int64))
        return Subproblem(
            w=self.counts[l],
            slots=np.full(G, S),
            max_per_bin=per_bin,
            counts=kcounts,
            benefit=benefit,
            ub=ub,
            ycost=ycost,
            c_tok=self.c_tok,
            const=(cost.us_per_gpu_token + cost.us_per_node_token) * float(tr_mass.sum()),
            blocks=[np.arange(G)],
            allowed=np.ones((E, G), bool),
            load_cap=self.warm_max[l] * (1 + 1e-9),
            warm=(warm_y, warm_a) if warm_ok else None,
            group_ub=None if node_ub is None or N == 1 else (self.node_of_gpu, node_ub),
            net_w=self.net_weights(l, kcounts),
            net_group=self.nic_of_gpu,
            c_net=cost.us_per_nic_assignment,
            out_w=out_w,
            out_group=self.node_of_gpu,
            out_const=out_c,
        )

    def flat_step(self, l: int, sub_limit: float, label: str) -> SubResult:
        """One flat MILP for layer l given its neighbours; its solution replaces the row if :meth:`accept`."""
        sub = self.flat_sub(l, self.layer_inputs(l))
        y, x, r = self._solve(sub, l, "flat", self.E * self.G, sub_limit)
        self.report(f"layer {l + 1}/{self.L} {label}: {r.status}, gap {r.gap:.2%}")
        rows = [] if y is None else layer_rows(y, x, np.ones(self.E), np.arange(self.E), self.S)
        if rows:
            self.accept(l, *rows_to_arrays(rows, self.E))
            self.last[(l, "flat")] = r
        return r

    def _solve(
        self, sub: Subproblem, l: int, stage: str, size: int, limit: float
    ) -> tuple[np.ndarray | None, np.ndarray | None, SubResult]:
        return timed_solve(sub, l, stage, size, self.solver, limit, self.gap_rel, self.threads, self.subs)

    # ---------------------------------------------------------------------------------------- hierarchical step
    def node_sub(self, l: int, inputs: Inputs) -> tuple[Subproblem, int]:
        """Stage 1 of layer l: experts (with replica counts and shares) to nodes, and its integer variables.
        Candidate nodes per expert (keeps the MILP small): where the warm start has it, the
        :data:`NODE_CANDIDATES` nodes with the most co-location benefit, and every node for experts hot enough
        to need replicas."""
        cin, tr_mass, warm_a, warm_y, kcounts, _ = inputs
        E, G, N, gpn, S, cost, counts = self.E, self.G, self.N, self.gpn, self.S, self.cost, self.counts
        cin_node = cin.reshape(E, N, gpn).sum(-1)
        warm_yn = warm_y.reshape(E, N, gpn).sum(-1)
        warm_an = warm_a.reshape(E, N, gpn).sum(-1)
        held = self.held_cur
        held_node = None if held is None else np.minimum(1.0, held[l].reshape(E, N, gpn).sum(-1))
        ycost_n = np.zeros((E, N)) if held_node is None else cost.us_per_moved_replica * (1.0 - held_node)
        node_per_bin = gpn * S if self.split == "even" else gpn
        allowed_n = warm_yn > 0
        top = np.argsort(-cin_node, axis=1, kind="stable")[:, :NODE_CANDIDATES]
        allowed_n[np.arange(E)[:, None], top] = True
        allowed_n[counts[l] > HOT_EXPERT_FACTOR * counts[l].sum() / (G * S)] = True
        node_ub = self.spread_ub(kcounts)
        nw = self.net_weights(l, kcounts)
        out_w, out_c = self.out_weights(l, kcounts)
        spread_ok = node_ub is None or not (warm_yn > node_ub[:, None]).any()  # else no MIP start
        sub = Subproblem(
            w=counts[l],
            slots=np.full(N, S * gpn),
            max_per_bin=node_per_bin,
            counts=kcounts,
            ub=node_ub,
            benefit=cost.us_per_node_token * cin_node,
            ycost=ycost_n,
            c_tok=self.c_tok,
            gpu_target=float(counts[l].sum()) / G,
            gpus_per_bin=gpn,
            const=cost.us_per_node_token * float(tr_mass.sum()),
            blocks=[np.arange(N)],
            allowed=allowed_n,
            load_cap=float((counts[l] @ warm_an).max()) * (1 + 1e-9),
            warm=(warm_yn, warm_an) if spread_ok and warm_yn.max() <= node_per_bin else None,
            min_share=0.0,
            # a node's inbound over its gpn / gpnic NICs: the busiest NIC takes at least the mean
            net_w=None if nw is None else nw * self.gpnic / gpn,
            c_net=cost.us_per_nic_assignment,
            out_w=out_w,
            out_const=out_c,
        )
        return sub, int(allowed_n.sum())

    def gpu_sub(self, l: int, n: int, inputs: Inputs, yn: np.ndarray, xn: np.ndarray) -> tuple[Subproblem, np.ndarray]:
        """Stage 2 of layer l on node n: the node's experts (from stage 1's ``yn``/``xn [E, N]``) to its GPUs;
        also returns those experts."""
        cin, tr_mass, _, _, kcounts, ycost = inputs
        gpn, S, cost, even = self.gpn, self.S, self.cost, self.split == "even"
        nw = self.net_weights(l, kcounts)
        out_w, out_c = self.out_weights(l, kcounts)
        experts_n = np.nonzero(yn[:, n] > 0.5)[0]
        gs = np.arange(n * gpn, (n + 1) * gpn)
        xs = xn[experts_n, n]  # [n_items] the node's share of each of its experts
        # what the node's NICs send away is fixed by the node stage: a floor under the busiest NIC
        out_floor = 0.0 if out_w is None else out_c - float(out_w[experts_n] @ yn[experts_n, n])
        sub = node_gpu_sub(
            self.counts[l, experts_n] * xs,
            yn[experts_n, n].astype(np.int64),
            gpn,
            S,
            S if even else 1,
            even,
            self.c_tok,
            benefit=cost.us_per_gpu_token * cin[np.ix_(experts_n, gs)] * xs[:, None],
            ycost=ycost[np.ix_(experts_n, gs)],
            const=cost.us_per_gpu_token * float(tr_mass[experts_n] @ xs),
            net_w=None if nw is None else nw[experts_n] * xs,
            net_group=self.nic_of_gpu[gs] - self.nic_of_gpu[gs[0]],
            c_net=cost.us_per_nic_assignment,
            out_const=out_floor,
        )
        return sub, experts_n

    def hier_step(self, l: int, sub_limit: float, label: str) -> None:
        """Layer l in two stages given its neighbours: experts to nodes (one MILP), then per node its experts to
        its GPUs (one small MILP each); the result replaces the row if :meth:`accept`."""
        inputs = self.layer_inputs(l)
        sub_n, size = self.node_sub(l, inputs)
        yn, xn, rn = self._solve(sub_n, l, "nodes", size, HIER_NODE_SHARE * sub_limit)
        self.report(f"layer {l + 1}/{self.L} {label} nodes: {rn.status}, gap {rn.gap:.2%}")
        if yn is None:
            return
        # a replica the node stage gave (almost) no tokens still occupies a slot: give it MIN_SHARE
        xn = np.where(yn > 0.5, np.maximum(xn, MIN_SHARE * yn), 0.0)
        xn /= xn.sum(axis=1, keepdims=True)
        rows_all: list[list[tuple[int, float]]] = []
        node_results: list[SubResult] = []
        for n in range(self.N):
            sub_g, experts_n = self.gpu_sub(l, n, inputs, yn, xn)
            node_limit = max(0.05, min((1 - HIER_NODE_SHARE) * sub_limit / self.N, self.budget_left() - 0.1))
            yg, xg, rg = self._solve(sub_g, l, f"gpus[{n}]", len(experts_n) * self.gpn, node_limit)
            node_results.append(rg)
            rows = [] if yg is None else layer_rows(yg, xg, xn[experts_n, n], experts_n, self.S)
            if not rows:
                rows_all = []
                break
            rows_all += rows
        worst = max((r.gap for r in node_results), default=float("nan"))
        self.report(f"layer {l + 1}/{self.L} {label} GPUs: worst node gap {worst:.2%}")
        if not rows_all:
            return
        self.accept(l, *rows_to_arrays(rows_all, self.E))
        self.last[(l, "nodes")] = rn
        for n, rg in enumerate(node_results):
            self.last[(l, f"gpus[{n}]")] = rg

    # ---------------------------------------------------------------------------------------- the phases
    def whole(self, phy: np.ndarray, sh: np.ndarray) -> float:
        """The whole plan's predicted time (us) of rows ``phy``/``sh``."""
        return placement_objective(
            phy, sh, self.counts, self.T, self.gpn, self.cost, self.current, self.G, self.S, self.E
        )

    def cluster_phase(self) -> bool:
        """The node-clustering start (:func:`tuner.ilp.node_start.cluster_start`) and the repair of the layers
        it did not pack, adopted only if the whole plan's predicted time is lower; True if adopted."""
        limit = CLUSTER_SHARE * self.time_limit_s
        cand = cluster_start(
            self.counts,
            self.T,
            self.phy,
            self.sh,
            self.G,
            self.gpn,
            self.S,
            self.cost,
            self.warm_max,
            self.solver,
            self.gap_rel,
            self.threads,
            limit,
            self.subs,
            self.whole,
        )
        if cand is None:
            return False
        backup = self.phy.copy(), self.sh.copy(), dict(self.last)
        obj_warm = self.whole(self.phy, self.sh)
        p_c, s_c, packed = cand
        self.phy[:], self.sh[:] = p_c, s_c
        # a layer that did not pack under its cap kept its row: re-solve it given its clustered neighbours
        repair = [l for l in range(self.L) if not packed[l]]
        self.total += len(repair)
        for i, l in enumerate(repair):
            if self.budget_left() < MIN_SOLVE_S:
                break
            self.flat_step(
                l, max(0.1, min(0.5 * self.budget_left(), limit) / (len(repair) - i)), "node-clustering repair"
            )
        if self.whole(self.phy, self.sh) < obj_warm:
            return True
        self.phy[:], self.sh[:] = backup[0], backup[1]
        self.last.clear()
        self.last.update(backup[2])
        return False

    def sweep_all(self) -> None:
        """``sweeps`` passes over the layers, each layer's solve given the time left shared by the layers left
        in its sweep (a later sweep only uses what remains); stops when less than :data:`MIN_SOLVE_S` is left."""
        step = self.hier_step if self.hierarchical else self.flat_step
        for sweep in range(max(1, self.sweeps)):
            for l in range(self.L):
                left = self.budget_left()
                if left < MIN_SOLVE_S:
                    return
                step(l, max(0.1, SWEEP_SHARE * left / (self.L - l)), f"sweep {sweep + 1}")

    def result(self, clustered: bool) -> ILPResult:
        """The plan of the current rows, its predicted objective, and the gaps of the last solves."""
        solved = list(self.last.values())
        meta = {"method": "ilp", "solver": self.solver, "split": self.split, "hierarchical": self.hierarchical}
        placement = Placement(
            num_gpus=self.G, slots_per_gpu=self.S, num_experts=self.E, phy2log=self.phy, shares=self.sh, meta=meta
        )
        placement.validate("ilp")
        terms = predicted_terms(placement, self.counts, self.T, self.gpn, self.cost, self.current, network=self.net)
        gap, max_gap, status = gaps_and_status(solved, self.L, clustered)
        return ILPResult(
            placement=placement,
            objective_us=terms["objective_us"],
            gap=gap,
            max_sub_gap=max_gap,
            solve_s=time.perf_counter() - self.t0,
            status=status,
            solver=self.solver,
            hierarchical=self.hierarchical,
            subproblems=self.subs,
            clustered=clustered,
        )


def solve_ilp(
    counts: np.ndarray,
    transitions: np.ndarray | None,
    num_gpus: int,
    gpus_per_node: int,
    redundant_experts: int,
    cost: CostModel,
    *,
    warm_start: Placement,
    solver: str = "cbc",
    time_limit_s: float = 60.0,
    split: str = "even",
    hierarchical: bool | None = None,
    current: Placement | None = None,
    sweeps: int = 2,
    gap_rel: float = 0.02,
    threads: int = 1,
    cluster: bool | None = None,
    spread: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> ILPResult:
    """Place experts for every layer of ``counts [L, E]`` (transitions ``[L-1, E, E]`` between consecutive rows).

    Args:
        warm_start: a valid placement with ``E + redundant_experts`` slots (the best heuristic); layers the time
            limit leaves unsolved keep it, so a valid plan always comes back.
        solver: a backend of :data:`tuner.ilp.backends.SOLVERS`.
        hierarchical: nodes then GPUs; None = automatic (``E * G > FLAT_LIMIT`` and more than one node).
        cluster: start the flat sweeps from a joint node clustering (:func:`tuner.ilp.node_start.cluster_start`);
            None = automatic (flat, more than one node, transitions given).
        current: placement now deployed; its replicas cost ``cost.us_per_moved_replica`` to move.
        spread: every expert's replicas on distinct nodes (as many as it has, up to N; ``split="even"`` only), the
            layout under which SGLang's nearest-replica rule splits evenly (``tuner.placers.node_spread``).
        progress: called as ``progress(done, total, text)`` after every subproblem.
    Raises:
        PlacementError (slot counts), SpecError (bad solver/split).
    """
    t0 = time.perf_counter()
    if solver not in SOLVERS:
        raise SpecError(f"ilp: solver: must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if split not in SPLITS:
        raise SpecError(f"ilp: split: must be one of {', '.join(SPLITS)}, got {split!r}")
    counts = np.asarray(counts, dtype=np.float64)
    L, E = counts.shape
    G = int(num_gpus)
    S = slots_per_gpu(E, redundant_experts, G, origin="ilp")
    gpn = min(int(gpus_per_node), G)
    N = G // gpn
    if hierarchical is None:
        hierarchical = N > 1 and E * G > FLAT_LIMIT
    hierarchical = bool(hierarchical and N > 1)
    if warm_start.num_physical != G * S or warm_start.num_layers != L:
        raise SpecError(
            f"ilp: warm_start: {warm_start.num_layers} x {warm_start.num_physical} slots, expected {L} x {G * S}"
        )
    T = None if transitions is None else np.asarray(transitions, dtype=np.float64)
    search = _LayerSearch(
        counts,
        T,
        G,
        gpn,
        S,
        cost,
        warm_start,
        solver=solver,
        time_limit_s=time_limit_s,
        split=split,
        hierarchical=hierarchical,
        current=current,
        sweeps=sweeps,
        gap_rel=gap_rel,
        threads=threads,
        spread=spread,
        progress=progress,
        t0=t0,
    )
    if cluster is None:
        cluster = not hierarchical and N > 1 and T is not None and L > 1
    clustered = False
    if (
        cluster
        and not hierarchical
        and T is not None
        and N > 1
        and L > 1
        and CLUSTER_SHARE * time_limit_s >= MIN_SOLVE_S
    ):
        clustered = search.cluster_phase()
        if progress:
            progress(search.done, search.total, f"node clustering: {'adopted' if clustered else 'kept the warm start'}")
    search.sweep_all()
    return search.result(clustered)

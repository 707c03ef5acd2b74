"""One subproblem of the layer search as a MILP (PuLP), and its solve by a backend of :mod:`tuner.ilp.backends`.

Dimension legend: n items (logical experts), B bins (GPUs or nodes), k blocks of bins (each with its own max load).

Subproblem (bins b, items i; the ``tuner.ilp`` package docstring has the whole model)::

    min  c_tok * M  - sum_ib benefit_ib * x_ib  + sum_ib move_ib * y_ib  + c_net * Mnet  + const
    s.t. sum_b y_ib >= 1  (continuous)  |  sum_b y_ib = k_i, x_ib = y_ib / k_i  (even)
         sum_i y_ib  = slots_b
         min_share * y_ib <= x_ib <= y_ib,  sum_b x_ib = 1
         sum_i w_i x_ib <= M  (<= load_cap),  M >= packing_bound(replica weights)
         Mnet >= sum_(b in group) sum_i net_w_i x_ib,  Mnet >= out_const - sum_(b in group) sum_i out_w_i y_ib
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tuner.ilp.backends import BACKENDS
from tuner.ilp.outcome import SubResult

MIN_SHARE = 0.01  # smallest share a slot may hold (a slot with no tokens would waste memory)


@dataclass
class Subproblem:
    """Items (experts) into bins. ``w`` [n] tokens; ``benefit``/``ycost`` [n, B]; blocks: bins per block."""

    w: np.ndarray
    slots: np.ndarray  # [B]
    max_per_bin: int
    counts: np.ndarray | None  # [n] fixed replica counts (even split) or None (continuous)
    benefit: np.ndarray
    ycost: np.ndarray
    c_tok: float
    const: float
    blocks: list[np.ndarray]  # bins of each block, each block has its own max-load variable
    allowed: np.ndarray  # [n, B] bool: item may go to bin
    load_cap: float | None = None
    warm: tuple[np.ndarray, np.ndarray] | None = None  # (y [n, B], x [n, B])
    min_share: float = MIN_SHARE  # x >= min_share * y (0 in the node stage; fixed after the solve)
    ub: np.ndarray | None = None  # [n] replicas of an item one bin may hold (default max_per_bin)
    # (bin_group [B], group_ub [n]): replicas of item i over the bins of one group (a node) at most group_ub[i]
    group_ub: tuple[np.ndarray, np.ndarray] | None = None
    # network term: c_net * Mnet with Mnet >= sum_i net_w[i] x_ib summed over the bins of each group (a NIC, a node)
    net_w: np.ndarray | None = None
    net_group: np.ndarray | None = None  # [B] group of each bin; None: every bin its own
    c_net: float = 0.0
    # the same Mnet also >= out_const - sum_i out_w[i] y_ib summed over the bins of each out group (a node: what
    # its ranks send away, less the tokens of the experts it holds); out_w None: Mnet >= out_const
    out_w: np.ndarray | None = None
    out_group: np.ndarray | None = None
    out_const: float = 0.0
    gpu_target: float | None = None  # node stage: mean GPU load; the objective then prices a GPU-level max
    gpus_per_bin: int = 1


@dataclass
class _Milp:
    """The PuLP problem of one :class:`Subproblem` while it is built: variables by cell ``(i, b)``."""

    sub: Subproblem
    prob: Any
    cells: list[tuple[int, int]]
    ub: np.ndarray  # [n] integer upper bound of y per item
    y: dict[tuple[int, int], Any]
    xt: dict[tuple[int, int], tuple[Any, float]]  # x as (variable, coefficient): its own, or y / k (even split)
    Ms: list[Any]
    by_item: list[list[tuple[int, int]]]
    by_bin: list[list[tuple[int, int]]]
    obj_terms: dict[Any, float] = field(default_factory=dict)
    mg_var: Any = None
    net_var: Any = None

    @property
    def even(self) -> bool:
        return self.sub.counts is not None

    def add(self, var: Any, coef: float) -> None:
        self.obj_terms[var] = self.obj_terms.get(var, 0.0) + coef


def _variables(sub: Subproblem) -> _Milp:
    """The problem and its variables: ``y`` (replicas, integer), ``x`` (shares), one ``M`` per block."""
    import pulp

    n, B = sub.allowed.shape
    prob = pulp.LpProblem("placement", pulp.LpMinimize)
    cells = [(i, b) for i in range(n) for b in range(B) if sub.allowed[i, b]]
    ub = np.full(n, sub.max_per_bin, dtype=np.int64) if sub.ub is None else np.minimum(sub.ub, sub.max_per_bin)
    y = {
        c: pulp.LpVariable(f"y_{c[0]}_{c[1]}", 0, int(ub[c[0]]), pulp.LpBinary if ub[c[0]] == 1 else pulp.LpInteger)
        for c in cells
    }
    if sub.counts is not None:
        xt = {c: (y[c], 1.0 / float(sub.counts[c[0]])) for c in cells}
    else:
        xt = {c: (pulp.LpVariable(f"x_{c[0]}_{c[1]}", 0, 1), 1.0) for c in cells}
    Ms = [pulp.LpVariable(f"M_{k}", 0) for k in range(len(sub.blocks))]
    by_item: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    by_bin: list[list[tuple[int, int]]] = [[] for _ in range(B)]
    for c in cells:
        by_item[c[0]].append(c)
        by_bin[c[1]].append(c)
    return _Milp(sub, prob, cells, ub, y, xt, Ms, by_item, by_bin)


def _load_price(m: _Milp) -> None:
    """``c_tok`` on every block's ``M``; in the node stage on ``Mg``, an estimate of the busiest GPU: at least its
    node's mean GPU load and the load of one replica (linear and conservative: for a replica count y >= 2 it
    charges ``w*x - (y-1)*target >= w*x/y``)."""
    import pulp

    sub = m.sub
    Aff, Con = pulp.LpAffineExpression, pulp.LpConstraint
    if sub.gpu_target is None:
        for M in m.Ms:
            m.add(M, sub.c_tok)
        return
    Mg = pulp.LpVariable("Mg", 0)
    m.mg_var = Mg
    m.add(Mg, sub.c_tok)
    for M in m.Ms:
        m.prob += Con(Aff([(M, 1.0), (Mg, -float(sub.gpus_per_bin))]), pulp.LpConstraintLE, rhs=0.0)
    for c in m.cells:
        xv, xc = m.xt[c]
        terms = [(Mg, 1.0), (xv, -float(sub.w[c[0]]) * xc)]
        if xv is not m.y[c]:
            terms.append((m.y[c], sub.gpu_target))
        else:
            terms[1] = (xv, -float(sub.w[c[0]]) * xc + sub.gpu_target)
        m.prob += Con(Aff(terms), pulp.LpConstraintGE, rhs=sub.gpu_target)


def _cell_prices(m: _Milp) -> None:
    """Co-location benefit on ``x`` and move cost on ``y``; sets the objective."""
    import pulp

    sub = m.sub
    for c in m.cells:
        if sub.benefit[c] != 0.0:
            m.add(m.xt[c][0], -float(sub.benefit[c]) * m.xt[c][1])
        if sub.ycost[c] != 0.0:
            m.add(m.y[c], float(sub.ycost[c]))
    m.prob += pulp.LpAffineExpression(list(m.obj_terms.items()), constant=sub.const)


def _assignment(m: _Milp) -> None:
    """Every item placed (``k_i`` replicas, or at least one with shares summing to 1); every bin full."""
    import pulp

    sub = m.sub
    Aff, Con = pulp.LpAffineExpression, pulp.LpConstraint
    LE, GE, EQ = pulp.LpConstraintLE, pulp.LpConstraintGE, pulp.LpConstraintEQ
    for i, item_cells in enumerate(m.by_item):
        if m.even:
            m.prob += Con(Aff([(m.y[c], 1.0) for c in item_cells]), EQ, rhs=int(sub.counts[i]))
            continue
        m.prob += Con(Aff([(m.y[c], 1.0) for c in item_cells]), GE, rhs=1)
        m.prob += Con(Aff([(m.xt[c][0], 1.0) for c in item_cells]), EQ, rhs=1)
        for c in item_cells:
            m.prob += Con(Aff([(m.xt[c][0], 1.0), (m.y[c], -1.0)]), LE, rhs=0)
            if sub.min_share > 0:
                m.prob += Con(Aff([(m.xt[c][0], 1.0), (m.y[c], -sub.min_share)]), GE, rhs=0)
    for b, bin_cells in enumerate(m.by_bin):
        m.prob += Con(Aff([(m.y[c], 1.0) for c in bin_cells]), EQ, rhs=int(sub.slots[b]))


def _group_sums(m: _Milp, groups: np.ndarray, weight: np.ndarray, of_y: bool) -> dict[Any, dict[Any, float]]:
    """Per group of bins, ``{variable: sum of weight[i] * coefficient}`` over its cells (``y`` or ``x``)."""
    out: dict[Any, dict[Any, float]] = {}
    for grp in np.unique(groups):
        terms: dict[Any, float] = {}
        for b in np.nonzero(groups == grp)[0]:
            for c in m.by_bin[b]:
                var, coef = (m.y[c], 1.0) if of_y else m.xt[c]
                terms[var] = terms.get(var, 0.0) + float(weight[c[0]]) * coef
        out[grp] = terms
    return out


def _network(m: _Milp) -> None:
    """``c_net * Mnet``: Mnet at least every group's inbound and every out group's outbound (re-sets the
    objective)."""
    import pulp

    sub = m.sub
    B = sub.allowed.shape[1]
    if sub.net_w is None or not sub.c_net > 0:
        return
    Aff, Con = pulp.LpAffineExpression, pulp.LpConstraint
    net_var = pulp.LpVariable("Mnet", 0)
    m.net_var = net_var
    m.obj_terms[net_var] = sub.c_net
    net_group = np.arange(B) if sub.net_group is None else sub.net_group
    for terms in _group_sums(m, net_group, sub.net_w, of_y=False).values():
        terms[net_var] = -1.0
        m.prob += Con(Aff(list(terms.items())), pulp.LpConstraintLE, rhs=0)
    if sub.out_const > 0 and sub.out_w is None:
        m.prob += Con(Aff([(net_var, 1.0)]), pulp.LpConstraintGE, rhs=sub.out_const)
    elif sub.out_const > 0:
        out_group = np.arange(B) if sub.out_group is None else sub.out_group
        for held in _group_sums(m, out_group, sub.out_w, of_y=True).values():
            terms = {net_var: 1.0}
            for var, coef in held.items():
                terms[var] = terms.get(var, 0.0) + coef
            m.prob += Con(Aff(list(terms.items())), pulp.LpConstraintGE, rhs=sub.out_const)
    m.prob.setObjective(Aff(list(m.obj_terms.items()), constant=sub.const))


def _group_bounds(m: _Milp) -> None:
    """At most ``group_ub[i]`` replicas of item i over the bins of one group (a node)."""
    import pulp

    if m.sub.group_ub is None:
        return
    bin_group, group_ub = m.sub.group_ub
    for i, item_cells in enumerate(m.by_item):
        for grp in np.unique(bin_group):
            cs = [c for c in item_cells if bin_group[c[1]] == grp]
            if len(cs) > group_ub[i]:
                m.prob += pulp.LpConstraint(
                    pulp.LpAffineExpression([(m.y[c], 1.0) for c in cs]), pulp.LpConstraintLE, rhs=int(group_ub[i])
                )


def _block_lower_bound(m: _Milp, bins: np.ndarray) -> float:
    """A valid bound the LP relaxation does not see: a bin is at least as loaded as the mean of its block and,
    with fixed replica counts, as the heaviest replica packing allows (:func:`packing_bound`)."""
    sub = m.sub
    block_items = sorted({c[0] for b in bins for c in m.by_bin[b]})
    single = len(sub.blocks) == 1
    lb = float(sum(sub.w[i] for i in block_items)) / max(1, len(bins)) if single else 0.0
    if m.even and block_items and single:
        reps = np.repeat(
            [float(sub.w[i]) / float(sub.counts[i]) for i in block_items], [int(sub.counts[i]) for i in block_items]
        )
        lb = max(lb, packing_bound(reps, len(bins), int(sub.slots[bins[0]])))
    return lb


def _block_loads(m: _Milp) -> None:
    """``M_k`` at least every bin's load of block k, at most ``load_cap``, at least :func:`_block_lower_bound`."""
    import pulp

    sub = m.sub
    Aff, Con = pulp.LpAffineExpression, pulp.LpConstraint
    for k, bins in enumerate(sub.blocks):
        for b in bins:
            terms: dict[Any, float] = {}
            for c in m.by_bin[b]:
                xv, xc = m.xt[c]
                terms[xv] = terms.get(xv, 0.0) + float(sub.w[c[0]]) * xc
            terms[m.Ms[k]] = -1.0
            m.prob += Con(Aff(list(terms.items())), pulp.LpConstraintLE, rhs=0)
        if sub.load_cap is not None:
            m.prob += Con(Aff([(m.Ms[k], 1.0)]), pulp.LpConstraintLE, rhs=sub.load_cap)
        if sub.gpu_target is None:
            lb = _block_lower_bound(m, bins)
            if lb > 0:
                m.prob += Con(Aff([(m.Ms[k], 1.0)]), pulp.LpConstraintGE, rhs=lb)


def _net_start(sub: Subproblem, wy: np.ndarray, wx: np.ndarray) -> float:
    """``Mnet`` of the warm start ``(wy, wx)``: the busiest group's inbound, or its outbound where higher."""
    B = sub.allowed.shape[1]
    per_bin_net = sub.net_w @ wx  # [B]
    grp = np.arange(B) if sub.net_group is None else sub.net_group
    start = float(np.bincount(grp, weights=per_bin_net).max())
    if sub.out_const > 0 and sub.out_w is None:
        start = max(start, sub.out_const)
    elif sub.out_const > 0:
        og = np.arange(B) if sub.out_group is None else sub.out_group
        held = np.bincount(og, weights=sub.out_w @ np.round(wy))
        start = max(start, float((sub.out_const - held).max()))
    return start


def _warm_start(m: _Milp) -> None:
    """The subproblem's ``warm`` ``(y, x)`` as the variables' initial values (a MIP start)."""
    sub = m.sub
    if sub.warm is None:
        return
    wy, wx = sub.warm
    for c in m.cells:
        m.y[c].setInitialValue(min(int(m.ub[c[0]]), round(wy[c])))
        if not m.even:
            m.xt[c][0].setInitialValue(min(1.0, max(0.0, float(wx[c]))))
    for k, bins in enumerate(sub.blocks):
        m.Ms[k].setInitialValue(float(max((sub.w * wx[:, b]).sum() for b in bins)))
    if sub.gpu_target is not None:
        mg = max(
            max(float(M.varValue) for M in m.Ms) / sub.gpus_per_bin,
            float((sub.w[:, None] * wx - sub.gpu_target * (wy - 1)).max()),
        )
        m.mg_var.setInitialValue(mg)
    if m.net_var is not None:
        m.net_var.setInitialValue(_net_start(sub, wy, wx))


def build_milp(sub: Subproblem) -> _Milp:
    """The MILP of ``sub`` (module docstring), with its warm start set."""
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="pulp")  # PuLP 4.0 API notices
    m = _variables(sub)
    _load_price(m)
    _cell_prices(m)
    _assignment(m)
    _network(m)
    _group_bounds(m)
    _block_loads(m)
    _warm_start(m)
    return m


def _solution(m: _Milp) -> tuple[np.ndarray, np.ndarray]:
    """``(y [n, B], x [n, B])`` from the solved variables (continuous shares renormalised per item)."""
    n, B = m.sub.allowed.shape
    ys = np.zeros((n, B))
    xs = np.zeros((n, B))
    for c in m.cells:
        ys[c] = round(m.y[c].value() or 0.0)
        xs[c] = float(m.xt[c][0].value() or 0.0) * m.xt[c][1]
    if not m.even:
        xs = np.where(ys > 0, np.maximum(xs, 0.0), 0.0)
        xs = xs / np.maximum(xs.sum(axis=1, keepdims=True), 1e-12)
    return ys, xs


def solve_sub(
    sub: Subproblem, solver: str, time_limit_s: float, gap_rel: float, threads: int
) -> tuple[np.ndarray | None, np.ndarray | None, str, float, float]:
    """Solve one subproblem with the backend ``solver`` (:data:`tuner.ilp.backends.BACKENDS`). Returns
    ``(y, x, status, objective, bound)``; y is None without an incumbent."""
    m = build_milp(sub)
    status, objective, bound = BACKENDS[solver](m.prob, time_limit_s, gap_rel, threads, sub.warm is not None)
    if status in ("none", "fault"):
        return None, None, status, float("nan"), bound
    ys, xs = _solution(m)
    return ys, xs, status, objective, bound


def timed_solve(
    sub: Subproblem,
    layer: int,
    stage: str,
    size: int,
    solver: str,
    time_limit_s: float,
    gap_rel: float,
    threads: int,
    subs: list[SubResult],
) -> tuple[np.ndarray | None, np.ndarray | None, SubResult]:
    """:func:`solve_sub`, timed and recorded in ``subs`` as a :class:`SubResult` of ``layer`` and ``stage``."""
    ts = time.perf_counter()
    y, x, status, obj, bound = solve_sub(sub, solver, time_limit_s, gap_rel, threads)
    r = SubResult(layer, stage, status, obj, bound, time.perf_counter() - ts, size)
    subs.append(r)
    return y, x, r


def packing_bound(replica_w: np.ndarray, bins: int, slots: int) -> float:
    """Lower bound on the busiest bin when replicas of weights ``replica_w`` fill ``bins`` bins of exactly
    ``slots`` slots each. Pigeonhole: of the ``(j-1)*bins + 1`` heaviest replicas some bin holds ``j``, at least
    the ``j`` lightest of them, and its other ``slots - j`` slots hold at least the lightest replicas left::

        M >= max_j  sum(r[(j-1)B+1-j .. (j-1)B]) + sum(smallest slots-j of the rest)     (r sorted descending)
    """
    r = np.sort(np.asarray(replica_w, dtype=np.float64))[::-1]
    n = len(r)
    best = float(r.sum()) / max(1, bins)
    for j in range(1, slots + 1):
        top = (j - 1) * bins + 1
        if top > n:
            break
        heavy = r[top - j : top]  # the j lightest of the top `top`
        rest = r[top:]
        light = np.sort(rest)[: max(0, slots - j)]
        best = max(best, float(heavy.sum() + light.sum()))
    return best

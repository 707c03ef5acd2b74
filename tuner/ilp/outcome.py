"""What the MILP search reports: one :class:`SubResult` per subproblem solve, one :class:`ILPResult` per plan."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from moesim.placement import Placement


@dataclass
class SubResult:
    """One subproblem solve."""

    layer: int  # row in the placement
    stage: str  # "flat" | "nodes" | "gpus"
    status: str
    objective: float
    bound: float
    solve_s: float
    size: int  # integer variables

    @property
    def gap(self) -> float:
        return relative_gap(self.objective, self.bound)


@dataclass
class ILPResult:
    """One plan of :func:`tuner.ilp.solve_ilp`: the placement, its predicted objective and the gaps."""

    placement: Placement
    objective_us: float  # predicted sum over layers of t_l, evaluated on the final placement
    gap: float  # decomposed gap (see the tuner.ilp docstring); nan when nothing was solved
    max_sub_gap: float
    solve_s: float
    status: str  # "optimal" | "time-limit" | "partial" | "warm-start"
    solver: str
    hierarchical: bool
    subproblems: list[SubResult] = field(default_factory=list)
    clustered: bool = False  # the node-clustering start (tuner.node_cluster) was adopted


def relative_gap(obj: float, bound: float) -> float:
    """``(obj - bound) / |obj|``, at least 0; nan unless both are finite."""
    if not (math.isfinite(obj) and math.isfinite(bound)):
        return float("nan")
    return max(0.0, obj - bound) / max(abs(obj), 1e-12)


def gaps_and_status(solved: list[SubResult], num_layers: int, clustered: bool) -> tuple[float, float, str]:
    """``(gap, max_sub_gap, status)`` over the last solve of each subproblem: the decomposed gap
    ``(sum obj - sum bound) / sum obj``, the worst subproblem's, and ``optimal`` | ``time-limit`` | ``partial``
    (some layer never solved) | ``warm-start`` (nothing solved)."""
    if not solved:
        # clustered: the node stage's packing, no MILP left
        return float("nan"), float("nan"), "partial" if clustered else "warm-start"
    objs = np.array([r.objective for r in solved])
    bounds = np.array([r.bound for r in solved])
    gap = relative_gap(float(objs.sum()), float(bounds.sum())) if np.all(np.isfinite(bounds)) else float("nan")
    max_gap = max((r.gap for r in solved), default=float("nan"))
    if len({r.layer for r in solved}) < num_layers:
        status = "partial"
    elif all(r.status == "optimal" for r in solved):
        status = "optimal"
    else:
        status = "time-limit"
    return gap, max_gap, status

"""CBC (COIN-OR branch and cut) through PuLP's ``PULP_CBC_CMD``; the best bound is read from CBC's log."""

from __future__ import annotations

import math
import os
import re
import tempfile
from typing import Any

_CBC_BOUND = re.compile(r"^Lower bound:\s*([-+0-9.eE]+)", re.MULTILINE)
_CBC_POSSIBLE = re.compile(r"best possible ([-+0-9.eE]+)")
_CBC_ROOT = re.compile(r"Cuts at root node changed objective from [-+0-9.eE]+ to ([-+0-9.eE]+)")
_CBC_LP = re.compile(r"Continuous objective value is ([-+0-9.eE]+)")


def log_bound(text: str) -> float:
    """The best valid lower bound CBC's log shows (without the objective's constant), or nan.

    In order: the final ``Lower bound:`` (printed when stopped early), the last ``best possible`` of the
    branch-and-bound progress lines, the root bound after cuts, the LP relaxation."""
    for pattern in (_CBC_BOUND, _CBC_POSSIBLE, _CBC_ROOT, _CBC_LP):
        found = [float(v) for v in pattern.findall(text) if abs(float(v)) < 1e20]  # CBC prints 1e50 for "none"
        if found:
            return found[-1]
    return float("nan")


def solve(prob: Any, time_limit_s: float, gap_rel: float, threads: int, warm: bool) -> tuple[str, float, float]:
    """CBC through PuLP; the best bound is read from CBC's log (PuLP does not return it)."""
    import pulp

    fd, log = tempfile.mkstemp(prefix="moesim_cbc_", suffix=".log")
    os.close(fd)
    try:
        cmd = pulp.PULP_CBC_CMD(
            msg=False,
            timeLimit=round(max(0.1, time_limit_s), 2),
            gapRel=gap_rel,
            warmStart=warm,
            threads=threads,
            logPath=log,
        )
        try:
            prob.solve(cmd)
        except pulp.PulpSolverError:
            # CBC died (it can crash on tiny time limits) or left no solution file: no incumbent from this
            # subproblem, so its layer keeps its row
            return "fault", float("nan"), float("nan")
        with open(log, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    finally:
        try:
            os.unlink(log)
        except OSError:
            pass
    has_solution = prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible)
    if not has_solution:
        return "none", float("nan"), float("nan")
    objective = float(pulp.value(prob.objective))
    optimal = "Optimal solution found" in text
    bound = log_bound(text) + float(prob.objective.constant)  # CBC works without the objective's constant
    if (
        "Search completed" in text
        and "best possible" not in text
        and _CBC_BOUND.search(text) is None
        and "ratioGap" not in text
    ):
        bound = objective  # proved optimal with no gap tolerance in force
    status = "optimal" if optimal else "time-limit"
    return status, objective, min(bound, objective) if math.isfinite(bound) else bound

"""HiGHS in-process through ``pulp.HiGHS`` (highspy), with the warm start passed as a MIP start."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from typing import Any


@contextlib.contextmanager
def _c_stdout_to_stderr() -> Any:
    """Point file descriptor 1 at stderr for the block, so a library's C-level prints never reach stdout (the
    command's own output, e.g. ``--json``)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def solve(prob: Any, time_limit_s: float, gap_rel: float, threads: int, warm: bool) -> tuple[str, float, float]:
    """HiGHS in-process through ``pulp.HiGHS`` (highspy), with the warm start passed as a MIP start."""
    import highspy
    import pulp

    class _HiGHSWarm(pulp.HiGHS):  # PuLP's HiGHS class has no warm start; hand HiGHS the initial values
        def callSolver(self, lp: Any) -> None:
            if warm:
                sol = highspy.HighsSolution()
                sol.col_value = [float(v.varValue) if v.varValue is not None else 0.0 for v in lp.variables()]
                sol.value_valid = True
                lp.solverModel.setSolution(sol)
            lp.solverModel.run()

    cmd = _HiGHSWarm(msg=False, timeLimit=max(0.05, float(time_limit_s)), gapRel=gap_rel, threads=threads)
    with _c_stdout_to_stderr():  # HiGHS prints its banner from C on creation, before msg=False applies
        prob.solve(cmd)
    h = prob.solverModel
    info = h.getInfo()
    model_status = h.getModelStatus()
    if info.primal_solution_status != 2:  # kSolutionStatusFeasible
        return "none", float("nan"), float("nan")
    objective = float(pulp.value(prob.objective))
    bound = float(info.mip_dual_bound) + float(prob.objective.constant)  # PuLP does not pass the constant
    status = "optimal" if model_status == highspy.HighsModelStatus.kOptimal else "time-limit"
    if not math.isfinite(bound):
        bound = float("nan")
    return status, objective, min(bound, objective) if math.isfinite(bound) else bound

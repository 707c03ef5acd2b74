"""The solver-backend family's shape: the protocol every backend of :data:`tuner.ilp.backends.BACKENDS` follows."""

from __future__ import annotations

from typing import Any, Protocol


class Backend(Protocol):
    """Solve a built PuLP problem ``prob`` within ``time_limit_s`` seconds to relative gap ``gap_rel`` on
    ``threads`` threads, from the variables' initial values where ``warm``. Returns ``(status, objective,
    bound)``: status ``"optimal"``, ``"time-limit"`` (an incumbent, not proved optimal), ``"none"`` (no
    incumbent) or ``"fault"`` (the solver died); objective and bound include the objective's constant, the bound
    at most the objective (nan when the solver gives none)."""

    def __call__(
        self, prob: Any, time_limit_s: float, gap_rel: float, threads: int, warm: bool
    ) -> tuple[str, float, float]: ...

"""MILP solver backends: one family, one registry, a file per backend (the protocol: :class:`base.Backend`).

``cbc`` (COIN-OR CBC through PuLP, the default) and ``highs`` (HiGHS in-process through highspy). To add one,
write ``tuner/ilp/backends/NAME.py`` with a ``solve`` that follows :class:`base.Backend` and list it here: the
``--solver`` check of ``moesim plan`` and :func:`tuner.ilp.solve_ilp` take their choices from :data:`SOLVERS`.
"""

from __future__ import annotations

from tuner.ilp.backends import cbc, highs
from tuner.ilp.backends.base import Backend

__all__ = ["BACKENDS", "SOLVERS", "Backend"]

BACKENDS: dict[str, Backend] = {
    "cbc": cbc.solve,
    "highs": highs.solve,
}

SOLVERS = tuple(BACKENDS)  # ("cbc", "highs"): the choices, in this order in messages

"""Dispatch and combine all-to-all: who sends how many bytes where, and how long the busiest link takes.

The stages, one module each, in the order the simulator uses them:

1. :mod:`~moesim.dispatch.delivery`: expected deliveries of one token to each GPU or node (from per-expert
   counts only, no loop over tokens), with the top-k and group-limited routing corrections.
2. :mod:`~moesim.dispatch.wire`: bytes of one token row (``bf16`` / ``fp8`` with its scales).
3. The all-to-all scheme, a family: :class:`~moesim.dispatch.base.AllToAll` is the protocol (and the
   equations of the bytes per link class), one file per member (:mod:`~moesim.dispatch.flat`,
   :mod:`~moesim.dispatch.hierarchical`), :data:`ALLTOALL` the registry every choice list derives from.
4. :mod:`~moesim.dispatch.links`: the cluster's link classes and the time of the busiest link.

All equations with their assumptions: ``docs/COSTMODEL.md``. To add a scheme: a file with a class that follows
:class:`AllToAll` (a ``name`` and ``loads`` / ``loads_by_source``), and one entry in :data:`ALLTOALL`.
"""

from __future__ import annotations

from moesim.dispatch.base import AllToAll
from moesim.dispatch.delivery import delivery_per_token, group_selection
from moesim.dispatch.flat import FlatAllToAll
from moesim.dispatch.hierarchical import HierarchicalAllToAll
from moesim.dispatch.links import LinkClasses, LinkLoads, link_classes, link_times_us
from moesim.dispatch.wire import DTYPES, bytes_per_token
from moesim.errors import field_error

__all__ = [
    "ALLTOALL",
    "DTYPES",
    "AllToAll",
    "FlatAllToAll",
    "HierarchicalAllToAll",
    "LinkClasses",
    "LinkLoads",
    "bytes_per_token",
    "delivery_per_token",
    "group_selection",
    "link_classes",
    "link_times_us",
    "make_alltoall",
]

# The all-to-all family's registry: scheme name -> member class (each follows AllToAll).
ALLTOALL: dict[str, type[AllToAll]] = {cls.name: cls for cls in (FlatAllToAll, HierarchicalAllToAll)}


def make_alltoall(name: str) -> AllToAll:
    """Pick the all-to-all strategy once, by name (``flat`` | ``hierarchical``)."""
    try:
        return ALLTOALL[name]()
    except KeyError:
        raise field_error("options", "alltoall", f"must be one of {', '.join(ALLTOALL)}, got {name!r}") from None

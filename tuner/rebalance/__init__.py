"""Rebalancing a deployed placement: which expert moves are worth making for a newer load, and how often.

Modules, bottom up (each imports only those above it in this list, and this ``__init__`` imports none of them, so
the CLI can read the choices below without loading the search):

* :mod:`.search`: the greedy move search on one layer (``LayerSearch``), its prices, every layer in turn;
* :mod:`.move_cost`: the bytes a rebalance moves, over which links, and the stall (``move_cost``, ``payoff_steps``);
* :mod:`.replan`: the reference replan from scratch, relabelled to keep the deployed map (``align_to``);
* :mod:`.curve`: every layer's options on its frontier, merged across layers (``merge_layers``);
* :mod:`.flow`: the rebalance itself, its simulated points and the choice among them (``rebalance``, ``choose``);
* :mod:`.cadence`: which rebalance interval serves most on a series of snapshots (``cadence``).

The engines' own defaults (their rebalance intervals, whether a rebalance stops serving) come from
:mod:`tuner.engine_facts`.
"""

from __future__ import annotations

DEFAULT_ENGINE = "sglang-static"  # the dispatch rule a rebalance is scored under (moesim.engine_dispatch.ENGINES)
# seconds for the move search (and again for the walks; and the ilp replan): a choice (assumption), not a measured
# optimum
DEFAULT_TIME_LIMIT_S = 20.0
DEFAULT_WEIGHT_BYTES = 2.0  # bytes per expert weight parameter (bf16)

REPLANS = ("eplb", "ilp")  # the full replan a rebalance is measured against (tuner.rebalance.replan)
DEFAULT_POINTS = 8  # curve states simulated and shown (besides the deployed one, the replan and the choice)

POLICIES = ("eplb", "moesim")  # who rebalances in the cadence study (tuner.rebalance.cadence)
# forward steps between two snapshots of a series: an assumption (a recorder dump every 1000 steps, as often as
# SGLang rebalances by default, tuner.engine_facts); --dump-steps sets it
DEFAULT_DUMP_STEPS = 1000

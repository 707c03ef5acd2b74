"""Per-layer capacity tuning with NSGA-II: step latency against dropped assignments.

:mod:`.objective` (the simulator's two objectives of a per-layer setting), :mod:`.space` (the search space and the
NSGA-II sampler over it), :mod:`.stored` (the stored, shared copy of a study) and :mod:`.search`
(:func:`~.search.autotune_capacity`, the Pareto front and the ``max_drop`` pick).
"""

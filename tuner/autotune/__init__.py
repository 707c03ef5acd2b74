"""Optuna autotuning: fused-MoE kernel configs (``kernel/``, over the grid of ``space``, with the samplers of
``samplers/``) and per-layer capacity factors (``capacity/``), both kept in the studies of ``storage``."""

"""Gaussian-process Bayesian optimisation."""

from __future__ import annotations

from typing import Any


class GP:
    """``optuna.samplers.GPSampler`` with a noisy objective (timings vary between repeats)."""

    name = "gp"
    label = "gp"

    def make(self, seed: int | None) -> Any:
        import optuna

        return optuna.samplers.GPSampler(seed=seed, deterministic_objective=False)

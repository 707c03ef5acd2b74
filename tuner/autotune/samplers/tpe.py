"""Multivariate TPE, the default sampler."""

from __future__ import annotations

from typing import Any


class TPE:
    """``optuna.samplers.TPESampler(multivariate=True, constant_liar=True)``."""

    name = "tpe"
    label = "tpe (multivariate TPE)"

    def make(self, seed: int | None) -> Any:
        import optuna

        # multivariate: block sizes interact (BM x BN sets occupancy); constant_liar: parallel workers
        # do not all pile onto the point the others are already measuring.
        return optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=seed)

"""Random search, the baseline the model-based samplers must beat."""

from __future__ import annotations

from typing import Any


class RandomSearch:
    """``optuna.samplers.RandomSampler``."""

    name = "random"
    label = "random"

    def make(self, seed: int | None) -> Any:
        import optuna

        return optuna.samplers.RandomSampler(seed=seed)

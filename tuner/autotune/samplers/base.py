"""The shape every kernel-config sampler follows: a name, how the CLI lists it, and a factory."""

from __future__ import annotations

from typing import Any, Protocol

# Optuna's samplers seed numpy's legacy RandomState, which takes 0 .. 2**32 - 1
MAX_SEED = 2**32 - 1


class Sampler(Protocol):
    """One Optuna sampler choice of ``autotune kernel --sampler``."""

    name: str  # the registry key and the --sampler value
    label: str  # how the CLI help lists it

    def make(self, seed: int | None) -> Any:
        """A fresh ``optuna.samplers.BaseSampler`` seeded with ``seed`` (None: random)."""
        ...

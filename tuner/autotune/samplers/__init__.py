"""The kernel-config samplers: one registry, one :class:`~tuner.autotune.samplers.base.Sampler` protocol, one
file per sampler. Adding one: a file with a class like :class:`~tuner.autotune.samplers.tpe.TPE`, and its
instance in :data:`SAMPLERS`; the CLI's ``--sampler`` help and ``KernelTuneSpec``'s check follow."""

from __future__ import annotations

from typing import Any

from moesim.errors import SpecError
from tuner.autotune.samplers.base import Sampler
from tuner.autotune.samplers.gp import GP
from tuner.autotune.samplers.random_search import RandomSearch
from tuner.autotune.samplers.tpe import TPE

SAMPLERS: dict[str, Sampler] = {s.name: s for s in (TPE(), GP(), RandomSearch())}


def make_sampler(name: str = "tpe", seed: int | None = None) -> Any:
    """The Optuna sampler registered as ``name`` (``tpe``: multivariate TPE; ``gp``; ``random``), seeded."""
    if name not in SAMPLERS:
        raise SpecError(f"sampler: {name}: expected {', '.join(SAMPLERS)}")
    return SAMPLERS[name].make(seed)


def sampler_help() -> str:
    """The samplers as the CLI lists them: ``tpe (multivariate TPE), gp or random.``"""
    labels = [s.label for s in SAMPLERS.values()]
    return f"{', '.join(labels[:-1])} or {labels[-1]}." if len(labels) > 1 else f"{labels[0]}."

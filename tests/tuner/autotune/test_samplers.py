"""The sampler family: one registry, every member following the protocol, the CLI's help derived from it."""

from __future__ import annotations

import optuna
import pytest

from moesim.errors import SpecError
from tuner.autotune.samplers import SAMPLERS, make_sampler, sampler_help


def test_registry_members_make_seeded_optuna_samplers():
    assert list(SAMPLERS) == ["tpe", "gp", "random"]
    for name, member in SAMPLERS.items():
        assert member.name == name
        assert isinstance(make_sampler(name, 0), optuna.samplers.BaseSampler)


def test_help_lists_every_member_and_unknown_names_fail():
    assert sampler_help() == "tpe (multivariate TPE), gp or random."
    with pytest.raises(SpecError, match="sampler: bogus: expected tpe, gp, random"):
        make_sampler("bogus")

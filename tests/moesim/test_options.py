"""``moesim.options``: one schema for the simulator's options; its metadata, validation and derived choices."""

from __future__ import annotations

import dataclasses
import math

import pytest

from moesim.capacity import DROP_POLICIES
from moesim.dispatch import ALLTOALL, DTYPES
from moesim.engine_dispatch import ENGINES
from moesim.errors import SpecError
from moesim.fused_moe import EP_MODES
from moesim.options import (
    WEIGHT_DTYPES,
    OptionMeta,
    SimOptions,
    cli_fields,
    cli_flags,
    field_kind,
    meta_of,
    options_from,
    scenario_fields,
)
from moesim.specs.limits import MAX_TOKENS_PER_GPU


def test_every_field_carries_its_metadata() -> None:
    for f in dataclasses.fields(SimOptions):
        meta = meta_of(f)
        assert isinstance(meta, OptionMeta)
        assert meta.help, f.name
        assert field_kind(SimOptions, f.name) in (int, float, bool, str)


def test_choices_come_from_the_family_registries() -> None:
    by_name = {f.name: meta_of(f).choices for f in dataclasses.fields(SimOptions)}
    assert by_name["drop_policy"] == tuple(DROP_POLICIES)
    assert by_name["dispatch_dtype"] == by_name["combine_dtype"] == tuple(DTYPES)
    assert by_name["alltoall"] == tuple(ALLTOALL)
    assert by_name["weight_dtype"] == tuple(WEIGHT_DTYPES)
    assert by_name["ep_mode"] == tuple(EP_MODES)
    assert by_name["engine"] == tuple(ENGINES)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tokens_per_gpu": 0}, "options: tokens_per_gpu: must be >= 1, got 0"),
        (
            {"tokens_per_gpu": MAX_TOKENS_PER_GPU + 1},
            f"options: tokens_per_gpu: must be <= {MAX_TOKENS_PER_GPU:,} (moesim's limit, see moesim.specs), "
            f"got {MAX_TOKENS_PER_GPU + 1:,}",
        ),
        ({"overlap_chunks": 0}, "options: overlap_chunks: must be >= 1, got 0"),
        ({"block_size_m": 0}, "options: block_size_m: must be >= 1, got 0"),
        ({"seq_len": -1}, "options: seq_len: must be >= 1, got -1"),
        (
            {"capacity_factor": 0.0},
            "options: capacity_factor: must be a finite number > 0 (omit it for no capacity limit), got 0.0",
        ),
        (
            {"capacity_factor": math.inf},
            "options: capacity_factor: must be a finite number > 0 (omit it for no capacity limit), got inf",
        ),
        ({"drop_policy": "random"}, "options: drop_policy: must be one of probs, position, reroute, got 'random'"),
        ({"weight_dtype": "int4"}, "options: weight_dtype: must be one of bf16, fp8, got 'int4'"),
        ({"engine": "nope"}, "options: engine: must be one of " + ", ".join(ENGINES) + ", got 'nope'"),
    ],
)
def test_an_invalid_instance_cannot_exist(kwargs: dict, message: str) -> None:
    with pytest.raises(SpecError) as exc:
        SimOptions(**kwargs)
    assert str(exc.value) == message
    with pytest.raises(SpecError):
        dataclasses.replace(SimOptions(), **kwargs)


def test_first_bad_field_in_field_order_is_named() -> None:
    with pytest.raises(SpecError, match=r"^options: overlap_chunks:"):
        SimOptions(overlap_chunks=0, engine="nope")


def test_defaults_are_valid_and_frozen() -> None:
    opts = SimOptions()
    assert opts.tokens_per_gpu == 4096 and opts.capacity_factor is None and opts.dedup is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.seq_len = 1  # type: ignore[misc]


def test_cli_flags_and_exposure() -> None:
    flags = {f.name: cli_flags(f) for f in cli_fields()}
    assert flags["capacity_factor"] == ("--capacity-factor", "--moe-expert-capacity-factor")
    assert flags["drop_policy"] == ("--drop-policy", "--moe-token-drop-policy")
    assert flags["dedup"] == ("--no-dedup",) and flags["check_memory"] == ("--no-check-memory",)
    assert flags["seq_len"] == ("--seq-len",) and flags["block_size_m"] == ("--block-size-m",)
    scenario = [f.name for f in scenario_fields()]
    assert "engine" not in scenario
    assert {"seq_len", "block_size_m", "check_memory", "capacity_factor"} <= set(scenario)


@pytest.mark.parametrize(
    "name, value, problem",
    [
        ("tokens_per_gpu", 1.5, "must be an integer, got 1.5"),
        ("tokens_per_gpu", True, "must be an integer, got True"),
        ("seq_len", 0, "must be >= 1, got 0"),
        ("capacity_factor", 0, "must be > 0, got 0"),
        ("capacity_factor", "x", "must be a number, got 'x'"),
        ("check_memory", "no", "must be true or false, got 'no'"),
        ("alltoall", "ring", "must be one of flat, hierarchical, got 'ring'"),
    ],
)
def test_parse_value_gives_the_scenario_messages(name: str, value: object, problem: str) -> None:
    f = next(f for f in dataclasses.fields(SimOptions) if f.name == name)
    with pytest.raises(ValueError) as exc:
        meta_of(f).parse_value(value, field_kind(SimOptions, name))
    assert str(exc.value) == problem


def test_parse_value_normalises() -> None:
    fields = {f.name: f for f in dataclasses.fields(SimOptions)}
    assert meta_of(fields["capacity_factor"]).parse_value(None, float) is None
    assert meta_of(fields["capacity_factor"]).parse_value(1, float) == 1.0
    assert meta_of(fields["seq_len"]).parse_value(8192, int) == 8192


def test_options_from_ignores_other_keys() -> None:
    opts = options_from({"seq_len": 2048, "model": "olmoe-1b-7b"})
    assert opts == SimOptions(seq_len=2048)

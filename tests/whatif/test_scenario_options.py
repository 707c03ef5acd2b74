"""Scenario keys come from ``moesim.options``: seq_len, block_size_m and check_memory are settable, checked and
change the result; ``Scenario`` holds ``options: SimOptions``."""

from __future__ import annotations

import pytest

from moesim.errors import SpecError
from moesim.options import SimOptions, scenario_fields
from whatif.scenario import RECORD_COLUMNS, Scenario, parse_scenarios


def _doc(model: str = "olmoe-1b-7b", **base):
    return {"base": {"model": model, "cluster": "dgx-h100", "tokens_per_gpu": 256, **base}}


def test_scenario_holds_sim_options() -> None:
    sf = parse_scenarios(_doc(capacity_factor=1.25, seq_len=8192), "x.yaml")
    sc = sf.scenarios[0]
    assert sc.options == SimOptions(tokens_per_gpu=256, capacity_factor=1.25, seq_len=8192)
    assert sc.capacity_factor == 1.25 and sc.seq_len == 8192  # the options read as attributes
    with pytest.raises(AttributeError):
        _ = sc.no_such_option


def test_every_scenario_option_is_a_key() -> None:
    for f in scenario_fields():
        value = 2 if f.name in ("seq_len", "block_size_m", "tokens_per_gpu", "overlap_chunks") else f.default
        if isinstance(f.default, bool):
            value = not f.default
        sf = parse_scenarios(_doc(**{f.name: value}), "x.yaml")
        assert getattr(sf.scenarios[0].options, f.name) == value


@pytest.mark.parametrize(
    "key, values, names",
    [
        ("seq_len", [1024, 8192], ["seq=1024", "seq=8192"]),
        ("block_size_m", [16, 128], ["block_m=16", "block_m=128"]),
        ("check_memory", [True, False], ["memcheck=True", "memcheck=False"]),
    ],
)
def test_new_options_as_axes(key: str, values: list, names: list[str]) -> None:
    sf = parse_scenarios({**_doc(), "axes": {key: values}}, "x.yaml")
    assert [s.name for s in sf.scenarios] == names
    assert [getattr(s.options, key) for s in sf.scenarios] == values


def test_settings_keep_the_record_layout() -> None:
    """Options added to the schema later appear in a record only when set away from their default."""
    sc = parse_scenarios(_doc(), "x.yaml").scenarios[0]
    assert tuple(sc.settings()) == RECORD_COLUMNS
    sc = parse_scenarios(_doc(seq_len=1024, check_memory=False), "x.yaml").scenarios[0]
    assert tuple(sc.settings()) == (*RECORD_COLUMNS, "seq_len", "check_memory")
    assert Scenario.from_settings(**{k: v for k, v in sc.settings().items()}) == sc


@pytest.mark.parametrize(
    "base, message",
    [
        ({"seq_len": 0}, "x.yaml: base.seq_len: must be >= 1, got 0"),
        ({"seq_len": 1.5}, "x.yaml: base.seq_len: must be an integer, got 1.5"),
        ({"block_size_m": 0}, "x.yaml: base.block_size_m: must be >= 1, got 0"),
        ({"check_memory": "no"}, "x.yaml: base.check_memory: must be true or false, got 'no'"),
        ({"engine": "vllm"}, "x.yaml: base.engine: unknown field (known: "),
    ],
)
def test_bad_values_are_one_line(base: dict, message: str) -> None:
    with pytest.raises(SpecError) as exc:
        parse_scenarios(_doc(**base), "x.yaml")
    assert "\n" not in str(exc.value)
    assert str(exc.value).startswith(message), str(exc.value)


def _evaluate(doc: dict) -> list[dict]:
    from whatif.sweep import evaluate_scenario

    sf = parse_scenarios(doc, "x.yaml")
    return [evaluate_scenario(sc.resolve(sf.base_dir)) for sc in sf.scenarios]


def test_seq_len_and_block_size_m_change_the_result() -> None:
    short, long_ = _evaluate({**_doc(), "axes": {"seq_len": [1024, 32768]}})
    assert long_["attention_us"] > short["attention_us"]
    assert long_["settings"]["seq_len"] == 32768 and long_["simulate"]["options"]["seq_len"] == 32768
    small, big = _evaluate({**_doc(), "axes": {"block_size_m": [16, 128]}})
    assert big["moe_us"] > small["moe_us"]


def test_check_memory_false_runs_what_the_check_refuses() -> None:
    checked, unchecked = _evaluate({**_doc("deepseek-v3"), "axes": {"check_memory": [True, False]}})
    assert checked["error"].startswith("placement: GPU memory: ")
    assert "error" not in unchecked and unchecked["step_latency_us"] > 0

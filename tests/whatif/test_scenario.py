"""Scenario files: schema validation (one-line errors naming file and field) and sweep expansion."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from moesim.errors import SpecError
from whatif.scenario import Scenario, load_scenarios, parse_scenarios

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "profiles" / "scenarios").glob("*.yaml"))


def _doc(**extra):
    doc = {"base": {"model": "olmoe-1b-7b", "cluster": "dgx-h100", "tokens_per_gpu": 512}}
    doc.update(extra)
    return doc


def test_axes_expand_to_product_in_order():
    sf = parse_scenarios(
        _doc(axes={"capacity_factor": [None, 1.0, 1.25], "drop_policy": ["probs", "position"]}), "x.yaml"
    )
    assert len(sf.scenarios) == 6
    got = [(s.capacity_factor, s.drop_policy) for s in sf.scenarios]
    assert got == [
        (None, "probs"),
        (None, "position"),
        (1.0, "probs"),
        (1.0, "position"),
        (1.25, "probs"),
        (1.25, "position"),
    ]
    assert sf.scenarios[2].name == "cf=1 drop=probs"
    assert all(s.tokens_per_gpu == 512 and s.model == "olmoe-1b-7b" for s in sf.scenarios)
    # the baseline is the scenario equal to the base: dropless, probs
    assert sf.baseline_index == 0
    assert dict(sf.scenarios[3].axis_values) == {"capacity_factor": 1.0, "drop_policy": "position"}


def test_single_string_axis_uses_bare_values_and_baseline_matches_base():
    sf = parse_scenarios(_doc(axes={"cluster": ["h100-pcie-8", "dgx-h100"]}), "x.yaml")
    assert [s.name for s in sf.scenarios] == ["h100-pcie-8", "dgx-h100"]
    assert sf.baseline_index == 1  # base.cluster is dgx-h100


def test_named_scenarios_times_axes_and_explicit_baseline():
    sf = parse_scenarios(
        _doc(
            scenarios=[{"name": "nvlink"}, {"name": "pcie", "cluster": "h100-pcie-8"}],
            axes={"tokens_per_gpu": [512, 1024]},
            baseline="pcie / tok/gpu=512",
        ),
        "x.yaml",
    )
    assert [s.name for s in sf.scenarios] == [
        "nvlink / tok/gpu=512",
        "nvlink / tok/gpu=1024",
        "pcie / tok/gpu=512",
        "pcie / tok/gpu=1024",
    ]
    assert sf.baseline.cluster == "h100-pcie-8" and sf.baseline.tokens_per_gpu == 512


def test_base_alone_is_one_scenario():
    sf = parse_scenarios(_doc(), "x.yaml")
    assert len(sf.scenarios) == 1 and sf.scenarios[0].name == "base" and sf.baseline_index == 0


@pytest.mark.parametrize(
    "doc, needle",
    [
        ({"base": {"cluster": "dgx-h100"}}, "x.yaml: base.model: missing"),
        (_doc(axes={"capacity_factor": [0]}), "x.yaml: axes.capacity_factor: must be > 0, got 0"),
        (_doc(axes={"capacity_factr": [1.0]}), "x.yaml: axes.capacity_factr: unknown field"),
        (_doc(axes={"drop_policy": ["random"]}), "x.yaml: axes.drop_policy: must be one of probs, position, reroute"),
        (_doc(axes={"tokens_per_gpu": []}), "x.yaml: axes.tokens_per_gpu: must be a non-empty list"),
        (_doc(axes={"tokens_per_gpu": [1, 1]}), "x.yaml: axes.tokens_per_gpu: repeated value"),
        (
            {"base": {"model": "m", "cluster": "c", "placement": "greedy"}},
            "x.yaml: base.placement: must be one of contiguous, round-robin, eplb, eplb-hierarchical, eplb-global, "
            "node-spread, ilp, got 'greedy'",
        ),
        (
            {"base": {"model": "m", "cluster": "c", "tokens_per_gpu": 1.5}},
            "x.yaml: base.tokens_per_gpu: must be an integer, got 1.5",
        ),
        ({"base": {"model": "m", "cluster": "c", "name": "b"}}, "x.yaml: base.name:"),
        (_doc(scenarios=[{"cluster": "x"}]), "x.yaml: scenarios[0].name: missing"),
        (_doc(scenarios=[{"name": "a"}, {"name": "a"}]), "x.yaml: scenarios: two scenarios are named 'a'"),
        (
            _doc(scenarios=[{"name": "a", "drop_policy": "probs"}], axes={"drop_policy": ["probs"]}),
            "x.yaml: scenarios[0].drop_policy: is also an axis",
        ),
        (_doc(baseline="nope"), "x.yaml: baseline: no scenario is named 'nope'"),
        (_doc(objective="cost"), "x.yaml: objective: must be one of"),
        (_doc(colour="red"), "x.yaml: colour: unknown field"),
        ({"base": {"model": "m", "cluster": "c", "layers": [3, 3]}}, "x.yaml: base.layers: repeated layer index"),
        ({"base": {"model": "m", "cluster": "c", "trace": "synthetic:"}}, "x.yaml: base.trace: synthetic trace"),
        ([1, 2], "x.yaml: <document>: must be a mapping"),
    ],
)
def test_errors_are_one_line_and_name_file_and_field(doc, needle):
    with pytest.raises(SpecError) as err:
        parse_scenarios(doc, "x.yaml")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(needle), msg


def test_load_scenarios_reports_yaml_errors_with_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("base:\n  model: [unclosed\n")
    with pytest.raises(SpecError, match=r"bad\.yaml: line \d+: malformed YAML"):
        load_scenarios(p)
    with pytest.raises(SpecError, match=r"missing\.yaml: file: no such file$"):
        load_scenarios(tmp_path / "missing.yaml")


def test_resolve_paths_relative_to_file(tmp_path):
    (tmp_path / "m.yaml").write_text("x: 1\n")
    sc = Scenario(model="m.yaml", cluster="dgx-h100", trace="synthetic:uniform")
    r = sc.resolve(tmp_path)
    assert r.model == str(tmp_path / "m.yaml")
    assert r.cluster == "dgx-h100" and r.trace == "synthetic:uniform"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_examples_parse(path):
    sf = load_scenarios(path)
    assert len(sf.scenarios) >= 2
    assert sf.title and sf.description
    raw = yaml.safe_load(path.read_text())
    assert "base" in raw


def test_include_base_prepends_base_as_baseline():
    sf = parse_scenarios(_doc(include_base=True, axes={"capacity_factor": [1.0, 1.25]}), "x.yaml")
    assert [s.name for s in sf.scenarios] == ["base", "cf=1", "cf=1.25"]
    assert sf.baseline_index == 0 and sf.baseline.capacity_factor is None
    with pytest.raises(SpecError, match="x.yaml: include_base: must be true or false"):
        parse_scenarios(_doc(include_base="yes"), "x.yaml")


def test_trace_slug_resolves_to_shipped_file(tmp_path):
    r = Scenario(model="olmoe-1b-7b", cluster="dgx-h100", trace="olmoe_c4").resolve(tmp_path)
    assert Path(r.trace) == REPO / "profiles" / "traces" / "olmoe_c4.npz"

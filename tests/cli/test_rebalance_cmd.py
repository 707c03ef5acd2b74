"""`moesim rebalance` end to end on shipped traces, and its bad-input errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moesim.specs import load_cluster, load_model
from moesim.traces.formats import load_trace
from moesim.traces.native import save_trace
from moesim.traces.synthetic import drift_trace, synthetic_trace
from tuner.engine_files import read_current, write_engine_file
from tuner.plan import place

ROOT = Path(__file__).resolve().parents[2]
TRACES = ROOT / "profiles" / "traces"
BASE = ["--model", "olmoe-1b-7b", "--cluster", "h100-2x8-ib400"]


def _run(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", "rebalance", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=300,
    )


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Path:
    """An SGLang map of an EPLB plan made on c4, as `moesim plan --sglang` would deploy it."""
    model, cluster = load_model("olmoe-1b-7b"), load_cluster("h100-2x8-ib400")
    c4 = load_trace(TRACES / "olmoe_c4.npz", model=model)
    p = place("eplb", model, cluster, c4, redundant_experts=16, engine="sglang-static")
    path = tmp_path_factory.mktemp("deployed") / "p_c4.json"
    write_engine_file("sglang-json", path, p.with_meta(layers=list(c4.layers)), model, cluster)
    return path


def test_rebalance_json_and_every_file(deployed, tmp_path) -> None:
    out, trt, sg = tmp_path / "r.yaml", tmp_path / "r_trt.yaml", tmp_path / "r.pt"
    r = _run(
        "--current",
        deployed,
        "--trace",
        TRACES / "olmoe_github.npz",
        *BASE,
        "--max-moves",
        16,
        "--json",
        "-o",
        out,
        "--export",
        f"trtllm={trt}",
        "--export",
        f"sglang-pt={sg}",
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert {"current", "full_replan", "points", "chosen", "curve", "written"} <= set(doc)
    chosen = doc["chosen"]
    assert 0 < chosen["moves"] <= 16 and chosen["step_gain_us"] > 0
    assert chosen["moves"] == sum(chosen["moves_per_layer"]) and len(chosen["moves_per_layer"]) == 3
    assert {"bytes_intra", "bytes_network", "transfer_s", "stall_s", "payoff_steps"} <= set(chosen)
    assert doc["full_replan"]["gain_fraction"] == 1.0
    assert doc["written"] == [str(out), str(trt), str(sg)]
    model, cluster = load_model("olmoe-1b-7b"), load_cluster("h100-2x8-ib400")
    maps = [read_current(p, model, cluster).phy2log for p in (out, trt, sg)]
    for m in maps[1:]:
        np.testing.assert_array_equal(m, maps[0])
    before = read_current(deployed, model, cluster).phy2log
    # only the trace's layers (0, 7, 15) changed; the others are as deployed
    changed = [i for i in range(before.shape[0]) if (before[i] != maps[0][i]).any()]
    assert set(changed) <= {0, 7, 15} and changed


def test_rebalance_table(deployed) -> None:
    r = _run("--current", deployed, "--trace", TRACES / "olmoe_github.npz", *BASE, "--target-gain", 0.8)
    assert r.returncode == 0, r.stderr
    assert "full replan (eplb)" in r.stdout and "chosen:" in r.stdout and "of the full replan's gain" in r.stdout


def test_trace_series(deployed, tmp_path) -> None:
    model = load_model("olmoe-1b-7b")
    c4 = load_trace(TRACES / "olmoe_c4.npz", model=model)
    for i, t in enumerate([c4, *drift_trace(c4, 0.2, seed=2, steps=3)]):
        save_trace(t, tmp_path / f"d{i}.npz")
    r = _run("--trace-series", tmp_path, "--current", deployed, *BASE, "--dump-steps", 500, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [x["steps"] for x in doc["intervals"]] == [500, 1000, 2000]
    assert doc["intervals"][-1]["never"] and len(doc["drift_tv"]) == 3
    assert "--eplb-rebalance-num-iterations" in doc["flags"]["sglang"]


def test_help_has_an_example() -> None:
    r = _run("--help")
    assert r.returncode == 0 and "Example: moesim rebalance --current p_c4.json" in r.stdout


def _bad_cases(deployed: Path, tmp: Path) -> list[tuple[list, str]]:
    mixtral = load_model("mixtral-8x7b")
    m_trace = tmp / "mixtral.npz"
    save_trace(synthetic_trace(mixtral, 256, with_topk_ids=False), m_trace)
    eight = tmp / "eight.json"
    olmoe = load_model("olmoe-1b-7b")
    c4 = load_trace(TRACES / "olmoe_c4.npz", model=olmoe)
    dgx = load_cluster("dgx-h100")
    p8 = place("eplb", olmoe, dgx, c4, redundant_experts=8, engine="sglang-static")
    write_engine_file("sglang-json", eight, p8.with_meta(layers=list(c4.layers)), olmoe, dgx)
    junk = tmp / "junk.json"
    junk.write_text('{"hello": 1}')
    mixed = tmp / "mixed"
    mixed.mkdir()
    save_trace(c4, mixed / "a.npz")
    save_trace(synthetic_trace(mixtral, 256, with_topk_ids=False), mixed / "b.npz")
    gh = TRACES / "olmoe_github.npz"
    return [
        (["--current", deployed, "--trace", m_trace], "mixtral.npz"),  # a trace of another model
        (["--current", eight, "--trace", gh], "eight.json"),  # 8 GPUs, not 16
        (["--current", junk, "--trace", gh], "junk.json: format"),
        (["--current", deployed, "--trace", gh, "--trace-series", mixed], "--trace/--trace-series"),
        (["--trace-series", mixed], "b.npz"),
        (["--trace-series", mixed, "-o", tmp / "out" / "x.yaml"], "writes no plan"),
        (["--trace", gh], "--current"),
        (["--current", deployed, "--trace", gh, "--max-moves", -1], "--max-moves"),
        (["--current", deployed, "--trace", gh, "--export", "bogus=x.json"], "bogus"),
        (["--current", deployed, "--trace", gh, "--replan", "magic"], "--replan"),
    ]


def test_bad_input_is_one_line_exit_2_nothing_written(deployed, tmp_path) -> None:
    cases = _bad_cases(deployed, tmp_path)
    for args, needle in cases:
        out = tmp_path / "out" / "r.yaml"
        out.parent.mkdir(exist_ok=True)
        r = _run(*args, *BASE, *(["-o", out] if "--trace" in args else []))
        assert r.returncode == 2, (args, r.stderr)
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and needle in lines[0], (args, r.stderr)
        assert not out.exists() and not list(out.parent.iterdir())

"""What-if sweeps: the shipped examples at small token counts, checked against direct `moesim simulate` calls.

Every scenario's numbers in results.json / results.csv must equal what `moesim simulate --json` prints for the
same inputs (model, cluster, trace, options, and for solved placements the same placement saved to YAML).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from moesim.errors import SpecError
from whatif.report import write_report
from whatif.scenario import load_scenarios, parse_scenarios
from whatif.sweep import PHASES, run_whatif

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "profiles" / "scenarios"
SMALL_TOKENS = 256


def shrink(name: str, tmp_path: Path, **base_overrides) -> Path:
    """A copy of a shipped example with small token counts, absolute trace paths and a short ILP limit."""
    doc = yaml.safe_load((EXAMPLES / name).read_text())
    base = doc["base"]
    base["tokens_per_gpu"] = SMALL_TOKENS
    base["ilp_time_limit_s"] = 5
    base.update(base_overrides)
    axes = doc.get("axes") or {}
    if "tokens_per_gpu" in axes:
        axes["tokens_per_gpu"] = [SMALL_TOKENS * (i + 1) for i in range(len(axes["tokens_per_gpu"]))]
        if "baseline" in doc:
            doc["baseline"] = doc["baseline"].replace("tok/gpu=4096", f"tok/gpu={SMALL_TOKENS}")
    for holder in [base, *(doc.get("scenarios") or [])]:
        trace = holder.get("trace", "")
        if trace and not trace.startswith("synthetic:"):
            holder["trace"] = str(REPO / trace)
    out = tmp_path / name
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def _placement_of(rec: dict):
    from moesim.placement import Placement

    p = rec["placement"]
    return Placement(
        num_gpus=p["num_gpus"],
        slots_per_gpu=p["slots_per_gpu"],
        num_experts=p["num_experts"],
        phy2log=np.array(p["phy2log"], dtype=np.int64),
        shares=np.array(p["shares"]),
        meta={"layers": p["layers"]},
    )


def direct_simulate(rec: dict, tmp_path: Path) -> dict:
    """`moesim simulate --json` for the same inputs as a what-if record (the CLI, not whatif.sweep).

    The CLI simulates every layer of a trace and draws ``min(T * G, 2^18)`` synthetic tokens; for a scenario
    restricted to ``layers`` or with its own ``trace_tokens`` the same call is made through the Python API.
    """
    from typer.testing import CliRunner

    from cli.main import app

    s = rec["settings"]
    cli_tokens = min(s["tokens_per_gpu"] * rec["num_gpus"], 1 << 18)
    if s["layers"] is not None or s["trace_tokens"] not in (None, cli_tokens):
        return direct_simulate_api(rec)  # the CLI has no --layers / synthetic token count
    args = [
        "simulate",
        "--model",
        s["model"],
        "--cluster",
        s["cluster"],
        "--tokens-per-gpu",
        str(s["tokens_per_gpu"]),
        "--drop-policy",
        s["drop_policy"],
        "--overlap-chunks",
        str(s["overlap_chunks"]),
        "--dispatch-dtype",
        s["dispatch_dtype"],
        "--combine-dtype",
        s["combine_dtype"],
        "--alltoall",
        s["alltoall"],
        "--weight-dtype",
        s["weight_dtype"],
        "--seed",
        str(s["trace_seed"]),
        "--json",
    ]
    if s["trace"].startswith("synthetic:"):
        args += ["--synthetic", s["trace"][len("synthetic:") :]]
    else:
        args += ["--trace", s["trace"]]
    if s["capacity_factor"] is not None:
        args += ["--capacity-factor", repr(s["capacity_factor"])]
    if not s["dedup"]:
        args.append("--no-dedup")
    if rec.get("placement"):
        from moesim.placement import save_placement

        path = tmp_path / f"placement_{rec['index']}.yaml"
        save_placement(_placement_of(rec), path)
        args += ["--placement", str(path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def direct_simulate_api(rec: dict) -> dict:
    """``moesim.simulate.simulate`` on the record's inputs, loaded here independently of whatif.sweep."""
    import dataclasses

    from moesim.options import SimOptions
    from moesim.simulate import default_placement, simulate
    from moesim.specs import load_cluster, load_model
    from moesim.traces.formats import load_trace
    from moesim.traces.synthetic import parse_synthetic, synthetic_trace

    s = rec["settings"]
    model, cluster = load_model(s["model"]), load_cluster(s["cluster"])
    if s["trace"].startswith("synthetic:"):
        params = dict(parse_synthetic(s["trace"][len("synthetic:") :]))
        params.setdefault("seed", s["trace_seed"])
        tokens = s["trace_tokens"] or min(s["tokens_per_gpu"] * cluster.num_gpus, 1 << 18)
        trace = synthetic_trace(
            model, tokens, layers=s["layers"], with_topk_ids=False, with_transitions=False, **params
        )
    else:
        full = load_trace(s["trace"])
        idx = [list(full.layers).index(x) for x in s["layers"]]
        trace = dataclasses.replace(
            full, layers=tuple(s["layers"]), counts=full.counts[idx], transitions=None, topk_ids=None
        )
    placement = (
        _placement_of(rec)
        if rec.get("placement")
        else default_placement(model.num_experts, cluster.num_gpus, len(trace.layers))
    )
    options = SimOptions(
        tokens_per_gpu=s["tokens_per_gpu"],
        capacity_factor=s["capacity_factor"],
        drop_policy=s["drop_policy"],
        overlap_chunks=s["overlap_chunks"],
        dispatch_dtype=s["dispatch_dtype"],
        combine_dtype=s["combine_dtype"],
        dedup=s["dedup"],
        alltoall=s["alltoall"],
        weight_dtype=s["weight_dtype"],
        ep_mode=s["ep_mode"],
    )
    from moesim.calibration.resolve import resolve_calibration

    cal = resolve_calibration(s["calibration"], cluster.gpu.slug)  # auto: the GPU's shipped calibration
    return json.loads(json.dumps(simulate(model, cluster, trace, placement, options, calibration=cal).to_dict()))


def check_outputs(run, out: Path, tmp_path: Path) -> None:
    """Files exist, agree with each other and with direct simulate calls."""
    for name in ("report.html", "report.md", "results.csv", "results.json"):
        assert (out / name).stat().st_size > 0, name
    doc = json.loads((out / "results.json").read_text())
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(doc["scenarios"]) == len(rows) == len(run.records)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2
    assert "src='http" not in html and 'src="http' not in html  # self-contained
    md = (out / "report.md").read_text()
    assert doc["best"] in md and doc["baseline"] in md

    ok = [r for r in doc["scenarios"] if "error" not in r]
    assert ok, "no scenario ran"
    base = next(r for r in doc["scenarios"] if r["is_baseline"])
    best = next(r for r in doc["scenarios"] if r["is_best"])
    obj = doc["objective"]
    if doc["objective_sense"] == "min":
        assert best[obj] == min(r[obj] for r in ok)
        assert doc["best_gain_vs_baseline"] == pytest.approx((base[obj] - best[obj]) / base[obj])
    else:
        assert best[obj] == max(r[obj] for r in ok)
        assert doc["best_gain_vs_baseline"] == pytest.approx((best[obj] - base[obj]) / base[obj])

    for rec, row in zip(doc["scenarios"], rows):
        assert row["name"] == rec["name"]
        if "error" in rec:
            assert row["error"] and not row["step_latency_us"]
            continue
        direct = direct_simulate(rec, tmp_path)
        # the same inputs give the same numbers, to the last bit
        assert rec["simulate"] == direct
        assert float(row["step_latency_us"]) == direct["step_latency_us"] == rec["step_latency_us"]
        s = rec["settings"]
        # phases: the tail GPU's, summed over layers and scaled to all MoE layers; sequential -> they add up
        if s["overlap_chunks"] == 1:
            assert sum(rec["phase_us"].values()) == pytest.approx(direct["moe_us"], rel=1e-9)
        for p in PHASES:
            assert float(row[f"{p}_us"]) == rec["phase_us"][p]
        assert rec["step_latency_us"] == pytest.approx(rec["moe_us"] + rec["attention_us"] + rec["dense_us"], rel=1e-12)
        assert rec["dropped_fraction"] == pytest.approx(direct["dropped_fraction"], abs=1e-15)
        # every kept assignment is computed on some GPU: sum of per-GPU load = T * G * k * (1 - dropped)
        top_k = rec["top_k"]
        expected = s["tokens_per_gpu"] * rec["num_gpus"] * top_k * (1 - rec["dropped_fraction"])
        assert sum(rec["gpu_load"]) == pytest.approx(expected, rel=1e-6)
        per_layer = [la["max_gpu_tokens"] / la["mean_gpu_tokens"] for la in direct["layers"]]
        assert max(rec["gpu_load_max"]) == pytest.approx(max(la["max_gpu_tokens"] for la in direct["layers"]))
        assert rec["load_imbalance"] == pytest.approx(np.mean(per_layer), rel=1e-12)
        if rec["dropped_fraction"] == 0:  # equal layer totals: the layer-averaged load is no less balanced
            assert max(rec["gpu_load"]) / np.mean(rec["gpu_load"]) <= rec["load_imbalance"] + 1e-9
        assert rec["tokens_per_s_per_gpu"] == pytest.approx(s["tokens_per_gpu"] / rec["step_latency_us"] * 1e6)
        scale = rec["num_moe_layers"] / len(direct["layers"])
        by_level = {"intra-node": 0.0, "inter-node": 0.0}
        for kind, nbytes in rec["traffic_bytes"].items():
            by_level[rec["link_level"][kind]] += nbytes
        assert by_level["inter-node"] == pytest.approx(
            scale * sum(la["network_bytes"] for la in direct["layers"]), rel=1e-12
        )
        assert by_level["intra-node"] == pytest.approx(
            scale * sum(la["nvlink_bytes"] for la in direct["layers"]), rel=1e-12
        )
        if rec["num_nodes"] == 1:
            assert list(rec["link_level"].values()) == ["intra-node"] and by_level["inter-node"] == 0.0


@pytest.mark.parametrize(
    "example, overrides",
    [
        ("nvlink_vs_pcie_mixtral.yaml", {}),
        ("capacity_olmoe.yaml", {}),
        ("ep_degree_deepseek_v3.yaml", {}),
    ],
)
def test_shipped_example_matches_direct_simulate(example, overrides, tmp_path):
    path = shrink(example, tmp_path, **overrides)
    sf = load_scenarios(path)
    run = run_whatif(sf, workers=1)
    out = tmp_path / "out"
    write_report(run, out, detail=True)  # check_outputs reruns solved placements from results.json
    check_outputs(run, out, tmp_path)


def test_placement_methods_example_with_solvers(tmp_path):
    """contiguous, round-robin, EPLB and ILP on a tiny instance: 2 recorded OLMoE layers, 5 s ILP limit."""
    path = shrink("placement_methods.yaml", tmp_path, layers=[0, 7])
    sf = load_scenarios(path)
    run = run_whatif(sf, workers=2)
    out = tmp_path / "out"
    write_report(run, out, detail=True, workers=2)
    check_outputs(run, out, tmp_path)
    by = {r["name"]: r for r in run.records}
    # a load-aware placement is never more imbalanced than the index-based one on the trace it was fitted to
    assert by["eplb +16 redundant"]["load_imbalance"] <= by["contiguous"]["load_imbalance"] + 1e-9
    assert by["ilp"]["load_imbalance"] <= by["contiguous"]["load_imbalance"] + 1e-9


def _small_sweep(tmp_path: Path) -> Path:
    doc = {
        "title": "cache and workers",
        "base": {"model": "olmoe-1b-7b", "cluster": "dgx-h100", "trace": "synthetic:zipf:1.2", "tokens_per_gpu": 128},
        "axes": {"capacity_factor": [None, 1.0, 1.5], "overlap_chunks": [1, 2]},
    }
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_cache_makes_repeat_identical_and_misses_on_change(tmp_path):
    sf = load_scenarios(_small_sweep(tmp_path))
    first = run_whatif(sf, workers=1)
    assert first.cache_hits == 0
    second = run_whatif(sf, workers=1)
    assert second.cache_hits == len(sf.scenarios)
    assert second.records == first.records
    # --no-cache recomputes (and finds the same numbers)
    third = run_whatif(sf, workers=1, use_cache=False)
    assert third.cache_hits == 0
    assert [r["simulate"] for r in third.records] == [r["simulate"] for r in first.records]
    # one changed setting misses exactly the scenarios it touches
    doc = yaml.safe_load(Path(sf.path).read_text())
    doc["axes"]["overlap_chunks"] = [1, 4]
    Path(sf.path).write_text(yaml.safe_dump(doc))
    fourth = run_whatif(load_scenarios(sf.path), workers=1)
    assert fourth.cache_hits == 3


def test_workers_give_the_same_records_as_serial(tmp_path):
    sf = load_scenarios(_small_sweep(tmp_path))
    serial = run_whatif(sf, workers=1, use_cache=False)
    parallel = run_whatif(sf, workers=2, use_cache=False)
    strip = [{k: v for k, v in r.items() if k != "timing_s"} for r in serial.records]
    assert strip == [{k: v for k, v in r.items() if k != "timing_s"} for r in parallel.records]
    assert parallel.best_index == serial.best_index


def test_infeasible_scenario_is_reported_not_fatal(tmp_path):
    # 64 experts + 3 redundant slots cannot be spread evenly over 8 GPUs: that scenario cannot run
    doc = {
        "base": {
            "model": "olmoe-1b-7b",
            "cluster": "dgx-h100",
            "trace": "synthetic:zipf:1.2",
            "tokens_per_gpu": 128,
            "placement": "eplb",
        },
        "axes": {"redundant_experts": [0, 3, 8]},
    }
    sf = parse_scenarios(doc, str(tmp_path / "x.yaml"))
    run = run_whatif(sf, workers=1)
    bad = run.records[1]
    assert "error" in bad and "redundant" in bad["error"]
    assert all("error" not in r for i, r in enumerate(run.records) if i != 1)
    out = tmp_path / "out"
    write_report(run, out)
    assert "cannot run" in (out / "report.html").read_text()
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert rows[1]["error"] and rows[1]["step_latency_us"] == ""


def test_bad_trace_names_file_and_scenario(tmp_path):
    doc = {"base": {"model": "olmoe-1b-7b", "cluster": "dgx-h100", "trace": "nowhere/missing.npz"}}
    sf = parse_scenarios(doc, str(tmp_path / "x.yaml"))
    with pytest.raises(SpecError) as err:
        run_whatif(sf)
    msg = str(err.value)
    assert "x.yaml" in msg and "scenario 'base'" in msg and "missing.npz" in msg and "\n" not in msg


def test_gain_sign_for_throughput_objective(tmp_path):
    doc = {
        "objective": "tokens_per_s_per_gpu",
        "base": {"model": "olmoe-1b-7b", "cluster": "dgx-h100", "trace": "synthetic:zipf:1.2", "tokens_per_gpu": 128},
        "axes": {"tokens_per_gpu": [128, 1024]},
    }
    run = run_whatif(parse_scenarios(doc, str(tmp_path / "x.yaml")))
    base, big = run.records
    # more tokens per step amortise the fixed costs: higher throughput, a positive gain
    assert big["tokens_per_s_per_gpu"] > base["tokens_per_s_per_gpu"]
    assert run.best_index == 1
    assert run.gain() == pytest.approx(big["tokens_per_s_per_gpu"] / base["tokens_per_s_per_gpu"] - 1)
    assert not math.isnan(run.gain())


def test_results_json_leaves_the_detail_out_unless_asked(tmp_path):
    """Default results.json: compact, no per-GPU arrays and no per-layer rows of the step, every other number
    as with --detail; with it the records are WhatifRun.records exactly (an EPLB sweep, so ``placement`` is
    among them)."""
    from whatif.report import DETAIL_FIELDS

    doc = {
        "base": {
            "model": "olmoe-1b-7b",
            "cluster": "dgx-h100",
            "trace": "synthetic:zipf:1.2",
            "tokens_per_gpu": 128,
            "placement": "eplb",
            "redundant_experts": 8,
        },
        "axes": {"capacity_factor": [None, 1.0]},
    }
    run = run_whatif(parse_scenarios(doc, str(tmp_path / "x.yaml")), workers=1)
    assert all(f in r for r in run.records for f in DETAIL_FIELDS)
    write_report(run, tmp_path / "plain")
    write_report(run, tmp_path / "full", detail=True)
    text = (tmp_path / "plain" / "results.json").read_text()
    plain = json.loads(text)
    assert text == json.dumps(plain, separators=(",", ":")) + "\n"  # compact: no indent, no spaces
    full = json.loads((tmp_path / "full" / "results.json").read_text())
    assert plain["detail"] is False and full["detail"] is True
    assert full["scenarios"] == json.loads(json.dumps(run.records))
    for p, f in zip(plain["scenarios"], full["scenarios"]):
        assert not set(DETAIL_FIELDS) & set(p) and "layers" not in p["simulate"]
        assert len(f["simulate"]["layers"]) == 16  # OLMoE's MoE layers
        assert p == {
            **{k: v for k, v in f.items() if k not in DETAIL_FIELDS},
            "simulate": {k: v for k, v in f["simulate"].items() if k != "layers"},
        }
    # the tables and report are the same either way
    for name in ("results.csv", "report.md", "report.html"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name


def test_failed_placement_is_solved_once(tmp_path, monkeypatch):
    """Scenarios sharing a placement that cannot be made (round-robin asked for replicas) reuse its error (same
    type, same message) instead of solving it again."""
    import whatif.sweep as whatif

    calls = []
    solve = whatif._solve_placement
    monkeypatch.setattr(whatif, "_solve_placement", lambda *a: calls.append(1) or solve(*a))
    monkeypatch.setattr(whatif, "_PLACEMENTS", {})
    doc = {
        "base": {
            "model": "deepseek-v3",
            "cluster": "h100-8x8-ib400",
            "trace": "synthetic:zipf:1.2",
            "tokens_per_gpu": 128,
            "layers": [3, 4],
            "redundant_experts": 64,
        },
        "axes": {"placement": ["eplb", "round-robin"], "capacity_factor": [None, 1.0, 1.5]},
    }
    run = run_whatif(parse_scenarios(doc, str(tmp_path / "x.yaml")), workers=1)
    failed = [r for r in run.records if "error" in r]
    assert [r["settings"]["placement"] for r in failed] == ["round-robin"] * 3
    assert len({(r["error"], r["error_kind"]) for r in failed}) == 1
    assert "no replicas" in failed[0]["error"] and failed[0]["error_kind"] == "PlacementError"
    assert len(calls) == 2  # eplb once, round-robin once


def test_eplb_memory_is_checked_in_the_scenarios_weight_dtype(tmp_path):
    """DeepSeek-V3 on 16 H100s: 16 expert slots x 58 layers fit at fp8 (41 GB) and not at bf16 (82 GB). EPLB
    and contiguous placements agree on it, as the simulator checks the weights in the scenario's dtype."""
    doc = {
        "base": {
            "model": "deepseek-v3",
            "cluster": "h100-2x8-ib400",
            "trace": "synthetic:zipf:1.2",
            "tokens_per_gpu": 128,
            "layers": [3, 4],
            "weight_dtype": "fp8",
        },
        "axes": {"placement": ["contiguous", "eplb"], "weight_dtype": ["fp8", "bf16"]},
    }
    run = run_whatif(parse_scenarios(doc, str(tmp_path / "x.yaml")), workers=1)
    by = {(r["settings"]["placement"], r["settings"]["weight_dtype"]): r for r in run.records}
    assert "error" not in by["contiguous", "fp8"] and "error" not in by["eplb", "fp8"]
    for placement in ("contiguous", "eplb"):
        assert "GPU memory" in by[placement, "bf16"]["error"], by[placement, "bf16"]

"""Report writing on hand-made records (no simulator): files, columns, self-containment, infeasible rows."""

from __future__ import annotations

import base64
import csv
import json
import re

import numpy as np
import pytest

from whatif.report import write_report
from whatif.scenario import parse_scenarios
from whatif.sweep import PHASES, WhatifRun


def make_run(n_cf: int = 3, fail: int | None = None) -> WhatifRun:
    doc = {
        "title": "Report <test> & co",
        "include_base": True,
        "base": {"model": "olmoe-1b-7b", "cluster": "h100-2x8-ib400", "tokens_per_gpu": 1024},
        "axes": {"capacity_factor": [1.0 + 0.25 * i for i in range(n_cf)], "drop_policy": ["probs", "reroute"]},
    }
    sf = parse_scenarios(doc, "/tmp/report_test.yaml")
    rng = np.random.default_rng(1)
    records = []
    for i, sc in enumerate(sf.scenarios):
        rec = {"name": sc.name, "index": i, "settings": sc.settings(), "num_gpus": 16}
        rec["axis_values"] = dict(sc.axis_values)
        if i == fail:
            rec["error"] = "placement: GPU memory: needs 90 GB"
        else:
            phase = {p: float(rng.uniform(10, 500)) for p in PHASES}
            load = rng.uniform(500, 1500, 16)
            step = sum(phase.values()) + 300.0
            rec.update(
                num_layers=16,
                step_latency_us=step,
                tokens_per_s_per_gpu=1024 / step * 1e6,
                phase_us=phase,
                attention_us=200.0,
                dense_us=100.0,
                moe_share=0.8,
                alltoall_share=0.3,
                dropped_fraction=0.0 if sc.capacity_factor is None else 0.1 / sc.capacity_factor,
                gpu_load=load.tolist(),
                gpu_load_max=(1.3 * load).tolist(),
                load_imbalance=float(1.3 * load.max() / load.mean()),
                traffic_bytes={"nvswitch": 1e9 * (i + 1), "ib": 5e8},
                link_level={"nvswitch": "intra-node", "ib": "inter-node"},
            )
        records.append(rec)
    ok = [i for i, r in enumerate(records) if "error" not in r]
    best = min(ok, key=lambda i: records[i]["step_latency_us"])
    for i, r in enumerate(records):
        r["is_baseline"], r["is_best"] = i == sf.baseline_index, i == best
    return WhatifRun(sf, records, sf.baseline_index, best, 0.1, 0)


def test_writes_all_files_consistently(tmp_path):
    run = make_run()
    paths = write_report(run, tmp_path / "out", scenario_text="base: {x: 1}\n")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["plots", "report.html", "report.md", "results.csv", "results.json"]
    assert not [p for p in out.rglob(".*")]  # no temp files left behind
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["name"] for r in rows] == [r["name"] for r in run.records]
    assert float(rows[run.best_index]["step_latency_us"]) == run.best["step_latency_us"]
    assert rows[run.best_index]["best"] == "1" and rows[0]["baseline"] == "1"
    assert float(rows[1]["gain_vs_baseline"]) == pytest.approx(run.gain(run.records[1]))
    assert float(rows[3]["traffic_nvswitch_bytes"]) == 4e9 and float(rows[3]["traffic_ib_bytes"]) == 5e8
    doc = json.loads((out / "results.json").read_text())
    assert doc["best"] == run.best["name"] and doc["baseline"] == "base"
    assert doc["best_gain_vs_baseline"] == pytest.approx(run.gain())
    # four plots for a capacity sweep, each a real PNG, embedded in the HTML
    assert {k for k in paths if k.startswith("plot:")} == {
        "plot:latency",
        "plot:gpu_load",
        "plot:capacity",
        "plot:traffic",
    }
    html = (out / "report.html").read_text()
    imgs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(imgs) == 4
    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in imgs)
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert "Report &lt;test&gt; &amp; co" in html  # escaped
    md = (out / "report.md").read_text()
    assert "![Step latency by phase](plots/latency.png)" in md
    # two axes, no named variants: rows are numbered, the columns carry the values, the summary the name
    assert f"| {run.best_index + 1} **(best)** |" in md and f"Best: {run.best['name']}" in md


def test_infeasible_rows_are_listed_and_left_out_of_plots(tmp_path):
    run = make_run(fail=2)
    write_report(run, tmp_path)
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert rows[2]["error"].startswith("placement: GPU memory") and rows[2]["step_latency_us"] == ""
    html = (tmp_path / "report.html").read_text()
    assert "cannot run" in html and "needs 90 GB" in html


def test_many_scenarios_show_best_subset_in_bar_charts(tmp_path):
    run = make_run(n_cf=30)  # 1 + 60 scenarios
    write_report(run, tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert "Showing the 40 best of 61 scenarios" in html
    assert len(list(csv.DictReader((tmp_path / "results.csv").open()))) == 61


def test_plot_workers_write_the_same_files(tmp_path):
    """Figures drawn in two worker processes (without fork: in-process): the same bytes in every file as drawn
    in-process."""
    run = make_run()
    serial = write_report(run, tmp_path / "serial", scenario_text="x\n")
    pooled = write_report(run, tmp_path / "pooled", scenario_text="x\n", workers=2)
    assert list(serial) == list(pooled)
    for key, path in serial.items():
        assert path.read_bytes() == pooled[key].read_bytes(), key


def test_results_json_compact_and_detail_on_request(tmp_path):
    from whatif.report import DETAIL_FIELDS

    run = make_run()
    run.records[1]["placement"] = {"num_gpus": 16, "phy2log": [list(range(16))], "shares": [[1.0] * 16]}
    write_report(run, tmp_path / "plain")
    write_report(run, tmp_path / "full", detail=True)
    text = (tmp_path / "plain" / "results.json").read_text()
    plain, full = json.loads(text), json.loads((tmp_path / "full" / "results.json").read_text())
    assert text == json.dumps(plain, separators=(",", ":")) + "\n"  # compact: no indent, no spaces
    assert (plain["detail"], full["detail"]) == (False, True)
    assert full["scenarios"] == run.records
    assert full["scenarios"][1]["placement"]["phy2log"] == [list(range(16))]
    for p, f in zip(plain["scenarios"], full["scenarios"]):
        assert not set(DETAIL_FIELDS) & set(p)
        assert p == _stripped(f)


def test_the_report_process_never_imports_matplotlib(tmp_path):
    """With plot workers (fork) only they import matplotlib; the PNGs still land in plots/ and the HTML."""
    import pickle
    import subprocess
    import sys

    if "fork" not in __import__("multiprocessing").get_all_start_methods():
        pytest.skip("no fork: the figures are drawn in-process")
    (tmp_path / "run.pkl").write_bytes(pickle.dumps(make_run()))
    code = (
        "import pickle, sys\n"
        "from whatif.report import write_report\n"
        f"run = pickle.loads(open({str(tmp_path / 'run.pkl')!r}, 'rb').read())\n"
        f"paths = write_report(run, {str(tmp_path / 'out')!r}, workers=2)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert len(list((tmp_path / "out" / "plots").glob("*.png"))) == 4
    assert (tmp_path / "out" / "report.html").read_text().count("data:image/png;base64,") == 4


def _stripped(record: dict) -> dict:
    """What results.json keeps of a record without --detail (written out here, not taken from whatif.report)."""
    out = {k: v for k, v in record.items() if k not in ("gpu_load", "gpu_load_max", "placement")}
    if isinstance(out.get("simulate"), dict):
        out["simulate"] = {k: v for k, v in out["simulate"].items() if k != "layers"}
    return out

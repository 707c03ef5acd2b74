"""`moesim whatif` on the command line: table, files, --json, one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOESIM_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def sweep(tmp_path) -> Path:
    doc = {
        "title": "NVLink vs PCIe (small)",
        "baseline": "dgx-h100",
        "base": {"model": "mixtral-8x7b", "cluster": "dgx-h100", "trace": "synthetic:zipf:1.2", "tokens_per_gpu": 256},
        "axes": {"cluster": ["dgx-h100", "h100-pcie-8"]},
    }
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def test_whatif_prints_table_and_writes_files(sweep, tmp_path):
    out = tmp_path / "report"
    res = CliRunner().invoke(app, ["whatif", str(sweep), "-o", str(out), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "NVLink vs PCIe (small)" in res.stdout
    assert "Best:" in res.stdout and "Baseline: dgx-h100" in res.stdout
    for name in ("report.html", "report.md", "results.csv", "results.json"):
        assert (out / name).is_file()
    doc = json.loads((out / "results.json").read_text())
    # NVSwitch moves the all-to-all faster than PCIe: the baseline is the best here
    assert doc["best"] == "dgx-h100"
    pcie = next(r for r in doc["scenarios"] if r["name"] == "h100-pcie-8")
    nvl = next(r for r in doc["scenarios"] if r["name"] == "dgx-h100")
    assert pcie["phase_us"]["dispatch"] > nvl["phase_us"]["dispatch"]


def test_whatif_json_and_cache(sweep, tmp_path):
    out = tmp_path / "report"
    first = CliRunner().invoke(app, ["whatif", str(sweep), "-o", str(out), "--json"])
    assert first.exit_code == 0, first.output
    doc = json.loads(first.stdout)
    assert doc["baseline"] == "dgx-h100" and doc["cache_hits"] == 0 and len(doc["scenarios"]) == 2
    again = json.loads(CliRunner().invoke(app, ["whatif", str(sweep), "-o", str(out), "--json"]).stdout)
    assert again["cache_hits"] == 2
    assert again["scenarios"] == doc["scenarios"]
    fresh = json.loads(CliRunner().invoke(app, ["whatif", str(sweep), "-o", str(out), "--json", "--no-cache"]).stdout)
    assert fresh["cache_hits"] == 0 and fresh["scenarios"] == doc["scenarios"]


def test_bad_scenario_file_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: {model: mixtral-8x7b, cluster: dgx-h100}\naxes: {capacity_factor: [-1]}\n")
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "whatif", str(bad), "-o", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("moesim: error: ") and "bad.yaml: axes.capacity_factor: must be > 0" in lines[0]
    assert not out.exists()  # nothing written on error


def test_help_shows_an_example():
    res = CliRunner().invoke(app, ["whatif", "--help"])
    assert res.exit_code == 0
    assert "moesim whatif profiles/scenarios/" in res.stdout


def test_detail_flag_keeps_the_per_gpu_arrays_and_layer_rows(sweep, tmp_path):
    from whatif.report import DETAIL_FIELDS

    plain, full = tmp_path / "plain", tmp_path / "full"
    res = CliRunner().invoke(app, ["whatif", str(sweep), "-o", str(plain), "--workers", "2"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["whatif", str(sweep), "-o", str(full), "--workers", "2", "--detail"])
    assert res.exit_code == 0, res.output
    p, f = (json.loads((d / "results.json").read_text()) for d in (plain, full))
    assert (p["detail"], f["detail"]) == (False, True)
    assert all("gpu_load" in r and "gpu_load_max" in r for r in f["scenarios"])
    assert not any(set(DETAIL_FIELDS) & set(r) for r in p["scenarios"])
    assert all(r["simulate"]["layers"] for r in f["scenarios"])
    assert not any("layers" in r["simulate"] for r in p["scenarios"])
    strip = [
        {
            **{k: v for k, v in r.items() if k not in DETAIL_FIELDS},
            "simulate": {k: v for k, v in r["simulate"].items() if k != "layers"},
        }
        for r in f["scenarios"]
    ]
    assert p["scenarios"] == strip  # the second run is served from the cache: the same numbers
    assert len(list((plain / "plots").glob("*.png"))) >= 2
    # --help documents the flag and every field it keeps
    help_text = " ".join(CliRunner().invoke(app, ["whatif", "--help"], env={"COLUMNS": "200"}).stdout.split())
    assert "--detail" in help_text and all(field in help_text for field in (*DETAIL_FIELDS, "simulate.layers"))

"""``moesim validate`` on the committed stratified sample of AIConfigurator's H100 rows (held out by shape).

The gate: every family's held-out MAPE must stay under the bound below. The full tables are the benchmark
(``moesim validate --measured <table> --folds 4``); this sample keeps CI honest without the 81 MB wheel.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moesim.validate import run_validation, summarise

SAMPLE = Path(__file__).resolve().parents[2] / "profiles" / "measured" / "samples" / "h100_sxm_sample.jsonl"
# Held-out MAPE gates on the sample (%, 4 folds by shape): the targets (fused MoE 10%, communication
# 15%) plus the extra variance of fitting on ~200 rows instead of ~16k.
GATES = {"fused_moe": 15.0, "deepep_normal": 17.0, "deepep_ll": 15.0, "nccl": 30.0}


@pytest.fixture(scope="module")
def summary() -> dict:
    return summarise(run_validation([SAMPLE], calibration="none", folds=4))


def test_sample_has_provenance() -> None:
    recs = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    assert 300 <= len(recs) <= 1200
    for r in recs:
        prov = r["provenance"]
        assert prov["package"] == "aiconfigurator-core" and prov["package_version"] and prov["table"]
        assert r["table"] == prov["table"] and isinstance(r["row"], int)


def test_held_out_error_within_gate(summary: dict) -> None:
    seen = set()
    for fam in summary["families"]:
        kind = fam["family"].split()[0]
        seen.add(kind)
        assert fam["unpredicted"] == 0, fam["family"]
        assert fam["mape_pct"] < GATES[kind], (fam["family"], fam["mape_pct"])
    assert seen == set(GATES)


def test_every_fitted_row_is_held_out() -> None:
    val = run_validation([SAMPLE], calibration="none", folds=4)
    by_shape: dict[tuple, set] = {}
    for r in val.rows:
        assert r["fold"] is not None  # every sample kind is fitted, so every row was predicted held out
        if r["family"].startswith("fused_moe"):
            key = (r["hidden"], r["intermediate"], r["num_experts"], r["top_k"])
            by_shape.setdefault(key, set()).add(r["fold"])
    assert all(len(folds) == 1 for folds in by_shape.values())  # a shape never straddles folds


def test_uncalibrated_model_is_far_off() -> None:
    """Without folds and without a calibration, the roofline is what the issue measured: it under-predicts."""
    s = summarise(run_validation([SAMPLE], calibration="none"))
    fused = [f for f in s["families"] if f["family"].startswith("fused_moe")]
    assert all(f["bias_pct"] < -15 for f in fused)
    assert all(f["unpredicted"] == f.get("rows", 0) + f["unpredicted"] for f in s["families"] if "nccl" in f["family"])


def test_cli_rows_and_json(tmp_path: Path) -> None:
    rows = tmp_path / "r.csv"
    out = subprocess.run(
        [sys.executable, "-m", "cli", "validate", "--measured", str(SAMPLE), "--folds", "2",
         "--calibration", "none", "--rows", str(rows), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    doc = json.loads(out.stdout)
    assert doc["folds"] == 2 and len(doc["worst"]) == 10
    lines = rows.read_text().splitlines()
    assert lines[0] == "table,row,family,gpu,measured_us,predicted_us,fold"
    assert len(lines) == 1 + sum(1 for _ in SAMPLE.read_text().splitlines())


@pytest.mark.parametrize(
    "content, needle",
    [
        (
            '{"kind": "nccl", "op": "alltoall", "num_gpus": 8, "message_bytes": 1024, "device_name": "NVIDIA H200", '
            '"median_us": 0}',
            "line 1.median_us: latency must be a positive number",
        ),
        (
            '{"kind": "nccl", "op": "alltoall", "num_gpus": 8, "device_name": "x", "median_us": 3}',
            "line 1.message_bytes: missing",
        ),
        ("not json", "line 1: bad JSON"),
    ],
)
def test_bad_records_exit_2_and_write_nothing(tmp_path: Path, content: str, needle: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content + "\n")
    rows = tmp_path / "r.csv"
    out = subprocess.run(
        [sys.executable, "-m", "cli", "validate", "--measured", str(bad), "--rows", str(rows)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 2 and needle in out.stderr and str(bad) in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not rows.exists()


def test_unknown_table_and_missing_file(tmp_path: Path) -> None:
    odd = tmp_path / "gemm_perf.parquet"
    odd.write_bytes(b"PAR1")
    for path, needle in ((odd, "unknown AIConfigurator table"), (tmp_path / "nope.jsonl", "no such file")):
        out = subprocess.run([sys.executable, "-m", "cli", "validate", "--measured", str(path)],
                             capture_output=True, text=True)  # fmt: skip
        assert out.returncode == 2 and needle in out.stderr

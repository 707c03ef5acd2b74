"""cli.validate_cmd: ``moesim validate`` and ``moesim calibrate`` on a small slice of the committed H100 sample
(36 vLLM fused-MoE rows of 6 shapes, 8 NCCL rows): the JSON document and the files they write against the library
they wrap, the printed tables, and their bad-input errors (one line, exit 2, nothing written)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from moesim.calibration.file_format import load_calibration
from moesim.validate import family, run_validation, summarise
from tests.cli.cli_harness import assert_one_line_error, run_cli

SAMPLE = Path(__file__).resolve().parents[2] / "profiles" / "measured" / "samples" / "h100_sxm_sample.jsonl"


def _sample() -> list[dict]:
    return [json.loads(line) for line in SAMPLE.read_text().splitlines()]


def _write(path: Path, recs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


@pytest.fixture(scope="module")
def records() -> list[dict]:
    recs = _sample()
    fused = [r for r in recs if r["kind"] == "fused_moe" and r["distribution"] == "balanced"][:36]
    nccl = [r for r in recs if r["kind"] == "nccl"][:8]
    return fused + nccl


@pytest.fixture
def small(tmp_path, records) -> Path:
    return _write(tmp_path / "small.jsonl", records)


def test_validate_json_rows_and_plot(small, records, tmp_path, capsys) -> None:
    rows, plot = tmp_path / "r.csv", tmp_path / "p.png"
    code, out, err = run_cli(
        ["validate", "--measured", small, "--calibration", "none", "--folds", "2", "--rows", rows, "--plot", plot,
         "--json"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert doc["folds"] == 2
    assert doc["calibrations"] == {"h100-sxm": "uncalibrated; fitted rows: 2-fold by shape"}
    assert doc["tables"] == [{"table": str(small), "kind": "records", "rows": 44}]
    # every record is counted once, under its family
    counted = {f["family"]: f.get("rows", 0) + f["unpredicted"] for f in doc["families"]}
    assert counted == dict(Counter(family(r) for r in records))
    assert {f["gpu"] for f in doc["families"]} == {"h100-sxm"}
    # the document is the library's summary of the same run
    assert doc == json.loads(json.dumps(summarise(run_validation([small], calibration="none", folds=2)), default=str))
    worst = [abs(w["error_pct"]) for w in doc["worst"]]
    assert len(worst) == 10 and worst == sorted(worst, reverse=True)
    # one CSV line per record, measured times as given
    with rows.open() as f:
        lines = list(csv.reader(f))
    assert lines[0] == ["table", "row", "family", "gpu", "measured_us", "predicted_us", "fold"]
    assert len(lines) == 1 + len(records)
    for line, rec in zip(lines[1:], records, strict=True):
        assert line[2] == family(rec) and float(line[4]) == pytest.approx(rec["median_us"], abs=1e-4)
        assert line[6] in ("0", "1")  # every row of this slice is fitted, so predicted held out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_validate_shipped_calibration_beats_none(small, capsys) -> None:
    docs = {}
    for cal in ("auto", "none"):
        code, out, err = run_cli(["validate", "--measured", small, "--calibration", cal, "--json"], capsys)
        assert code == 0, err
        docs[cal] = {f["family"]: f for f in json.loads(out)["families"]}
    assert json.loads(out)["folds"] is None
    fused = "fused_moe vllm bf16 balanced"
    # the uncalibrated roofline under-predicts fused MoE; the shipped H100 calibration is fitted on these tables
    assert docs["none"][fused]["bias_pct"] < -15
    assert docs["auto"][fused]["mape_pct"] < docs["none"][fused]["mape_pct"] / 2


def test_validate_prints_the_tables(small, capsys) -> None:
    code, out, err = run_cli(["validate", "--measured", small, "--calibration", "none", "--folds", "2"], capsys)
    assert code == 0, err
    assert out.startswith("h100-sxm: calibration uncalibrated; fitted rows: 2-fold by shape")
    assert "error per family (e = predicted / measured - 1)" in out and "ten worst rows" in out
    for fam in ("fused_moe vllm bf16 balanced", "nccl alltoall 2gpu half"):
        assert fam in out
    assert "h100-sxm fused_moe vllm bf16 balanced by tokens: " in out  # the per-bucket breakdown line


def test_validate_a_calibration_from_calibrate(small, tmp_path, capsys) -> None:
    cal = tmp_path / "cal.json"
    code, _, err = run_cli(["calibrate", "--measured", small, "-o", cal, "--folds", "0"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["validate", "--measured", small, "--calibration", cal, "--json"], capsys)
    assert code == 0, err
    fused = next(f for f in json.loads(out)["families"] if f["family"].startswith("fused_moe"))
    assert fused["unpredicted"] == 0 and fused["mape_pct"] < 15  # in-sample: fitted on these very rows


@pytest.mark.parametrize(
    "extra,needles",
    [
        ([], ["moesim validate: Missing option '--measured'"]),  # typer makes the list option required
        (["--measured", "X", "--folds", "1"], ["--folds: value: must be >= 2, got 1"]),
        (["--measured", "X", "--folds", "0"], ["--folds: value: must be >= 2, got 0"]),
        (["--measured", "X", "--rows", "{tmp}/no/r.csv"], ["{tmp}/no/r.csv: path: its folder does not exist"]),
        (["--measured", "X", "--plot", "{tmp}/no/p.png"], ["{tmp}/no/p.png: path: its folder does not exist"]),
        (["--measured", "{tmp}/none.jsonl"], ["{tmp}/none.jsonl: measured: no such file or folder"]),
        (["--measured", "{tmp}/empty"], ["{tmp}/empty: measured: folder holds no measured tables"]),
    ],
    ids=["no-table", "folds-1", "folds-0", "rows-folder", "plot-folder", "missing", "empty-folder"],
)
def test_validate_bad_input(extra, needles, small, tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    args = [str(a).replace("{tmp}", str(tmp_path)).replace("X", str(small)) for a in extra]
    code, out, err = run_cli(["validate", *args], capsys)
    assert_one_line_error(code, err, *(n.replace("{tmp}", str(tmp_path)) for n in needles))
    assert out == "" and not (tmp_path / "no").exists()


def test_validate_cmd_with_no_table_called_directly() -> None:
    from cli.validate_cmd import validate_cmd
    from moesim.errors import SpecError

    with pytest.raises(SpecError, match=r"^--measured: value: give at least one measured table$"):
        validate_cmd([])


def test_validate_bad_record_names_file_and_line(tmp_path, records, capsys) -> None:
    bad = dict(records[0])
    del bad["top_k"]
    path = _write(tmp_path / "bad.jsonl", [records[1], bad])
    rows = tmp_path / "r.csv"
    code, out, err = run_cli(["validate", "--measured", path, "--rows", rows], capsys)
    assert_one_line_error(code, err, f"{path}: line 2.top_k: missing")
    assert not rows.exists()


def test_calibrate_writes_the_fit_and_its_held_out_error(small, tmp_path, capsys) -> None:
    out_file = tmp_path / "cal.json"
    code, out, err = run_cli(["calibrate", "--measured", small, "-o", out_file, "--folds", "2"], capsys)
    assert code == 0, err
    cal = load_calibration(out_file)
    assert cal.fused_moe is not None and cal.nccl is not None
    assert cal.deepep_normal is None and cal.deepep_ll is None  # no DeepEP rows in the slice
    assert cal.device_name == "NVIDIA H100 80GB HBM3" and cal.source == str(small)
    lines = out.splitlines()
    assert lines[0] == f"wrote {out_file}: {cal.describe}"
    # held out = what `moesim validate --calibration none --folds 2` reports, rounded
    summary = summarise(run_validation([small], calibration="none", folds=2))
    expect = {
        f["family"]: {k: round(f[k], 2) for k in ("rows", "mape_pct", "median_pct", "bias_pct")}
        for f in summary["families"]
    }
    assert cal.held_out == {**expect, "method": "2-fold by model shape (moesim validate --folds 2)"}
    fused = expect["fused_moe vllm bf16 balanced"]
    assert (
        f"  held out fused_moe vllm bf16 balanced: MAPE {fused['mape_pct']:.1f}% bias {fused['bias_pct']:+.1f}% "
        f"(36 rows)"
    ) in lines
    assert len(lines) == 1 + 2  # one line per held-out family, none for "method"


def test_calibrate_json_is_the_file_written(small, tmp_path, capsys) -> None:
    out_file = tmp_path / "cal.json"
    code, out, err = run_cli(["calibrate", "--measured", small, "-o", out_file, "--folds", "0", "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc == json.loads(out_file.read_text())
    assert doc["schema"] == 2 and doc["gpu"] == "h100-sxm" and doc["held_out"] == {}  # --folds 0: no held-out run
    assert doc["tables"] == [{"table": str(small), "kind": "records", "rows": 44}]


def test_calibrate_into_a_folder_writes_calibration_json(small, tmp_path, capsys) -> None:
    folder = tmp_path / "h100"
    folder.mkdir()
    code, _, err = run_cli(["calibrate", "--measured", small, "-o", folder, "--folds", "0"], capsys)
    assert code == 0, err
    assert load_calibration(folder / "calibration.json").fused_moe is not None


def _calibrate_error(tmp_path, capsys, recs, *needles) -> None:
    path = _write(tmp_path / "t.jsonl", recs)
    out_file = tmp_path / "cal.json"
    code, out, err = run_cli(["calibrate", "--measured", path, "-o", out_file, "--folds", "0"], capsys)
    assert_one_line_error(code, err, *needles)
    assert out == "" and not out_file.exists()


def test_calibrate_refuses_two_devices(tmp_path, records, capsys) -> None:
    other = [{**r, "gpu": "h200-sxm"} for r in records[36:]]
    _calibrate_error(tmp_path, capsys, records[:36] + other, "--measured: device: the tables must hold exactly one")
    _calibrate_error(tmp_path, capsys, records[:36] + other, "['h100-sxm', 'h200-sxm']")


def test_calibrate_refuses_records_of_no_known_device(tmp_path, records, capsys) -> None:
    unknown = [{k: v for k, v in r.items() if k != "gpu"} for r in records]
    _calibrate_error(tmp_path, capsys, unknown, "--measured: device:", "got ['None']")


def test_calibrate_needs_fused_moe_rows(tmp_path, records, capsys) -> None:
    _calibrate_error(tmp_path, capsys, records[36:], "--measured: tables: no vLLM BF16 Triton fused-MoE rows")


def test_calibrate_output_folder_must_exist(small, tmp_path, capsys) -> None:
    out_file = tmp_path / "no" / "cal.json"
    code, out, err = run_cli(["calibrate", "--measured", small, "-o", out_file], capsys)
    assert_one_line_error(code, err, f"{out_file}: path: its folder does not exist")
    assert not out_file.parent.exists()


@pytest.mark.parametrize("command", ["validate", "calibrate"])
def test_help_ends_with_the_example(command, capsys) -> None:
    code, out, _ = run_cli([command, "--help"], capsys)
    assert code == 0
    tail = " ".join(out.rsplit("╯", 1)[-1].split())
    assert tail.startswith(f"Example: moesim {command} --measured")

"""moesim.calibration (model, file_format, fit, resolve): file round trip, interpolation, effect on the roofline,
fitting, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from moesim.calibration.file_format import calibration_to_dict, load_calibration, save_calibration
from moesim.calibration.fit import fit_calibration
from moesim.calibration.model import Calibration, Curve
from moesim.compute import gemm_us, grouped_gemm_us
from moesim.errors import SpecError


@pytest.fixture(scope="module")
def gpu():
    from moesim.specs import load_gpu

    return load_gpu("h100-sxm")


def flat(eff: float, launch_us: float = 2.0) -> Calibration:
    """The same efficiency for every GEMM and copy size."""
    return Calibration(
        device_name="test",
        source="synthetic",
        fitted="2025-01-01",
        dtype="bf16",
        launch_overhead_us=launch_us,
        gemm_fallback=Curve((0.0,), (eff,)),
        hbm=Curve((0.0,), (eff,)),
    )


def sample() -> Calibration:
    return Calibration(
        device_name="NVIDIA_H100_80GB_HBM3",
        source="profiles/measured/NVIDIA_H100_80GB_HBM3/matmul.jsonl",
        fitted="2025-06-01",
        dtype="bf16",
        launch_overhead_us=3.5,
        gemm_fallback=Curve((0.0, 6.0, 12.0), (0.01, 0.4, 0.8)),
        hbm=Curve((10.0, 20.0, 30.0), (0.05, 0.6, 0.9)),
        gemm_shapes=((4096, 7168, Curve((0.0, 8.0), (0.02, 0.7))), (7168, 2048, Curve((4.0,), (0.5,)))),
    )


def test_round_trip(tmp_path) -> None:
    cal = sample()
    written = save_calibration(cal, tmp_path / "calibration.json")
    assert load_calibration(written) == cal
    assert load_calibration(tmp_path) == cal  # the directory holding it
    assert not [p for p in tmp_path.iterdir() if p.name != "calibration.json"]  # no temp file left
    # a directory as the target gets calibration.json inside it
    sub = tmp_path / "dev"
    sub.mkdir()
    assert save_calibration(cal, sub) == sub / "calibration.json"
    assert load_calibration(sub) == cal


def test_interpolation_at_between_and_beyond_knots() -> None:
    cal = sample()
    fb = cal.gemm_fallback
    # at the knots (m = 2**x)
    assert np.allclose(fb(np.array([1.0, 64.0, 4096.0])), [0.01, 0.4, 0.8])
    # between: linear in log2(m); m = 8 is halfway from 2**0 to 2**6 in log2 => 0.01 + 0.5 * 0.39
    assert float(fb(8.0)) == pytest.approx(0.01 + 0.5 * 0.39)
    assert float(fb(2.0**9)) == pytest.approx(0.6)
    # clamped at both ends (m < 1 counts as 1)
    assert np.allclose(fb(np.array([0.0, 0.5, 1e9])), [0.01, 0.01, 0.8])
    # vectorised, shape kept
    m = np.arange(1, 25, dtype=float).reshape(2, 3, 4)
    assert cal.gemm_efficiency(m, 1, 1).shape == (2, 3, 4)
    assert np.allclose(cal.hbm_efficiency(np.array([2.0**10, 2.0**25, 2.0**40])), [0.05, 0.75, 0.9])


def test_shape_lookup() -> None:
    cal = sample()
    assert float(cal.gemm_efficiency(256.0, 4096, 7168)) == pytest.approx(0.7)  # its own table
    assert float(cal.gemm_efficiency(256.0, 7168, 2048)) == pytest.approx(0.5)
    # n*k within a factor 4 of 4096*7168: the nearest table
    assert float(cal.gemm_efficiency(256.0, 4096, 8192)) == pytest.approx(0.7)
    assert float(cal.gemm_efficiency(256.0, 4096, 4096)) == pytest.approx(0.5)  # nearer 7168 x 2048
    # far from every table (attention's head_dim GEMMs): the fallback
    assert float(cal.gemm_efficiency(64.0, 128, 128)) == pytest.approx(0.4)
    assert float(flat(0.3).gemm_efficiency(64.0, 4096, 7168)) == pytest.approx(0.3)


def test_half_efficiency_doubles_compute_bound_gemm(gpu) -> None:
    m, n, k = 8192, 8192, 8192
    full = float(gemm_us(gpu, m, n, k, calibration=flat(1.0)))
    half = float(gemm_us(gpu, m, n, k, calibration=flat(0.5)))
    assert full == pytest.approx(2 * m * n * k / (gpu.bf16_tflops * 1e6), rel=1e-12)
    assert half == pytest.approx(2 * full, rel=1e-12)
    # the calibration's launch overhead is the one a grouped GEMM pays
    t = float(grouped_gemm_us(gpu, np.array([m]), n, k, calibration=flat(1.0, launch_us=7.0)))
    assert t == pytest.approx(full + 7.0)


def synthetic_records(gpu, gemm_eff, hbm_eff) -> list[dict]:
    """Records whose times follow the given efficiency functions exactly, several repeats per octave bin."""
    records = []
    for n, k in ((4096, 7168), (7168, 2048)):
        for m in 2.0 ** np.arange(0, 15):
            t = 2 * m * n * k / (gpu.bf16_tflops * 1e6 * gemm_eff(m, n))
            records.append(
                {
                    "kind": "gemm",
                    "m": int(m),
                    "n": n,
                    "k": k,
                    "dtype": "bf16",
                    "median_us": t,
                    "device_name": "NVIDIA_H100_80GB_HBM3",
                }
            )
    for b in 2.0 ** np.arange(10, 32, 2):
        records.append({"kind": "copy", "bytes": int(b), "median_us": b / (gpu.hbm_bw_gb_s * 1e3 * hbm_eff(b))})
    records.append({"kind": "launch", "median_us": 2.5})
    records.append({"kind": "fused_moe", "median_us": 100.0})  # ignored
    records.append({"kind": "gemm", "m": 64, "n": 64, "k": 64, "dtype": "fp8", "median_us": 1e-9})  # ignored
    return records


def test_fit_recovers_known_efficiencies(gpu) -> None:
    def gemm_eff(m, n):
        return min(0.85, 0.02 * m**0.5) * (1.0 if n == 4096 else 0.9)

    def hbm_eff(b):
        return min(0.92, 0.08 * np.log2(b) - 0.7)

    cal = fit_calibration(synthetic_records(gpu, gemm_eff, hbm_eff), gpu, source="synthetic.jsonl", fitted="2025-06-01")
    assert cal.device_name == "NVIDIA_H100_80GB_HBM3" and cal.launch_overhead_us == pytest.approx(2.5)
    assert {(n, k) for n, k, _ in cal.gemm_shapes} == {(4096, 7168), (7168, 2048)}
    for m in 2.0 ** np.arange(0, 15):
        for n, k in ((4096, 7168), (7168, 2048)):
            assert float(cal.gemm_efficiency(m, n, k)) == pytest.approx(gemm_eff(m, n), rel=0.01)
    for b in 2.0 ** np.arange(10, 32, 2):
        assert float(cal.hbm_efficiency(b)) == pytest.approx(hbm_eff(b), rel=0.01)
    # the fitted calibration predicts the measured GEMM times back (compute-bound term = measurement)
    t = float(gemm_us(gpu, 8192, 4096, 7168, calibration=cal))
    assert t == pytest.approx(2 * 8192 * 4096 * 7168 / (gpu.bf16_tflops * 1e6 * gemm_eff(8192, 4096)), rel=0.01)


def test_fit_rejects_bad_records(gpu) -> None:
    copy = {"kind": "copy", "bytes": 1 << 20, "median_us": 1.0}
    with pytest.raises(SpecError, match=r"^recs: records\[0\]\.median_us: "):
        fit_calibration([{"kind": "gemm", "m": 1, "n": 2, "k": 3, "median_us": -1}, copy], gpu, source="recs")
    with pytest.raises(SpecError, match=r"records\[0\]\.n: missing"):
        fit_calibration([{"kind": "gemm", "m": 1, "k": 3, "median_us": 1}, copy], gpu)
    with pytest.raises(SpecError, match="no bf16 gemm records"):
        fit_calibration([copy], gpu)
    with pytest.raises(SpecError, match="no copy records"):
        fit_calibration([{"kind": "gemm", "m": 1, "n": 2, "k": 3, "median_us": 1}], gpu)


def good_doc() -> dict:
    return calibration_to_dict(sample())


def _set(doc: dict, dotted: str, value) -> dict:
    *path, last = dotted.split(".")
    node = doc
    for part in path:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key = int(last) if isinstance(node, list) else last
    if value is _DELETE:
        del node[key]
    else:
        node[key] = value
    return doc


_DELETE = object()

BAD = [
    ("schema", 3, "schema"),
    ("device_name", _DELETE, "device_name: missing"),
    ("fitted", "yesterday", "fitted"),
    ("dtype", "int4", "dtype"),
    ("launch_overhead_us", -1.0, "launch_overhead_us: must be in [0, 10000] us, got -1"),
    ("launch_overhead_us", 1e30, "launch_overhead_us: must be in [0, 10000] us, got 1e+30"),
    ("launch_overhead_us", "3", "launch_overhead_us"),
    ("gemm.fallback.log2_m", [0.0, 6.0, 6.0], "gemm.fallback.log2_m: must be strictly increasing"),
    ("gemm.fallback.log2_m", [6.0, 0.0, 12.0], "gemm.fallback.log2_m: must be strictly increasing"),
    ("gemm.fallback.efficiency", [0.01, 0.4], "gemm.fallback.efficiency: expected 3 values"),
    ("gemm.fallback.efficiency", [0.01, 1.2, 0.8], "gemm.fallback.efficiency[1]: must be in (0, 1]"),
    ("gemm.fallback.efficiency", [0.0, 0.4, 0.8], "gemm.fallback.efficiency[0]: must be in (0, 1]"),
    ("gemm.fallback.log2_m", [], "gemm.fallback.log2_m: expected a non-empty list"),
    ("gemm.fallback.log2_m", [0, "six", 12], "gemm.fallback.log2_m[1]: expected a finite number"),
    ("gemm.fallback", _DELETE, "gemm.fallback: missing"),
    ("gemm.shapes.0.n", 0, "gemm.shapes[0].n"),
    ("gemm.shapes.1", good_doc()["gemm"]["shapes"][0], "gemm.shapes[1]: duplicate shape n=4096, k=7168"),
    ("gemm.shapes.0.efficiency", [0.02, -0.7], "gemm.shapes[0].efficiency[1]"),
    ("hbm.log2_bytes", [30.0, 20.0, 10.0], "hbm.log2_bytes: must be strictly increasing"),
    ("hbm", _DELETE, "hbm: missing"),
    ("hbm.efficiency", [0.05, 0.6, 1.5], "hbm.efficiency[2]"),
    ("extra_field", 1, "extra_field: unknown field"),
]


@pytest.mark.parametrize("field,value,needle", BAD, ids=[f"{f}={v!r}"[:40] for f, v, _ in BAD])
def test_bad_file_names_the_field(tmp_path, field, value, needle) -> None:
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(_set(good_doc(), field, value)))
    with pytest.raises(SpecError) as info:
        load_calibration(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and needle in message and "\n" not in message


def test_missing_and_malformed_files(tmp_path) -> None:
    with pytest.raises(SpecError, match=r"calibration\.json: calibration: no such file"):
        load_calibration(tmp_path / "calibration.json")
    with pytest.raises(SpecError, match=r"calibration\.json: calibration: no such file"):
        load_calibration(tmp_path)  # a directory without one
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(SpecError, match=r"broken\.json: calibration: bad JSON at line 1"):
        load_calibration(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(SpecError, match=r"broken\.json: calibration: expected a mapping"):
        load_calibration(bad)
    # found by benchmarks/bench_fuzz.py (issue 15): the JSON decoder's RecursionError escaped
    bad.write_text('{"schema": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(SpecError, match=r"broken\.json: calibration: nested too deeply$"):
        load_calibration(bad)


def test_save_refuses_invalid_calibration(tmp_path) -> None:
    cal = Calibration("d", "s", "2025-01-01", "bf16", -1.0, Curve((0.0,), (0.5,)), Curve((0.0,), (0.5,)))
    with pytest.raises(SpecError, match="launch_overhead_us"):
        save_calibration(cal, tmp_path / "calibration.json")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------- CLI
def _simulate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "simulate",
            "--model",
            "olmoe-1b-7b",
            "--cluster",
            "dgx-h100",
            "--synthetic",
            "uniform",
            "--json",
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_cli_calibration_changes_compute(tmp_path) -> None:
    path = save_calibration(flat(0.2, launch_us=1.0), tmp_path / "calibration.json")
    base = _simulate()
    calibrated = _simulate("--calibration", str(path))
    assert base.returncode == 0, base.stderr
    assert calibrated.returncode == 0, calibrated.stderr
    before = json.loads(base.stdout)["layers"][0]["compute_us"]
    after = json.loads(calibrated.stdout)["layers"][0]["compute_us"]
    assert after > before  # 20% of peak is well below the H100 profile's 80.7%
    # the directory works too
    assert json.loads(_simulate("--calibration", str(tmp_path)).stdout)["layers"][0]["compute_us"] == after


def test_cli_bad_calibration_exit_2(tmp_path) -> None:
    doc = calibration_to_dict(flat(0.5))
    doc["hbm"]["efficiency"] = [1.5]
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(doc))
    for arg, needle in ((str(path), "hbm.efficiency[0]"), (str(tmp_path / "none.json"), "none.json")):
        proc = _simulate("--calibration", arg)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("moesim: error:") and needle in lines[0], proc.stderr
        assert proc.stdout == ""


def test_load_by_measured_device_name(tmp_path, monkeypatch) -> None:
    import moesim.calibration.file_format

    save_calibration(sample(), tmp_path / "measured" / "NVIDIA_H100_80GB_HBM3" / "calibration.json")
    monkeypatch.setattr(moesim.calibration.file_format, "profiles_dir", lambda: tmp_path)
    monkeypatch.chdir(tmp_path)  # no file or directory of that name here: the name means a measured device
    assert load_calibration("NVIDIA_H100_80GB_HBM3") == sample()
    with pytest.raises(SpecError, match="NO_SUCH_GPU: calibration: no such file"):
        load_calibration("NO_SUCH_GPU")

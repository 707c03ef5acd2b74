"""`moesim plan` end to end on a shipped real trace (small time limits), and its bad-input errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moesim.placement import load_placement

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT / "profiles" / "traces" / "olmoe_c4.npz"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moesim", "plan", *args], capture_output=True, text=True,
                          check=False, cwd=ROOT, timeout=120)


def test_plan_json_rows_and_files(tmp_path) -> None:
    out, js = tmp_path / "p.yaml", tmp_path / "p.json"
    r = _run("--model", "olmoe-1b-7b", "--cluster", "dgx-h100", "--trace", str(TRACE), "--redundant-experts", "8",
             "--time-limit", "8", "-o", str(out), "--sglang", str(js), "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["method"] for row in rows] == ["contiguous", "round-robin", "eplb", "ilp"]
    assert set(rows[0]) == {"method", "max_mean_load", "cross_gpu_bytes", "cross_node_bytes", "layer_latency_us",
                            "solve_s", "gap"}
    ilp = rows[-1]
    assert ilp["max_mean_load"] <= rows[2]["max_mean_load"] + 1e-9  # never worse balanced than EPLB
    assert ilp["cross_gpu_bytes"] <= rows[2]["cross_gpu_bytes"]
    assert 0 <= ilp["gap"] < 0.05 and ilp["solve_s"] < 20
    p = load_placement(out)
    assert p.meta["model"] == "olmoe-1b-7b" and p.meta["layers"] == [0, 7, 15] and p.slots_per_gpu == 9
    assert p.meta["predicted"]["layer_latency_us"] == pytest.approx(ilp["layer_latency_us"])
    mapping = np.array(json.loads(js.read_text())["physical_to_logical_map"])
    assert mapping.shape == (16, 72)
    np.testing.assert_array_equal(mapping[7], p.phy2log[1])
    # the file loads back into the simulator
    sim = subprocess.run([sys.executable, "-m", "moesim", "simulate", "--model", "olmoe-1b-7b", "--cluster",
                          "dgx-h100", "--trace", str(TRACE), "--placement", str(out), "--json"],
                         capture_output=True, text=True, check=False, cwd=ROOT, timeout=60)
    assert sim.returncode == 0, sim.stderr


@pytest.mark.parametrize("args, message", [
    (["--model", "olmoe-1b-7b", "--cluster", "dgx-h100", "--redundant-experts", "3"], "do not divide"),
    (["--model", "deepseek-v3", "--cluster", "dgx-h100"], "num_experts"),  # trace of another model
    (["--model", "olmoe-1b-7b", "--cluster", "dgx-h100", "--solver", "gurobi"], "solver"),
    (["--model", "olmoe-1b-7b", "--cluster", "dgx-h100", "--time-limit", "0.01"], "no incumbent"),
    # SGLang reads --init-expert-location as a file only when it ends in .json (eplb/expert_location.py)
    (["--model", "olmoe-1b-7b", "--cluster", "dgx-h100", "--sglang", "placement.txt"], "ends in .json"),
])
def test_bad_input_one_line_exit_2_no_file(tmp_path, args, message) -> None:
    out = tmp_path / "p.yaml"
    r = _run(*args, "--trace", str(TRACE), "-o", str(out))
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moesim: error:") and message in lines[0], r.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_memory_exceeded(tmp_path) -> None:
    # DeepSeek-V3 on 8 GPUs: 32 expert slots x 58 layers x 88 MB = 163 GB per GPU
    from moesim.specs import load_model
    from moesim.trace import save_trace, synthetic_trace

    tr = tmp_path / "ds.npz"
    save_trace(synthetic_trace(load_model("deepseek-v3"), 2048, with_topk_ids=False), tr)
    out = tmp_path / "p.yaml"
    r = _run("--model", "deepseek-v3", "--cluster", "dgx-h100", "--trace", str(tr), "-o", str(out))
    assert r.returncode == 2 and "GPU memory" in r.stderr, r.stderr
    assert not out.exists()

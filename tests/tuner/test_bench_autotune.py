"""benchmarks/bench_autotune.py: the device-run orchestration (on the interpreter) and the CPU replay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "bench_autotune.py"


def _bench(*args, timeout=300):
    env = dict(os.environ, TRITON_INTERPRET="1")
    return subprocess.run(
        [sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


def test_device_runs_without_cuda_exits_2():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    proc = _bench("--device-runs")
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr


def test_interpret_smoke_then_replay(tmp_path):
    proc = _bench(
        "--device-runs",
        "--backend",
        "interpret",
        "--shape",
        "4,32,64",
        "--ms",
        "1,4",
        "--workers",
        "2",
        "--limit",
        "8",
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--budget-s",
        "200",
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in (tmp_path / "autotune_grid.jsonl").read_text().splitlines()]
    meta = json.loads((tmp_path / "autotune_grid.meta.json").read_text())
    assert meta["subgrid_size"] == 8 and meta["feasible_size"] == 1248
    grid = [r for r in lines if r["perm_index"] is not None]
    assert len({(r["M"], r["perm_index"]) for r in grid}) == 8 * 2
    for r in lines:
        assert r["schema"] == 1 and r["kind"] == "fused_moe" and r["M"] in (1, 4)
        assert (r["status"] == "ok") == (r["median_us"] is not None)
    assert {"vllm", "default"} <= {role for r in lines for role in r["role"].split(",")}
    rep = _bench("--from", str(tmp_path / "autotune_grid.jsonl"), "--seeds", "2", "--json")
    assert rep.returncode == 0, rep.stderr
    doc = json.loads(rep.stdout)
    assert [m["M"] for m in doc["per_m"]] == [1, 4]
    for m in doc["per_m"]:
        at20 = m["samplers"]["tpe"]["0.2"]
        # The search can never beat the exhaustive truth over the same measured table.
        assert at20["median_best_us"] >= m["exhaustive_us"]

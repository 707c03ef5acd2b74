"""``moesim autotune kernel|capacity`` through the real CLI entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from moesim.cli.main import main


def _run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_help_shows_examples(capsys):
    code, out, _ = _run(["autotune", "kernel", "--help"], capsys)
    assert code == 0 and "Example: moesim autotune kernel" in out
    code, out, _ = _run(["autotune", "capacity", "--help"], capsys)
    assert code == 0 and "--max-drop" in out


def test_kernel_without_cuda_exits_2_with_a_clear_message():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    proc = subprocess.run([sys.executable, "-m", "moesim", "autotune", "kernel", "--E", "8", "--N", "7168",
                           "--K", "4096"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("moesim: error: autotune kernel: no CUDA GPU visible")
    assert "--backend interpret" in proc.stderr


def test_kernel_bad_ms_is_an_error(capsys):
    code, _, err = _run(["autotune", "kernel", "--backend", "interpret", "--E", "4", "--N", "32", "--K", "64",
                         "--ms", "0"], capsys)
    assert code == 2 and "--ms" in err


def test_kernel_interpret_json(tmp_path):
    env = dict(os.environ, MOESIM_CACHE_DIR=str(tmp_path / "cache"), TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-m", "moesim", "autotune", "kernel", "--backend", "interpret", "--E", "4", "--N", "32",
         "--K", "64", "--ms", "2", "--trials", "3", "--warmup", "0", "--repeats", "1", "--seed", "0",
         "--save-dir", str(tmp_path / "cfg"), "--json"],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["results"][0]["trials"] == 3 and doc["results"][0]["best_config"]
    assert (tmp_path / "cache" / "optuna" / "studies.log").exists()
    assert list((tmp_path / "cfg").glob("E=4,N=32,device_name=*.json"))


def test_capacity_front_and_max_drop(tmp_path, capsys):
    out = tmp_path / "front.json"
    code, stdout, err = _run(["autotune", "capacity", "--model", "olmoe-1b-7b", "--cluster", "dgx-h100",
                              "--trace", "profiles/traces/olmoe_c4.npz", "--trials", "40", "--population", "10",
                              "--max-drop", "0.02", "-o", str(out)], capsys)
    assert code in (0, None), err
    assert "Pareto front" in stdout and "--max-drop 0.02" in stdout
    doc = json.loads(out.read_text())
    assert doc["pick"]["dropped_fraction"] <= 0.02 and doc["pareto_front"]


def test_capacity_bad_trace(capsys):
    code, _, err = _run(["autotune", "capacity", "--model", "olmoe-1b-7b", "--cluster", "dgx-h100",
                         "--trace", "nope.npz"], capsys)
    assert code == 2 and "nope.npz" in err

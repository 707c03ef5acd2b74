"""``moesim autotune kernel|capacity`` through the real CLI entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.cli.cli_harness import TINY_KERNEL, run_cli


def test_help_shows_examples(capsys):
    code, out, _ = run_cli(["autotune", "kernel", "--help"], capsys)
    assert code == 0 and "Example: moesim autotune kernel" in out
    code, out, _ = run_cli(["autotune", "capacity", "--help"], capsys)
    assert code == 0 and "--max-drop" in out


def test_kernel_without_cuda_exits_2_with_a_clear_message():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "autotune", "kernel", "--E", "8", "--N", "7168", "--K", "4096"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("moesim: error: autotune kernel: no CUDA GPU visible")
    assert "--backend interpret" in proc.stderr


def test_kernel_bad_ms_is_an_error(capsys):
    code, _, err = run_cli([*TINY_KERNEL, "--ms", "0"], capsys)
    assert code == 2 and "--ms" in err


def test_kernel_interpret_json(tmp_path):
    env = dict(os.environ, MOESIM_CACHE_DIR=str(tmp_path / "cache"), TRITON_INTERPRET="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            *TINY_KERNEL,
            "--ms",
            "2",
            "--trials",
            "3",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--seed",
            "0",
            "--save-dir",
            str(tmp_path / "cfg"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["results"][0]["trials"] == 3 and doc["results"][0]["best_config"]
    assert (tmp_path / "cache" / "optuna" / "studies.log").exists()
    assert list((tmp_path / "cfg").glob("E=4,N=32,device_name=*.json"))


def test_capacity_front_and_max_drop(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MOESIM_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "front.json"
    code, stdout, err = run_cli(
        [
            "autotune",
            "capacity",
            "--model",
            "olmoe-1b-7b",
            "--cluster",
            "dgx-h100",
            "--trace",
            "profiles/traces/olmoe_c4.npz",
            "--trials",
            "40",
            "--population",
            "10",
            "--max-drop",
            "0.02",
            "-o",
            str(out),
        ],
        capsys,
    )
    assert code in (0, None), err
    assert "Pareto front" in stdout and "--max-drop 0.02" in stdout
    doc = json.loads(out.read_text())
    assert doc["pick"]["dropped_fraction"] <= 0.02 and doc["pareto_front"]
    # the default storage: a journal file in the cache dir, holding the study's 40 trials
    assert _complete(f"journal://{tmp_path / 'cache' / 'optuna' / 'capacity.log'}") == 40


def test_capacity_bad_trace(capsys):
    code, _, err = run_cli(
        ["autotune", "capacity", "--model", "olmoe-1b-7b", "--cluster", "dgx-h100", "--trace", "nope.npz"], capsys
    )
    assert code == 2 and "nope.npz" in err


CAPACITY = [
    "autotune",
    "capacity",
    "--model",
    "olmoe-1b-7b",
    "--cluster",
    "dgx-h100",
    "--trace",
    "profiles/traces/olmoe_c4.npz",
    "--population",
    "10",
]


def _complete(url, running_ok=False):
    """COMPLETE trials of the one study in ``url`` (none RUNNING unless ``running_ok``)."""
    import optuna

    from tuner.autotune.storage import open_storage

    storage = open_storage(url)
    (name,) = optuna.get_all_study_names(storage)
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    assert running_ok or not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def _cli(args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )


def test_capacity_resumes_after_sigkill(tmp_path):
    """A kill lost every trial (in-memory study); now the rerun continues from the journal to exactly --trials."""
    import signal
    import time

    log = tmp_path / "c.log"
    args = [*CAPACITY, "--storage", f"journal://{log}", "--trials", "600", "--json"]
    proc = _cli(args)
    deadline = time.monotonic() + 120
    # 2 journal lines a trial: kill once some 30 trials are stored, long before the 600th
    while time.monotonic() < deadline and (not log.exists() or log.read_bytes().count(b"\n") < 60):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert 0 < _complete(f"journal://{log}", running_ok=True) < 600
    rerun = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["trials"] == 600 == _complete(f"journal://{log}")


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_capacity_workers_share_one_storage(tmp_path, kind):
    url = f"journal://{tmp_path / 'c.log'}" if kind == "journal" else f"sqlite:///{tmp_path / 'c.db'}"
    procs = [_cli([*CAPACITY, "--storage", url, "--trials", "120", "--json"]) for _ in range(2)]
    docs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        docs.append(json.loads(out))
    assert [d["trials"] for d in docs] == [120, 120] == [_complete(url)] * 2
    assert docs[0]["pareto_front"] == docs[1]["pareto_front"]


@pytest.mark.parametrize(
    "storage,message",
    [
        ("nosuch://x", "--storage: nosuch://x: cannot open"),
        ("{tmp}", "--storage: {tmp}: cannot open"),
        ("journal://{tmp}", "--storage: journal://{tmp}: cannot open"),
        ("postgresql+psycopg2://u:pw@127.0.0.1:1/db", "--storage: postgresql+psycopg2://u:***@127.0.0.1:1/db"),
    ],
)
def test_capacity_bad_storage_is_one_line_and_writes_nothing(tmp_path, capsys, storage, message):
    tmp = tmp_path / "dir.log"
    tmp.mkdir()
    out = tmp_path / "front.json"
    code, stdout, err = run_cli(
        [*CAPACITY, "--trials", "5", "--storage", storage.format(tmp=tmp), "-o", str(out)], capsys
    )
    assert code == 2 and stdout == ""
    assert err.startswith(f"moesim: error: {message.format(tmp=tmp)}") and len(err.strip().splitlines()) == 1
    assert not out.exists() and list(tmp.iterdir()) == []

"""SIGKILL at chosen or random points of commands that write files: every output whole or absent, inputs
unchanged, and the next run sweeps what the killed one left (issue 15's atomic outputs)."""

from __future__ import annotations

import hashlib

import pytest

from tests.cli.cli_harness import ROOT, SWEEP, TINY_KERNEL, file_hashes


def test_plan_killed_at_random_points_leaves_whole_outputs_or_none(tmp_path) -> None:
    """SIGKILL `moesim plan --sglang` at spread-out moments: the trace is unchanged, the placement and SGLang files
    are both there or both absent, and the next run sweeps any staging folder the kill left."""
    import random
    import subprocess
    import sys
    import time

    from moesim.fileio import STAGE_PREFIX

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "trace",
            "synth",
            "--model",
            "deepseek-v3",
            "--tokens",
            "4096",
            "--counts-only",
            "-o",
            str(tmp_path / "t.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    digest = hashlib.sha256((tmp_path / "t.npz").read_bytes()).hexdigest()
    cmd = [
        sys.executable,
        "-m",
        "cli",
        "plan",
        "--model",
        "deepseek-v3",
        "--cluster",
        "h100-8x8-ib400",
        "--trace",
        str(tmp_path / "t.npz"),
        "--redundant-experts",
        "64",
        "--time-limit",  # the whole plan's: the 64-GPU baselines and their simulations take a few seconds of it
        "8",
        "-o",
        str(tmp_path / "p.yaml"),
        "--sglang",
        str(tmp_path / "p.json"),
    ]
    rng = random.Random(0)
    for _ in range(5):
        for name in ("p.yaml", "p.json"):
            (tmp_path / name).unlink(missing_ok=True)
        run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 9.0))
        run.kill()
        run.wait()
        outputs = {(tmp_path / n).exists() for n in ("p.yaml", "p.json")}
        assert len(outputs) == 1, "one output without the other"
        assert hashlib.sha256((tmp_path / "t.npz").read_bytes()).hexdigest() == digest
    finished = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert (tmp_path / "p.yaml").exists() and (tmp_path / "p.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(STAGE_PREFIX)]


# run as `python -c`: the CLI with a SIGKILL of its own process at a chosen point (argv[1]), then argv[2:] as
# moesim's arguments. "replace-into:DIR" dies just after the first os.replace of a report file into DIR (one file
# of a file-by-file merge in place, the rest not); "after-swap" dies just after OutputSet's one-step folder swap;
# "write:NAME" dies half-way through writing NAME's temp file (after its first bytes, before the rename);
# "cbc-started" dies as soon as the MILP solver's process is running (PuLP's model files written).
KILL_AT = """
import os, signal, sys
import moesim.fileio as fileio
point, args = sys.argv[1], sys.argv[2:]
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if point.startswith("replace-into:"):
    folder, real = point.split(":", 1)[1] + os.sep, os.replace
    def replace(src, dst, *a, **k):
        done = real(src, dst, *a, **k)
        if str(dst).startswith(folder) and os.path.basename(str(dst)).startswith(("report", "results")):
            die()
        return done
    fileio.os.replace = replace
elif point == "after-swap":
    real_swap = fileio._exchange
    def swap(a, b):
        done = real_swap(a, b)
        die()
    fileio._exchange = swap
elif point.startswith("write:"):
    name, real_write = point.split(":", 1)[1], fileio.atomic_write
    def atomic_write(path, write):
        if os.path.basename(str(path)) != name:
            return real_write(path, write)
        def half(fh):
            fh.write(b'{"half": ')
            fh.flush()
            die()
        return real_write(path, half)
    fileio.atomic_write = atomic_write
    fileio.atomic_write_bytes = lambda path, data: atomic_write(path, lambda fh: fh.write(data))
    fileio.atomic_write_text = lambda path, text: fileio.atomic_write_bytes(path, text.encode("utf-8"))
elif point == "cbc-started":
    import subprocess
    real_popen = subprocess.Popen
    def popen(args, *a, **k):
        proc = real_popen(args, *a, **k)
        if "cbc" in os.path.basename(str(args[0] if isinstance(args, (list, tuple)) else args)).lower():
            die()
        return proc
    subprocess.Popen = popen
from cli.main import main
main(args)
"""


def _moesim(args, point: str | None = None, env: dict | None = None):
    import subprocess
    import sys

    cmd = [sys.executable, "-c", KILL_AT, point, *map(str, args)] if point else [sys.executable, "-m", "cli"]
    if not point:
        cmd += [str(a) for a in args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)


@pytest.mark.parametrize("point", ["mid-merge", "after-swap"])
def test_whatif_rerun_killed_at_the_commit_leaves_the_old_report_or_the_new(tmp_path, point) -> None:
    """SIGKILL while `whatif` puts its report over the previous one in the same folder: every file is the old run's
    or every file is the new run's (the file-by-file merge could leave the new results.json beside the old report);
    the next run sweeps the staging folder."""
    import os

    from moesim.fileio import STAGE_PREFIX

    env = dict(os.environ, MOESIM_CACHE_DIR=str(tmp_path / "cache"))
    out, scen = tmp_path / "wi", tmp_path / "s.yaml"

    names = ("report.html", "report.md", "results.csv", "results.json")
    scen.write_text(SWEEP)
    assert _moesim(["whatif", scen, "-o", out, "--workers", "1"], env=env).returncode == 0
    old = file_hashes(out)
    (out / "notes.txt").write_text("mine")  # a file of the user's in the report folder: kept by every run
    scen.write_text(SWEEP.replace("trace:", "tokens_per_gpu: 512, trace:"))  # every report file differs
    kill = f"replace-into:{out}" if point == "mid-merge" else "after-swap"
    _moesim(["whatif", scen, "-o", out, "--workers", "1"], kill, env=env)
    changed = {n: file_hashes(out)[n] != old[n] for n in names}
    assert len(set(changed.values())) == 1, changed
    assert (out / "notes.txt").read_text() == "mine"
    assert _moesim(["whatif", scen, "-o", out, "--workers", "1"], env=env).returncode == 0
    assert all(file_hashes(out)[n] != old[n] for n in names) and (out / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(STAGE_PREFIX)]


def test_capacity_killed_while_writing_its_front_leaves_no_stray_file(tmp_path) -> None:
    """SIGKILL half-way through writing `autotune capacity -o front.json`: no front.json, and the temp file it
    leaves is one moesim sweeps (a staging name): the next run leaves front.json alone in the folder."""
    import json
    import os

    from moesim.fileio import STAGE_PREFIX

    env = dict(os.environ, MOESIM_CACHE_DIR=str(tmp_path / "cache"))
    out = tmp_path / "out"
    out.mkdir()
    args = ["autotune", "capacity", "--model", "olmoe-1b-7b", "--cluster", "dgx-h100"]
    args += ["--trace", "zipf:1.2", "--trials", "20", "--population", "10", "-o", out / "front.json"]
    proc = _moesim(args, "write:front.json", env=env)
    assert proc.returncode != 0
    left = [p.name for p in out.iterdir()]
    assert left and all(n.startswith(STAGE_PREFIX) for n in left), left
    proc = _moesim(args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in out.iterdir()] == ["front.json"]
    assert json.loads((out / "front.json").read_text())["pareto_front"]


def test_autotune_kernel_resumes_a_journal_cut_mid_append(tmp_path) -> None:
    """A run killed part-way through a journal append leaves a last line without its newline (Linux stops a write
    between pages on SIGKILL). The next run used to glue its first operation onto it, and every read after that
    failed; now it cuts the torn tail, keeps every finished trial and goes on."""
    pytest.importorskip("triton", reason="autotune kernel needs the kernels extra")
    import os

    import optuna

    from tuner.autotune import storage

    journal = tmp_path / "j.log"
    env = dict(os.environ, MOESIM_CACHE_DIR=str(tmp_path / "cache"), TRITON_INTERPRET="1")

    def tune(trials: int):
        args = [*TINY_KERNEL, "--ms", "2"]
        args += ["--trials", trials, "--warmup", "0", "--repeats", "1", "--seed", "0"]
        return _moesim([*args, "--storage", f"journal://{journal}"], env=env)

    def complete() -> list:
        study = optuna.load_study(study_name=None, storage=storage.open_storage(f"journal://{journal}"))
        return [t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]

    assert tune(2).returncode == 0
    before = complete()
    with open(journal, "ab") as fh:  # the first half of an operation, as a writer killed mid-append leaves it
        fh.write(b'{"op_code":6,"worker_id":"dead","trial_id":0,"user_attr":{"owne')
    proc = tune(3)
    assert proc.returncode == 0, proc.stderr
    after = complete()
    assert set(before) <= set(after) and len(after) > len(before)


def test_plan_killed_mid_solve_leaves_no_solver_files_in_tmp(tmp_path) -> None:
    """SIGKILL `moesim plan` while CBC solves: PuLP's model and solution files and CBC's log (in the temp folder,
    which nothing else cleans) used to stay there for good; now they sit in a folder named for the killed run,
    which the next run sweeps."""
    import os
    import signal
    import subprocess
    import sys

    from moesim.fileio import STAGE_PREFIX

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, MOESIM_CACHE_DIR=str(tmp_path / "cache"), TMPDIR=str(tmp))
    args = ["plan", "--model", "olmoe-1b-7b", "--cluster", "h100-2x8-ib400"]
    args += ["--trace", ROOT / "profiles" / "traces" / "olmoe_c4.npz", "--redundant-experts", "16"]
    args += ["--time-limit", "2", "-o", tmp_path / "p.yaml"]
    run = subprocess.Popen(
        [sys.executable, "-c", KILL_AT, "cbc-started", *map(str, args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert run.wait(timeout=300) == -signal.SIGKILL
    try:
        os.killpg(run.pid, signal.SIGKILL)  # the solver it had started
    except ProcessLookupError:
        pass
    left = [p.name for p in tmp.iterdir()]
    assert left and all(n.startswith(STAGE_PREFIX) for n in left), left
    assert not (tmp_path / "p.yaml").exists()
    proc = _moesim(args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert list(tmp.iterdir()) == [] and (tmp_path / "p.yaml").exists()

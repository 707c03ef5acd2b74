"""Shared helpers for the tuner tests: run N budget workers on one study and read what they left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

try:  # the interpret-backend tests need TRITON_INTERPRET set before anything imports triton
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:
    pass

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("budget_worker.py")


def start_worker(storage: str, study: str, trials: int, sleep: float = 0.0, seed: int = 0) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.Popen(
        [
            sys.executable,
            str(WORKER),
            "--storage",
            storage,
            "--study",
            study,
            "--trials",
            str(trials),
            "--sleep",
            str(sleep),
            "--seed",
            str(seed),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def run_workers(storage: str, study: str, trials: int, workers: int = 2, sleep: float = 0.01) -> list[str]:
    procs = [start_worker(storage, study, trials, sleep, seed=w) for w in range(workers)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(out)
    return outs


def check_exact_budget(storage_url: str, study: str, trials: int, outs: list[str]) -> None:
    """The definition the budget tests share.

    Exactly ``trials`` counted trials (measured, failed or cached repeats), none left RUNNING, each a distinct
    trial (distinct trial ids and numbers); every counted trial that repeats an earlier config is flagged
    ``cached`` (no second measurement of one config); the workers' own counts add up to the same total; and
    every PRUNED trial that is not counted is infeasible (it never reached a measurement).
    """
    import optuna

    from tests.tuner.budget_worker import SMEM_LIMIT_KB
    from tuner.autotune import space as kernel_space
    from tuner.autotune import storage
    from tuner.autotune.kernel.study import counted_trials

    st = optuna.load_study(study_name=study, storage=storage.open_storage(storage_url))
    counted = counted_trials(st)
    assert len(counted) == trials
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in counted)
    assert len({t._trial_id for t in counted}) == trials
    assert len({t.number for t in counted}) == trials
    seen = set()
    for t in sorted(counted, key=lambda t: t.number):
        key = kernel_space.config_key(t.params)
        if key in seen:
            assert t.user_attrs.get("cached"), f"trial {t.number} re-measured config {key}"
        seen.add(key)
    measured = sum(int(o.split("measured=")[1].split()[0]) for o in outs)
    assert measured == trials
    for t in st.get_trials(states=(optuna.trial.TrialState.PRUNED,)):
        if not t.user_attrs.get("counted"):
            assert not kernel_space.is_feasible(t.params, SMEM_LIMIT_KB)


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MOESIM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"

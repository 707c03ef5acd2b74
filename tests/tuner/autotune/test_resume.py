"""A study killed mid-run resumes from its finished trials and still ends with exactly the budget."""

from __future__ import annotations

import time

import optuna

from tests.tuner.conftest import check_exact_budget, run_workers, start_worker
from tuner.autotune import storage
from tuner.autotune.kernel.study import counted_trials


def test_killed_study_resumes_to_exactly_n_trials(tmp_path):
    url = f"journal://{tmp_path / 'studies.log'}"
    trials = 25
    proc = start_worker(url, "resume", trials, sleep=0.2)
    store = storage.open_storage(url)
    deadline = time.monotonic() + 60
    finished = 0
    while time.monotonic() < deadline:
        try:
            study = optuna.load_study(study_name="resume", storage=store)
            finished = sum(t.state != optuna.trial.TrialState.RUNNING for t in counted_trials(study))
        except KeyError:
            finished = 0
        if finished >= 5:
            break
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no cleanup, a trial is left RUNNING
    proc.wait()
    assert 5 <= finished < trials
    study = optuna.load_study(study_name="resume", storage=store)
    before = [t for t in counted_trials(study) if t.state != optuna.trial.TrialState.RUNNING]
    outs = run_workers(url, "resume", trials, workers=1, sleep=0.0)
    # The resumed run measured only what was missing; the killed trial is marked stale and not counted.
    resumed = int(outs[0].split("measured=")[1].split()[0])
    assert resumed == trials - len(before)
    study = optuna.load_study(study_name="resume", storage=store)
    stale = [t for t in study.get_trials() if t.user_attrs.get("stale")]
    assert all(t.state == optuna.trial.TrialState.FAIL for t in stale)
    assert len(counted_trials(study)) == trials
    # The earlier trials are still there, unchanged.
    numbers = {t.number: t.value for t in counted_trials(study)}
    assert all(numbers[t.number] == t.value for t in before)
    check_exact_budget(url, "resume", trials, [f"measured={trials}"])

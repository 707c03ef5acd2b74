"""Studies in the embedded journal file: default location, shared by processes, exact trial budgets."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.tuner.conftest import check_exact_budget, run_workers
from tuner.autotune import storage


def test_default_storage_is_a_journal_file_under_the_cache_dir(cache_dir):
    url = storage.default_storage_url()
    assert url.startswith("journal://")
    assert storage.journal_path(url) == Path(cache_dir) / "optuna" / "studies.log"
    storage.open_storage(None)
    assert (Path(cache_dir) / "optuna").is_dir()


def test_xdg_cache_home_is_respected(tmp_path, monkeypatch):
    monkeypatch.delenv("MOESIM_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert storage.cache_dir() == tmp_path / "moesim"


def test_redact_hides_password():
    assert storage.redact("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"


def test_bad_url_is_a_one_line_spec_error():
    from moesim.errors import SpecError

    with pytest.raises(SpecError, match="--storage: nosuch://x: cannot open"):
        storage.open_storage("nosuch://x")


@pytest.mark.parametrize("workers,trials", [(2, 30), (3, 17)])
def test_workers_share_a_file_study_and_finish_exactly_n_trials(tmp_path, workers, trials):
    url = f"journal://{tmp_path / 'studies.log'}"
    outs = run_workers(url, "shared", trials, workers=workers, sleep=0.01)
    check_exact_budget(url, "shared", trials, outs)
    # Both workers took part (each measured at least one trial): the study really was shared.
    assert all(int(o.split("measured=")[1].split()[0]) >= 1 for o in outs)


def test_a_finished_study_takes_no_more_trials(tmp_path):
    url = f"journal://{tmp_path / 'studies.log'}"
    outs = run_workers(url, "again", 8, workers=1, sleep=0.0)
    outs += run_workers(url, "again", 8, workers=2, sleep=0.0)
    check_exact_budget(url, "again", 8, outs)


def _run_in_threads(target, count: int = 4) -> None:
    """Run ``target`` in ``count`` threads at once and wait for all of them."""
    import threading

    threads = [threading.Thread(target=target) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_budget_lock_serialises(tmp_path):
    # Two holders of the same study's lock never overlap; different studies do not block each other.
    import time

    url = f"journal://{tmp_path / 'x.log'}"
    inside = []
    overlap = []

    def hold():
        with storage.budget_lock(url, "s"):
            inside.append(1)
            if len(inside) > 1:
                overlap.append(1)
            time.sleep(0.05)
            inside.pop()

    _run_in_threads(hold)
    assert not overlap


def test_journal_lock_of_a_killed_holder_is_free_at_once(tmp_path):
    """Optuna's symlink lock made the next writer wait a 30 s grace period after a SIGKILL; the flock does not."""
    import subprocess
    import sys
    import time

    from tuner.autotune.storage import FlockJournalLock, open_storage

    lock_path = tmp_path / "studies.log.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom tuner.autotune.storage import FlockJournalLock\n"
            f"FlockJournalLock({str(lock_path)!r}).acquire()\nprint('held', flush=True)\ntime.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    mine = FlockJournalLock(str(lock_path))
    holder.kill()
    holder.wait()
    t0 = time.monotonic()
    assert mine.acquire()
    assert time.monotonic() - t0 < 2.0
    mine.release()
    # the journal storage uses it: a study can be created right after
    storage = open_storage(f"journal://{tmp_path / 'studies.log'}")
    import optuna

    optuna.create_study(study_name="after-kill", storage=storage)


def test_journal_lock_excludes_threads_of_one_process(tmp_path):
    import time

    from tuner.autotune.storage import FlockJournalLock

    lock = FlockJournalLock(str(tmp_path / "x.lock"))
    inside, worst = [0], [0]

    def work():
        for _ in range(20):
            lock.acquire()
            inside[0] += 1
            worst[0] = max(worst[0], inside[0])
            time.sleep(0.001)
            inside[0] -= 1
            lock.release()

    _run_in_threads(work)
    assert worst[0] == 1


_OPEN_AT_ONCE = """
import os, sys, time
import optuna, sqlalchemy, optuna.storages._rdb.storage
from tuner.autotune.storage import open_storage
optuna.logging.set_verbosity(optuna.logging.WARNING)
go = sys.argv[2]
print("ready", flush=True)
while not os.path.exists(go):  # all processes start together: the schema race needs them at the same instant
    time.sleep(0.0005)
storage = open_storage(sys.argv[1])
optuna.create_study(study_name="race", storage=storage, load_if_exists=True)
print("ok")
"""


def _open_at_once(url: str, go: Path, processes: int) -> list[subprocess.CompletedProcess]:
    import os
    import sys

    root = Path(__file__).resolve().parents[3]
    env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_AT_ONCE, url, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(processes)
    ]
    for p in procs:  # every interpreter has imported optuna and spins on the go file
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    go.touch()
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), *p.communicate()) for p in procs]


@pytest.mark.parametrize("processes", [2, 4])
def test_workers_opening_a_fresh_sqlite_file_at_once_all_succeed(tmp_path, processes):
    """Optuna's schema creation is not atomic: without the flock in open_storage the losers failed with
    ``UNIQUE constraint failed: alembic_version.version_num``."""
    for attempt in range(3):
        url = f"sqlite:///{tmp_path / f'fresh{attempt}.db'}"
        done = _open_at_once(url, tmp_path / f"go{attempt}", processes)
        for proc in done:
            assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr.strip().splitlines()[-1:]

"""Trial owners and their liveness: ``host:pid`` labels, dead and zombie pids, stale RUNNING trials marked FAIL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tuner.autotune import processes
from tuner.autotune.kernel.study import counted_trials
from tuner.autotune.processes import fail_stale_running, owner_label, pid_alive

optuna.logging.set_verbosity(optuna.logging.WARNING)
RUNNING, FAIL, COMPLETE = (
    optuna.trial.TrialState.RUNNING,
    optuna.trial.TrialState.FAIL,
    optuna.trial.TrialState.COMPLETE,
)


def _proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0]


def _wait_for_state(pid: int, state: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while _proc_state(pid) != state:
        assert time.monotonic() < deadline, f"pid {pid} never reached state {state}"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a child that has exited and been reaped: no process has it now."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _study_with(owners: list[str | None], counted: bool = True) -> optuna.Study:
    """An in-memory study with one RUNNING trial per entry of ``owners`` (None: no owner attr)."""
    study = optuna.create_study()
    for owner in owners:
        trial = study.ask()
        if owner is not None:
            trial.set_user_attr("owner", owner)
        trial.set_user_attr("counted", counted)
    return study


def _states(study: optuna.Study) -> list[tuple[optuna.trial.TrialState, bool]]:
    return [(t.state, bool(t.user_attrs.get("stale"))) for t in study.get_trials()]


# ----------------------------------------------------------------------------------------------------- owner_label
def test_owner_label_is_host_colon_pid_of_the_calling_process() -> None:
    host, _, pid = owner_label().rpartition(":")
    assert host == socket.gethostname() and pid == str(os.getpid())
    # another process labels itself with its own pid, not the parent's
    child = subprocess.run(
        [sys.executable, "-c", "import os\nfrom tuner.autotune.processes import owner_label\nprint(owner_label())"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    child_host, _, child_pid = child.stdout.strip().rpartition(":")
    assert child_host == host and child_pid.isdigit() and int(child_pid) != os.getpid()


# ------------------------------------------------------------------------------------------------------- pid_alive
def test_pid_alive_for_this_process_and_a_running_child() -> None:
    assert pid_alive(os.getpid())
    proc = subprocess.Popen(["sleep", "30"])
    try:
        assert pid_alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert not pid_alive(proc.pid)  # killed and reaped: gone


def test_pid_alive_is_false_for_a_reaped_child(dead_pid) -> None:
    assert not pid_alive(dead_pid)


def test_a_zombie_is_dead_although_it_answers_kill_zero() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        proc.kill()  # not reaped yet: the pid is a zombie until wait()
        _wait_for_state(proc.pid, "Z")
        os.kill(proc.pid, 0)  # the signal check alone would call it alive
        assert not pid_alive(proc.pid)
    finally:
        proc.wait()


def test_a_process_name_with_a_parenthesis_and_z_is_read_past_the_name(tmp_path) -> None:
    """/proc/PID/stat is ``pid (comm) state ...``; comm may hold ``) Z``: the state is after the last ``)``."""
    sleeper = tmp_path / "a) Z b"
    sleeper.symlink_to(Path("/bin/sleep") if Path("/bin/sleep").exists() else Path("/usr/bin/sleep"))
    proc = subprocess.Popen([str(sleeper), "30"])
    try:
        _wait_for_state(proc.pid, "S")
        with open(f"/proc/{proc.pid}/stat") as handle:
            assert "(a) Z b)" in handle.read()
        assert pid_alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def test_pid_alive_when_the_pid_belongs_to_someone_else_or_proc_is_unreadable(monkeypatch, dead_pid) -> None:
    # kill(0) refused: the process exists (another user's), so it counts as alive
    def refuse(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(processes.os, "kill", refuse)
    assert pid_alive(dead_pid)
    monkeypatch.undo()

    # kill(0) answers but /proc cannot be read (no procfs): taken as alive, not as a zombie
    def no_proc(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory")

    proc = subprocess.Popen(["sleep", "30"])
    try:
        monkeypatch.setattr(processes, "open", no_proc, raising=False)
        assert pid_alive(proc.pid)
    finally:
        monkeypatch.undo()
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------- fail_stale_running
def test_only_trials_of_dead_owners_on_this_host_are_marked(dead_pid) -> None:
    host = socket.gethostname()
    owners = [
        f"{host}:{dead_pid}",  # dead, this host: marked
        owner_label(),  # this process: alive
        f"elsewhere.example:{dead_pid}",  # another host: its pid cannot be checked here
        None,  # no owner recorded
        f"{host}:not-a-pid",  # unparsable pid
        f"{host}:{dead_pid}",  # a second dead one: marked
    ]
    study = _study_with(owners)
    assert fail_stale_running(study, stale_after_s=3600.0) == 2
    assert _states(study) == [
        (FAIL, True),
        (RUNNING, False),
        (RUNNING, False),
        (RUNNING, False),
        (RUNNING, False),
        (FAIL, True),
    ]
    # nothing left to mark: a second pass changes nothing
    assert fail_stale_running(study, stale_after_s=3600.0) == 0
    assert [s for s, _ in _states(study)].count(FAIL) == 2


def test_a_stale_trial_is_no_longer_counted(dead_pid) -> None:
    study = _study_with([f"{socket.gethostname()}:{dead_pid}", owner_label()])
    assert [t.number for t in counted_trials(study)] == [0, 1]
    fail_stale_running(study, stale_after_s=3600.0)
    assert [t.number for t in counted_trials(study)] == [1]


def test_old_running_trials_are_marked_whoever_owns_them() -> None:
    study = _study_with([owner_label(), "elsewhere.example:1", None])
    assert fail_stale_running(study, stale_after_s=3600.0) == 0  # young and not provably dead
    time.sleep(0.02)
    assert fail_stale_running(study, stale_after_s=0.01) == 3  # older than 10 ms: all stale
    assert _states(study) == [(FAIL, True)] * 3


def test_finished_trials_are_left_alone_whatever_their_owner(dead_pid) -> None:
    study = optuna.create_study()
    done = study.ask()
    done.set_user_attr("owner", f"{socket.gethostname()}:{dead_pid}")
    study.tell(done, 1.5)
    study.ask().set_user_attr("owner", f"{socket.gethostname()}:{dead_pid}")
    time.sleep(0.02)
    assert fail_stale_running(study, stale_after_s=0.01) == 1
    assert _states(study) == [(COMPLETE, False), (FAIL, True)]
    assert study.get_trials()[0].value == 1.5


def test_the_pid_is_after_the_last_colon_of_the_owner(monkeypatch, dead_pid) -> None:
    """A host name with colons (an IPv6 literal): ``host:pid`` splits at the last colon."""
    monkeypatch.setattr(socket, "gethostname", lambda: "fe80::1")
    study = _study_with([f"fe80::1:{dead_pid}", f"fe80:{dead_pid}", f"fe80::1:{os.getpid()}"])
    assert fail_stale_running(study, stale_after_s=3600.0) == 1
    assert [s for s, _ in _states(study)] == [FAIL, RUNNING, RUNNING]


def test_marks_persist_in_the_journal_file_for_other_readers(tmp_path, dead_pid) -> None:
    from tuner.autotune import storage

    url = f"journal://{tmp_path / 'studies.log'}"
    study = optuna.create_study(study_name="s", storage=storage.open_storage(url))
    for owner in (f"{socket.gethostname()}:{dead_pid}", owner_label()):
        study.ask().set_user_attr("owner", owner)
    assert fail_stale_running(study, stale_after_s=3600.0) == 1
    again = optuna.load_study(study_name="s", storage=storage.open_storage(url))
    assert _states(again) == [(FAIL, True), (RUNNING, False)]

"""Process checks: whether a trial's owner is still alive, and marking dead owners' RUNNING trials stale.

A RUNNING counted trial left by a killed process is marked FAIL with user attr ``stale`` (owner pid gone on this
host, or older than ``stale_after_s``) when a worker next starts, and is no longer counted.
"""

from __future__ import annotations

import os
import socket
from typing import Any

# A kernel trial RUNNING longer than this is stale. An assumption: 15 minutes is far longer than one measurement
# (a compile and 20 graph replays), so only a dead worker's trial gets that old.
KERNEL_STALE_AFTER_S = 900.0


def owner_label() -> str:
    """This process as a trial's owner: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_stale_running(study: Any, stale_after_s: float) -> int:
    """Mark RUNNING trials whose owner died (same host, pid gone) or older than ``stale_after_s`` as FAIL+stale."""
    import datetime

    import optuna

    host = socket.gethostname()
    now = datetime.datetime.now()
    marked = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner = str(t.user_attrs.get("owner", ""))
        owner_host, _, pid = owner.rpartition(":")
        dead = owner_host == host and pid.isdigit() and not pid_alive(int(pid))
        old = t.datetime_start is not None and (now - t.datetime_start).total_seconds() > stale_after_s
        if dead or old:
            study._storage.set_trial_user_attr(t._trial_id, "stale", True)
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            marked += 1
    return marked


def pid_alive(pid: int) -> bool:
    """True unless process ``pid`` of this host is gone or a zombie."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed child not yet reaped) still answers kill(0); it is dead all the same.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True

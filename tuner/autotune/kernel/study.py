"""The tuning loop on one Optuna study: asking for configs, counting trials exactly, reusing measured repeats.

Shared by the CLI, the worker processes and the benchmark's replay. What one trial is (the definition the budget
and the tests use):
- the sampler proposes a config; one outside the shared-memory filter (``tuner.autotune.space``) is told PRUNED
  at once, inside the budget lock, costs nothing and is not counted (TPE learns to avoid it: pruned trials without
  intermediate values rank below every complete one);
- every other trial is *counted* (user attr ``counted``): it is measured (state COMPLETE, value = median us),
  or it failed to compile/launch (state PRUNED with user attrs ``failed`` and ``error``: PRUNED rather than FAIL
  so TPE steers away from it; FAIL trials are invisible to TPE), or it repeats an already measured config and
  reuses that value (user attr ``cached``: no GPU work, but counted, which is conservative);
- a study holds exactly ``trials`` counted trials at the end, whatever the number of workers and restarts:
  counting and asking happen under ``tuner.autotune.storage.budget_lock``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tuner.autotune import space
from tuner.autotune.processes import KERNEL_STALE_AFTER_S, owner_label
from tuner.autotune.space import PARAM_CHOICES, Config


def suggest_config(trial: Any) -> Config:
    """Ask the trial for the six grid parameters (categorical over vLLM's choices)."""
    return {name: int(trial.suggest_categorical(name, list(choices))) for name, choices in PARAM_CHOICES.items()}


def counted_trials(study: Any) -> list[Any]:
    """The study's counted trials (see module docstring), in trial-number order."""
    import optuna

    states = (
        optuna.trial.TrialState.RUNNING,
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.FAIL,
    )
    trials = study.get_trials(deepcopy=False, states=states)
    return [t for t in trials if t.user_attrs.get("counted") and not t.user_attrs.get("stale")]


def best_so_far(trials: Sequence[Any]) -> tuple[float | None, int]:
    """(best value, index in ``trials`` of the trial that set it) over COMPLETE trials."""
    import optuna

    best, where = None, -1
    for i, t in enumerate(trials):
        if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None and (best is None or t.value < best):
            best, where = float(t.value), i
    return best, where


def enqueue_seeds(study: Any, seeds: Iterable[tuple[str, Config]]) -> None:
    """Enqueue each seed config once per study (``skip_if_exists``), labelled with user attr ``seed``."""
    for label, config in seeds:
        study.enqueue_trial(dict(config), user_attrs={"seed": label}, skip_if_exists=True)


@dataclass
class LoopResult:
    """What one worker did on one study."""

    measured: int = 0  # trials this worker counted (measured, failed or cached)
    pruned: int = 0  # infeasible proposals told PRUNED for free
    stopped_by: str = ""  # "trials" | "patience" | "exhausted"


def _patience_spent(counted: Sequence[Any], patience: int | None) -> bool:
    """True when the last ``patience`` finished trials set no new best (and none is still RUNNING)."""
    import optuna

    if patience is None or patience <= 0:
        return False
    best, where = best_so_far(counted)
    finished = [t for t in counted if t.state != optuna.trial.TrialState.RUNNING]
    return best is not None and len(finished) - 1 - where >= patience and len(finished) == len(counted)


def _finish(study: Any, trial: Any, config: Config, cached: Any, evaluate: Callable[[Config], float]) -> Any:
    """Tell the study the counted trial's outcome: a reused value or error, else a fresh measurement."""
    import optuna

    if cached is not None and cached[0] == "running":
        # Another worker is measuring this very config now: wait for its result instead of measuring twice.
        cached = _wait_for(study, int(cached[1]))
    if cached is not None:
        value, error = cached
        trial.set_user_attr("cached", True)
        if error is None:
            return study.tell(trial, value)
        trial.set_user_attr("failed", True)
        trial.set_user_attr("error", error)
        return study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    try:
        value = float(evaluate(config))
        if not math.isfinite(value):
            raise RuntimeError(f"non-finite time {value}")
        return study.tell(trial, value)
    except Exception as exc:  # any compile/launch failure is a failed trial, never a crash
        trial.set_user_attr("failed", True)
        trial.set_user_attr("error", f"{type(exc).__name__}: {str(exc).strip()[:300]}")
        return study.tell(trial, state=optuna.trial.TrialState.PRUNED)


def tune_loop(
    study: Any,
    evaluate: Callable[[Config], float],
    n_trials: int,
    patience: int | None = None,
    feasible: Callable[[Config], bool] = lambda c: True,
    lock: Callable[[], Any] | None = None,
    on_trial: Callable[[Any, list[Any]], None] | None = None,
    max_pruned_in_row: int = 500,
) -> LoopResult:
    """Run trials on ``study`` until it holds ``n_trials`` counted trials or ``patience`` is exhausted.

    ``evaluate(config) -> median us`` raises on a compile/launch failure (the trial becomes PRUNED+failed).
    ``lock()`` returns a context manager (the study's budget lock); counting and asking happen under it.
    ``on_trial(frozen_trial, counted)`` is called after every counted trial (progress bars); ``counted`` is the
    list of counted trials seen before this one was asked for.
    ``max_pruned_in_row``: consecutive infeasible proposals after which the sampler is taken to be stuck
    (``stopped_by="exhausted"``); 500 is a choice, about a quarter of the 1920-config grid.
    """
    import optuna

    owner = owner_label()
    result = LoopResult()
    pruned_in_row = 0
    while True:
        with lock() if lock is not None else contextlib.nullcontext():
            counted = counted_trials(study)
            if len(counted) >= n_trials:
                result.stopped_by = "trials"
                return result
            if _patience_spent(counted, patience):
                result.stopped_by = "patience"
                return result
            trial = study.ask()
            config = suggest_config(trial)
            if not feasible(config):
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                result.pruned += 1
                pruned_in_row += 1
                if pruned_in_row >= max_pruned_in_row:
                    result.stopped_by = "exhausted"
                    return result
                continue
            pruned_in_row = 0
            # owner before counted: a kill between the two must not leave a counted RUNNING trial that names no
            # owner, which no later worker could tell dead (it would hold a budget slot for stale_after_s)
            trial.set_user_attr("owner", owner)
            trial.set_user_attr("counted", True)
            cached = _cached_outcome(counted, config)
        frozen = _finish(study, trial, config, cached, evaluate)
        result.measured += 1
        if on_trial is not None:
            on_trial(frozen, counted)


def _cached_outcome(counted: Sequence[Any], config: Config) -> tuple[float | None, str | None] | None:
    """(value, None) or (None, error) of an earlier finished trial with the same config; None if unseen."""
    import optuna

    key = space.config_key(config)
    running = None
    for t in counted:
        if space.config_key(t.params) != key:
            continue
        if t.state == optuna.trial.TrialState.RUNNING:
            running = t
            continue
        if t.state == optuna.trial.TrialState.COMPLETE:
            return float(t.value), None
        if t.user_attrs.get("failed"):
            return None, str(t.user_attrs.get("error", "failed"))
    if running is not None:
        return "running", running._trial_id  # type: ignore[return-value]
    return None


def _wait_for(
    study: Any, trial_id: int, timeout_s: float = KERNEL_STALE_AFTER_S
) -> tuple[float | None, str | None] | None:
    """Poll until trial ``trial_id`` finishes; its (value, None) or (None, error); None if it never does.

    ``timeout_s``: the time after which a RUNNING trial counts as stale by default (``KernelTuneSpec.stale_after_s``).
    """
    import optuna

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        t = study._storage.get_trial(trial_id)
        if t.state == optuna.trial.TrialState.COMPLETE:
            return float(t.value), None
        if t.state != optuna.trial.TrialState.RUNNING:
            if t.user_attrs.get("failed"):
                return None, str(t.user_attrs.get("error", "failed"))
            return None  # killed or stale: measure it ourselves
        time.sleep(0.05)
    return None

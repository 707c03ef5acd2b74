"""The stored copy of a capacity study: every trial written through in two operations, shared by workers."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

from moesim.errors import SpecError
from tuner.autotune.capacity.space import PARAMS_ATTR, search_space, suggest
from tuner.autotune.processes import fail_stale_running, owner_label


class StoredStudy:
    """The stored copy of a capacity study: trials written through in two operations each, shared by workers.

    ``storage``: a ``tuner.autotune.storage`` URL (opened here; counting and claiming under its budget lock) or an
    Optuna storage object (no lock: concurrent workers may then overshoot by workers - 1 trials).
    """

    def __init__(self, storage: Any, name: str, num_layers: int, stale_after_s: float) -> None:
        import optuna

        from tuner.autotune import storage as tstorage

        if isinstance(storage, str):
            self._storage = tstorage.open_storage(storage, fsync=False)
            self._lock: Callable[[], Any] = lambda: tstorage.budget_lock(storage, name)
        else:
            self._storage = storage
            self._lock = contextlib.nullcontext
        self._stale_after_s = stale_after_s
        self._space = search_space(num_layers)
        self._owner = owner_label()
        self._seen: set[int] = set()  # stored trial ids already in the sampler's study (copied in, or ours)
        with self._lock():
            try:
                self.study = optuna.create_study(
                    storage=self._storage,
                    study_name=name,
                    directions=["minimize", "minimize"],
                    load_if_exists=True,
                )
            except Exception as exc:  # a storage that opened but cannot hold the study (read-only file, ...)
                from moesim.traces.trace import first_line

                where = tstorage.redact(storage) if isinstance(storage, str) else type(storage).__name__
                raise SpecError(f"--storage: {where}: cannot create study {name}: {first_line(exc)}") from exc

    def pull(self, study: Any) -> None:
        """Copy stored COMPLETE trials the sampler's study does not hold yet (earlier runs', other workers')."""
        import optuna

        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if t._trial_id not in self._seen and PARAMS_ATTR in t.user_attrs:
                self._seen.add(t._trial_id)
                params = t.user_attrs[PARAMS_ATTR]
                space = {k: self._space[k] for k in params}
                study.add_trial(
                    optuna.trial.create_trial(
                        params=params, distributions=space, values=t.values, system_attrs=t.system_attrs
                    )
                )

    def finished(self, trials: Sequence[Any]) -> list[Any]:
        """The COMPLETE ones of stored ``trials``, each with its parameters (from user attr ``params``)."""
        import optuna

        out = []
        for t in trials:
            if t.state == optuna.trial.TrialState.COMPLETE and PARAMS_ATTR in t.user_attrs:
                t = copy.copy(t)
                t.params = t.user_attrs[PARAMS_ATTR]  # decoded by settings_from_params; distributions unused
                out.append(t)
        return out

    def run(
        self,
        study: Any,
        trials: int,
        num_layers: int,
        evaluate: Callable[[dict[str, Any]], tuple[float, float]],
        on_trial: Callable[[int], None] | None,
    ) -> list[Any]:
        """Run trials until the stored study holds ``trials`` COMPLETE ones and none RUNNING; return them."""
        import optuna
        from optuna.study._tell import _tell_with_warning

        state = optuna.trial.TrialState
        storage, study_id = self.study._storage, self.study._study_id
        while True:
            with self._lock():
                fail_stale_running(self.study, self._stale_after_s)
                self.pull(study)
                live = self.study.get_trials(deepcopy=False, states=(state.COMPLETE, state.RUNNING))
                claim = len(live) < trials
                if claim:
                    trial = study.ask()
                    params = suggest(trial, num_layers)
                    template = optuna.trial.FrozenTrial(
                        number=0,
                        state=state.RUNNING,
                        value=None,
                        datetime_start=trial.datetime_start,
                        datetime_complete=None,
                        params={},
                        distributions={},
                        user_attrs={"owner": self._owner, PARAMS_ATTR: params},
                        system_attrs=study._storage.get_trial_system_attrs(trial._trial_id),
                        intermediate_values={},
                        trial_id=0,
                    )
                    stored_id = storage.create_new_trial(study_id, template_trial=template)
                    self._seen.add(stored_id)
            if not claim:
                if not any(t.state == state.RUNNING for t in live):
                    return self.finished(live)
                time.sleep(0.05)  # other workers' last trials: wait, so every worker reports the same study
                continue
            try:
                values = evaluate(params)
            except BaseException:  # Ctrl-C or an objective error: free the claimed slot at once
                storage.set_trial_state_values(stored_id, state.FAIL)
                raise
            # what study.optimize calls: study.tell would also deep-copy the finished trial (0.9 s of 200 trials)
            _tell_with_warning(study, trial, value_or_values=values, suppress_warning=True)
            storage.set_trial_state_values(stored_id, state.COMPLETE, list(values))
            if on_trial is not None:
                on_trial(trial.number)

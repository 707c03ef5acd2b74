"""Running the studies: one worker per process, each joining the shared study of every M and tuning until its
budget is spent; :func:`autotune_kernel` runs one in-process or starts several, with a progress bar.

A worker: for each M, create (or join) the study named by ``KernelTuneSpec.study_name``, mark dead owners'
RUNNING trials stale, enqueue the seeds into a fresh study, build the problem and run ``study.tune_loop``
with ``measure.measure_us`` as the objective.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from moesim.errors import HardwareError
from tuner.autotune import space
from tuner.autotune.kernel.device import check_backend, device_label, smem_limit, visible_gpus
from tuner.autotune.kernel.errors import KernelSpecError
from tuner.autotune.kernel.measure import measure_us
from tuner.autotune.kernel.problem import make_problem, make_weights
from tuner.autotune.kernel.results import MResult, check_save_dir, save_results, summarize_study
from tuner.autotune.kernel.routing import check_trace_shape
from tuner.autotune.kernel.seeds import seed_configs
from tuner.autotune.kernel.spec import KernelTuneSpec
from tuner.autotune.kernel.study import LoopResult, best_so_far, counted_trials, enqueue_seeds, tune_loop
from tuner.autotune.processes import fail_stale_running
from tuner.autotune.samplers import make_sampler


def _load_trace(spec: KernelTuneSpec) -> Any:
    if not spec.trace:
        return None
    from moesim.traces.formats import load_trace

    return load_trace(spec.trace)


def run_worker(
    spec: KernelTuneSpec, worker: int = 0, progress: Callable[[int, Any, list[Any]], None] | None = None
) -> dict[int, LoopResult]:
    """One worker: for each M, join the shared study and run trials until its budget is spent."""
    import optuna

    from tuner.autotune import storage as tstorage

    check_backend(spec.backend)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = device_label(spec.backend)
    smem_kb, _ = smem_limit(spec)
    dtype_bytes = space.DTYPE_BYTES.get(spec.dtype, 2)
    space.feasible_grid(smem_kb, dtype_bytes)  # raises InfeasibleError on an empty space
    feasible = lambda c: space.is_feasible(c, smem_kb, dtype_bytes)  # noqa: E731
    trace = _load_trace(spec)
    storage = tstorage.open_storage(spec.storage)
    ref_dir = Path(spec.reference_dir) if spec.reference_dir else None
    w1, w2 = make_weights(spec.E, spec.N, spec.K, spec.dtype, spec.backend, seed=0)
    results: dict[int, LoopResult] = {}
    for m in spec.ms:
        name = spec.study_name(device, m)
        # per worker and M its own stream; RandomState takes seeds below 2**32
        sampler = make_sampler(spec.sampler, None if spec.seed is None else (spec.seed + 1000 * worker + m) % 2**32)
        study = optuna.create_study(
            storage=storage, study_name=name, direction="minimize", sampler=sampler, load_if_exists=True
        )
        lock = lambda name=name: tstorage.budget_lock(spec.storage, name)  # noqa: E731
        with lock():
            fail_stale_running(study, spec.stale_after_s)
            problem_attr = {"E": spec.E, "N": spec.N, "K": spec.K, "top_k": spec.top_k, "dtype": spec.dtype}
            study.set_user_attr("problem", {**problem_attr, "device": device, "M": m, "routing": spec.routing_label()})
            if not counted_trials(study):
                seeds = seed_configs(spec.E, spec.N, spec.K, m, device, spec.dtype, ref_dir, top_k=spec.top_k)
                enqueue_seeds(study, seeds)
        problem = make_problem(
            w1, w2, m, spec.top_k, spec.backend, spec.draws, spec.routing, trace, spec.trace_layer, seed=m
        )
        evaluate = lambda c, p=problem: measure_us(p, c, spec.warmup, spec.repeats)  # noqa: E731
        on_trial = (lambda t, counted, m=m: progress(m, t, counted)) if progress else None
        results[m] = tune_loop(study, evaluate, spec.trials, spec.patience, feasible, lock, on_trial)
    return results


def _worker_main(spec_dict: dict, worker: int, gpu: str | None) -> None:
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    run_worker(KernelTuneSpec(**spec_dict), worker)


def _check_inputs(spec: KernelTuneSpec, workers: int, save_dir: str | None) -> str:
    """Everything that can be wrong with the input, checked before the storage (journal, lock) is touched;
    returns the device label."""
    check_backend(spec.backend)
    if workers < 1:
        raise KernelSpecError("workers", f"must be >= 1, got {workers}")
    smem_kb, _ = smem_limit(spec)
    space.feasible_grid(smem_kb, space.DTYPE_BYTES.get(spec.dtype, 2))
    device = device_label(spec.backend)
    if spec.trace:
        check_trace_shape(_load_trace(spec), spec.E, spec.top_k, spec.trace_layer, spec.trace)
    if save_dir is not None:
        check_save_dir(spec, save_dir, device)
    return device


def _run_processes(spec: KernelTuneSpec, workers: int, refresh: Callable[[], None]) -> None:
    """``workers`` spawned worker processes on the same studies (one GPU each on CUDA); ``refresh`` every 0.5 s."""
    import multiprocessing

    gpus = visible_gpus() if spec.backend == "cuda" else []
    if spec.backend == "cuda" and len(gpus) < workers:
        raise HardwareError(f"--workers: {workers} workers need {workers} visible GPUs, found {len(gpus)}")
    ctx = multiprocessing.get_context("spawn")
    spec_dict = dict(spec.__dict__)
    procs = [ctx.Process(target=_worker_main, args=(spec_dict, w, gpus[w] if gpus else None)) for w in range(workers)]
    for proc in procs:
        proc.start()
    while any(p.is_alive() for p in procs):
        refresh()
        time.sleep(0.5)
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise HardwareError(f"autotune kernel: {len(bad)} worker process(es) failed (exit codes {bad})")


def autotune_kernel(
    spec: KernelTuneSpec,
    workers: int = 1,
    save_dir: str | None = None,
    console: Any = None,
    show_progress: bool = True,
) -> list[MResult]:
    """Tune every M of ``spec`` (resuming any finished trials in storage); optionally write vLLM JSON.

    ``workers > 1`` starts that many processes, one per visible GPU (``CUDA_VISIBLE_DEVICES`` set per process;
    with the interpret backend they share the CPU), all on the same studies; the budget stays exact.
    """
    import optuna
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tuner.autotune import storage as tstorage

    device = _check_inputs(spec, workers, save_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = tstorage.open_storage(spec.storage)

    def load(m: int) -> Any:
        return optuna.load_study(study_name=spec.study_name(device, m), storage=storage)

    def show(m: int, finished: Sequence[Any]) -> None:
        best, _ = best_so_far(finished)
        bar.update(tasks[m], completed=len(finished), best="-" if best is None else f"{best:.1f} us")

    def refresh() -> None:  # every study's finished counted trials, from storage
        for m in spec.ms:
            try:
                study = load(m)
            except KeyError:  # no worker has created this study yet
                continue
            show(m, [t for t in counted_trials(study) if t.state != optuna.trial.TrialState.RUNNING])

    bar = Progress(
        TextColumn("M={task.fields[m]:>5}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("best {task.fields[best]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not show_progress,
    )
    stopped: dict[int, str] = {}
    with bar:
        tasks = {m: bar.add_task("", total=spec.trials, m=m, best="-") for m in spec.ms}
        if workers == 1:
            # One worker: the trials counted before this one plus this one are all the study's finished trials.
            results = run_worker(spec, 0, lambda m, frozen, counted: show(m, [*counted, frozen]))
            stopped = {m: res.stopped_by for m, res in results.items()}
        else:
            _run_processes(spec, workers, refresh)
        refresh()

    results_out = [summarize_study(load(m), m, stopped.get(m, "")) for m in spec.ms]
    if save_dir is not None:
        save_results(spec, results_out, save_dir, device)
    return results_out

"""The figures of a what-if report: which apply to a sweep (:func:`plot_jobs`), drawn once as PNG bytes.

Each figure is a ``whatif.plots`` function and its arguments. With a plot pool (:func:`start_plot_pool`, fork
only) the figures are drawn in worker processes while the caller writes the tables; only those processes import
matplotlib (0.25 s), the caller never does.
"""

from __future__ import annotations

import io
from typing import Any

from whatif.sweep import WhatifRun


def _fig_png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _render(plot: str, args: tuple) -> bytes:
    """PNG bytes of ``whatif.plots.<plot>(*args)`` (run in a plot worker, or here without one)."""
    from whatif import plots

    return _fig_png(getattr(plots, plot)(*args))


# what a plot never reads: left out of what goes to a plot worker (the simulator's per-layer detail and the
# placement are 95% of a record's pickle)
_NOT_PLOTTED = ("simulate", "placement")


def _slim(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in _NOT_PLOTTED}


def plot_jobs(run: WhatifRun) -> list[tuple[str, str, str, str, tuple]]:
    """(file stem, title, caption, ``whatif.plots`` function, its arguments) for every plot that applies."""
    from whatif import plots  # no matplotlib: plots imports it where it draws

    sf = run.scenario_file
    feasible = run.feasible
    ok = [_slim(r) for r in feasible]
    base_i = next(i for i, r in enumerate(feasible) if r is run.baseline)
    base, best = ok[base_i], ok[next(i for i, r in enumerate(feasible) if r is run.best)]
    shown, cut = plots.shown_records(ok, base_i, sf.minimize, sf.objective)
    cut_note = (
        f" Showing the {len(shown)} best of {len(ok)} scenarios (and the baseline); results.csv has them all."
        if cut
        else ""
    )
    latency_caption = (
        "Each bar stacks the MoE phases of each layer's slowest GPU, summed over all MoE layers, then attention "
        "and the dense part; the diamond is the simulated step latency, left of the bar's end when overlap "
        "hides communication behind compute." + cut_note
    )
    load_caption = (
        "Token-expert assignments each GPU computes per layer under the placement of the baseline and of the "
        "best scenario: bars are the mean over the simulated layers, red ticks the GPU's busiest layer. The "
        "busiest GPU sets each layer's time; the title gives its load over the mean, per layer, averaged over "
        "layers."
    )
    out = [
        ("latency", "Step latency by phase", latency_caption, "plot_latency", (shown,)),
        ("gpu_load", "Per-GPU load: baseline and best", load_caption, "plot_gpu_load", (base, best)),
    ]
    if plots.has_capacity_sweep(ok):
        caption = (
            "Each point is a capacity factor; a lower capacity drops more assignments and shortens the "
            "slowest expert. The star is the dropless run. Dropped assignments cost model quality, which "
            "moesim does not model: read a latency gain together with its drop rate."
        )
        out.append(("capacity", "Latency vs dropped tokens", caption, "plot_capacity", (ok,)))
    if any(any(r["traffic_bytes"].values()) for r in shown):  # a chart only where some bytes move
        caption = "Bytes moved by dispatch and combine per step, by the class of link they cross." + cut_note
        out.append(("traffic", "Traffic by link class", caption, "plot_traffic", (shown,)))
    return out


# Drawing time per figure, benchmark sweep (2 cores): latency 0.5 s, traffic and capacity 0.37, gpu_load 0.23.
# Submitted heaviest first so two workers finish together (0.75 s each instead of 0.8 and 0.6).
_DRAW_ORDER = ("plot_latency", "plot_traffic", "plot_capacity", "plot_gpu_load")
MAX_PLOT_WORKERS = 4  # a report has at most four figures


def _import_matplotlib() -> None:
    from whatif.plots import _plt

    _plt()


def start_plot_pool(workers: int) -> Any:
    """A fork pool of ``min(workers, MAX_PLOT_WORKERS)`` plot workers, already importing matplotlib, for
    ``write_report(pool=...)``; None for one worker or without fork (the figures are then drawn in-process).

    Start it before a sweep: its import (0.25 s per worker) then overlaps the sweep's serial trace drawing,
    when a core is idle. The caller shuts it down.
    """
    import multiprocessing as mp

    n = min(workers, MAX_PLOT_WORKERS)
    if n <= 1 or "fork" not in mp.get_all_start_methods():
        return None
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("fork"), initializer=_import_matplotlib)
    pool.submit(int)  # a fork pool starts all its workers at the first submit
    return pool


def draw_all(jobs: list[tuple[str, str, str, str, tuple]], pool: Any) -> list[Any]:
    """One future per job (in the pool, heaviest first), or None without a pool."""
    if pool is None:
        return [None] * len(jobs)
    order = sorted(
        range(len(jobs)), key=lambda i: _DRAW_ORDER.index(jobs[i][3]) if jobs[i][3] in _DRAW_ORDER else len(_DRAW_ORDER)
    )
    futures: list[Any] = [None] * len(jobs)
    for i in order:
        futures[i] = pool.submit(_render, jobs[i][3], jobs[i][4])
    return futures


def collect_figures(
    jobs: list[tuple[str, str, str, str, tuple]], futures: list[Any]
) -> list[tuple[str, str, str, bytes]]:
    """(file stem, title, caption, PNG bytes) per job: the pool's result, or drawn here without one."""
    return [
        (stem, title, caption, _render(plot, args) if f is None else f.result())
        for (stem, title, caption, plot, args), f in zip(jobs, futures)
    ]


def make_plots(run: WhatifRun, workers: int = 1) -> list[tuple[str, str, str, bytes]]:
    """(file stem, title, caption, PNG bytes) for every plot that applies to this sweep."""
    jobs = plot_jobs(run)
    pool = start_plot_pool(min(workers, len(jobs)))
    try:
        return collect_figures(jobs, draw_all(jobs, pool))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


__all__ = ["MAX_PLOT_WORKERS", "collect_figures", "draw_all", "make_plots", "plot_jobs", "start_plot_pool"]

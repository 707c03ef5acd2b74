"""whatif.figures on a hand-made sweep (no simulator): which figures apply and with what data, the order they go
to plot workers, and the PNG bytes (their pixel size is the figure's inches times 110 dpi)."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import struct  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from whatif import figures  # noqa: E402
from whatif.figures import (  # noqa: E402
    MAX_PLOT_WORKERS,
    collect_figures,
    draw_all,
    make_plots,
    plot_jobs,
    start_plot_pool,
)
from whatif.scenario import parse_scenarios  # noqa: E402
from whatif.sweep import PHASES, WhatifRun  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(axes: dict, fail: int | None = None, traffic: dict | None = None) -> WhatifRun:
    """A sweep of OLMoE on 16 GPUs over ``axes``, with made-up numbers; scenario ``fail`` could not run."""
    doc = {"base": {"model": "olmoe-1b-7b", "cluster": "h100-2x8-ib400", "tokens_per_gpu": 1024}, "axes": axes}
    sf = parse_scenarios(doc, "/tmp/figures_test.yaml")
    rng = np.random.default_rng(3)
    records = []
    for i, sc in enumerate(sf.scenarios):
        r = {"name": sc.name, "index": i, "settings": sc.settings(), "axis_values": dict(sc.axis_values)}
        if i == fail:
            r["error"] = "placement: GPU memory: needs 90 GB"
        else:
            load = rng.uniform(500, 1500, 16)
            phase = {p: float(rng.uniform(10, 500)) for p in PHASES}
            r.update(
                # the baseline is the slowest: never the best, never among the best shown
                step_latency_us=1000.0 + 10.0 * ((i * 7) % 13) + (5000.0 if i == sf.baseline_index else 0.0),
                tokens_per_s_per_gpu=1.0,
                phase_us=phase,
                attention_us=200.0,
                dense_us=100.0,
                dropped_fraction=0.0 if sc.capacity_factor is None else 0.1 / sc.capacity_factor,
                gpu_load=load.tolist(),
                gpu_load_max=(1.3 * load).tolist(),
                load_imbalance=1.4,
                traffic_bytes=dict(traffic) if traffic is not None else {"nvswitch": 1e9 * (i + 1), "ib": 5e8},
                link_level={"nvswitch": "intra-node", "ib": "inter-node"},
                simulate={"layers": [{"gpu_tokens": load.tolist()}]},
                placement={"phy2log": [list(range(64))]},
            )
        records.append(r)
    ok = [i for i, r in enumerate(records) if "error" not in r]
    best = min(ok, key=lambda i: records[i]["step_latency_us"])
    for i, r in enumerate(records):
        r["is_baseline"], r["is_best"] = i == sf.baseline_index, i == best
    return WhatifRun(sf, records, sf.baseline_index, best, 0.1, 0)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def slim(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("simulate", "placement")}


# ----------------------------------------------------------------------------------------- plot_jobs
def test_capacity_sweep_gets_four_figures_on_slim_feasible_records():
    run = make_run({"capacity_factor": [None, 1.0, 1.5], "drop_policy": ["probs", "reroute"]}, fail=3)
    jobs = plot_jobs(run)
    assert [(j[0], j[1], j[3]) for j in jobs] == [
        ("latency", "Step latency by phase", "plot_latency"),
        ("gpu_load", "Per-GPU load: baseline and best", "plot_gpu_load"),
        ("capacity", "Latency vs dropped tokens", "plot_capacity"),
        ("traffic", "Traffic by link class", "plot_traffic"),
    ]
    feasible = [slim(r) for i, r in enumerate(run.records) if i != 3]
    assert jobs[0][4] == (feasible,) and jobs[2][4] == (feasible,) and jobs[3][4] == (feasible,)
    assert jobs[1][4] == (slim(run.baseline), slim(run.best))
    # the simulator's detail and the placement stay home; the run's own records keep them
    for _, _, _, _, args in jobs:
        for arg in args:
            for r in arg if isinstance(arg, list) else [arg]:
                assert "simulate" not in r and "placement" not in r
    assert all("simulate" in r for r in run.feasible)
    assert "Showing the" not in jobs[0][2] and jobs[0][2].startswith("Each bar stacks the MoE phases")
    assert "The star is the dropless run" in jobs[2][2]


def test_no_capacity_figure_without_capacity_and_no_traffic_figure_without_traffic():
    run = make_run({"placement": ["contiguous", "round-robin"]}, traffic={})
    assert [j[0] for j in plot_jobs(run)] == ["latency", "gpu_load"]
    with_traffic = make_run({"placement": ["contiguous", "round-robin"]})
    assert [j[0] for j in plot_jobs(with_traffic)] == ["latency", "gpu_load", "traffic"]


def test_no_traffic_figure_when_no_bytes_move():
    run = make_run({"placement": ["contiguous", "round-robin"]}, traffic={"nvswitch": 0.0})
    assert [j[0] for j in plot_jobs(run)] == ["latency", "gpu_load"]


def test_many_scenarios_bar_charts_show_the_best_and_the_baseline():
    run = make_run({"capacity_factor": [None] + [1.0 + 0.05 * i for i in range(44)]})  # 45 scenarios
    jobs = {j[0]: j for j in plot_jobs(run)}
    (shown,) = jobs["latency"][4]
    assert len(shown) == 40 and jobs["traffic"][4] == (shown,)
    assert run.baseline["name"] in [r["name"] for r in shown]
    latencies = sorted(r["step_latency_us"] for r in run.records)
    assert max(r["step_latency_us"] for r in shown if not r["is_baseline"]) <= latencies[38]
    note = " Showing the 40 best of 45 scenarios (and the baseline); results.csv has them all."
    assert jobs["latency"][2].endswith(note) and jobs["traffic"][2].endswith(note)
    assert "Showing" not in jobs["gpu_load"][2]
    assert len(jobs["capacity"][4][0]) == 45  # the capacity plot has every point


# ----------------------------------------------------------------------------------------- drawing
class FakeFuture:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class FakePool:
    def __init__(self):
        self.submitted: list[tuple] = []
        self.shutdowns: list[dict] = []

    def submit(self, fn, *args):
        self.submitted.append((fn, *args))
        return FakeFuture(f"png of {args[0] if args else fn.__name__}".encode())

    def shutdown(self, **kwargs):
        self.shutdowns.append(kwargs)


def test_draw_all_submits_heaviest_first_and_keeps_job_order():
    jobs = [(p, "", "", p, (i,)) for i, p in enumerate(["plot_gpu_load", "other", "plot_latency", "plot_traffic"])]
    assert draw_all(jobs, None) == [None] * 4
    pool = FakePool()
    futures = draw_all(jobs, pool)
    assert [s[1] for s in pool.submitted] == ["plot_latency", "plot_traffic", "plot_gpu_load", "other"]
    assert all(s[0] is figures._render for s in pool.submitted)
    assert [s[2] for s in pool.submitted] == [(2,), (3,), (0,), (1,)]
    assert [f.result().decode() for f in futures] == [f"png of {j[3]}" for j in jobs]  # at their job's place


def test_collect_figures_renders_pngs_of_the_figure_size():
    import matplotlib.pyplot as plt

    run = make_run({"placement": ["contiguous", "round-robin", "eplb"]})
    jobs = plot_jobs(run)  # latency, gpu_load, traffic
    out = collect_figures(jobs, [None, None, FakeFuture(b"from a worker")])
    assert [(o[0], o[1], o[2]) for o in out] == [(j[0], j[1], j[2]) for j in jobs]
    assert out[2][3] == b"from a worker"
    # 11 in wide at 110 dpi; 3 bars get the smallest height (3.2 in), two load panels 2 * 3.0 + 0.6 in
    assert png_size(out[0][3]) == (1210, 352)
    assert png_size(out[1][3]) == (1210, 726)
    assert plt.get_fignums() == []  # every figure closed once saved


def test_make_plots_in_process_matches_each_render(monkeypatch):
    run = make_run({"capacity_factor": [None, 1.25]})
    asked: list[int] = []
    monkeypatch.setattr(figures, "start_plot_pool", lambda n: asked.append(n))  # returns None: in-process
    out = make_plots(run, workers=8)
    assert asked == [4]  # no more workers than figures
    jobs = plot_jobs(run)
    assert [o[0] for o in out] == ["latency", "gpu_load", "capacity", "traffic"]
    for (stem, _, _, png), job in zip(out, jobs):
        assert png == figures._render(job[3], job[4]), stem


def test_make_plots_shuts_its_pool_down(monkeypatch):
    run = make_run({"placement": ["contiguous", "eplb"]}, traffic={})
    pool = FakePool()
    monkeypatch.setattr(figures, "start_plot_pool", lambda n: pool)
    out = make_plots(run, workers=2)
    assert [o[3] for o in out] == [b"png of plot_latency", b"png of plot_gpu_load"]
    assert pool.shutdowns == [{"cancel_futures": True}]


# ----------------------------------------------------------------------------------------- the plot pool
def test_start_plot_pool_sizes(monkeypatch):
    import concurrent.futures
    import multiprocessing as mp

    made: list[dict] = []

    class FakeExecutor(FakePool):
        def __init__(self, **kwargs):
            super().__init__()
            made.append(kwargs)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", FakeExecutor)
    assert start_plot_pool(1) is None and start_plot_pool(0) is None and made == []
    if "fork" in mp.get_all_start_methods():
        pool = start_plot_pool(9)
        assert made[0]["max_workers"] == MAX_PLOT_WORKERS == 4
        assert made[0]["mp_context"].get_start_method() == "fork"
        assert made[0]["initializer"] is figures._import_matplotlib
        assert pool.submitted == [(int,)]  # one submit starts every worker
        start_plot_pool(3)
        assert made[1]["max_workers"] == 3
    monkeypatch.setattr(mp, "get_all_start_methods", lambda: ["spawn"])
    n = len(made)
    assert start_plot_pool(4) is None and len(made) == n  # without fork: drawn in-process


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(), reason="needs fork")
def test_real_plot_pool_draws_the_same_bytes():
    run = make_run({"placement": ["contiguous", "round-robin"]}, traffic={})
    jobs = plot_jobs(run)
    pool = start_plot_pool(2)
    try:
        pooled = collect_figures(jobs, draw_all(jobs, pool))
    finally:
        pool.shutdown(cancel_futures=True)
    assert pooled == collect_figures(jobs, [None] * len(jobs))

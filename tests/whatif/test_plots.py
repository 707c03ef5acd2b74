"""whatif.plots on hand-made records: the numbers behind each figure's artists (bar extents, marker positions,
labels, axis limits and units), worked out by hand from the records, and the helpers that pick what is shown."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from whatif import plots  # noqa: E402
from whatif.plots import (  # noqa: E402
    MAX_BARS,
    PHASE_COLORS,
    has_capacity_sweep,
    plot_capacity,
    plot_gpu_load,
    plot_latency,
    plot_traffic,
    shown_records,
    time_unit_for,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def rec(name: str, step: float, **extra) -> dict:
    out = {"name": name, "step_latency_us": step, "settings": {"capacity_factor": None, "drop_policy": "probs"}}
    out.update(extra)
    return out


def bars(container) -> list[tuple[float, float, float]]:
    """(left, width, centre y) of each horizontal bar."""
    return [(p.get_x(), p.get_width(), p.get_y() + p.get_height() / 2) for p in container]


# ----------------------------------------------------------------------------------------- helpers
@pytest.mark.parametrize(
    ("max_us", "unit"), [(0.0, ("µs", 1.0)), (1999.9, ("µs", 1.0)), (2000.0, ("ms", 1e-3)), (5e6, ("ms", 1e-3))]
)
def test_time_unit(max_us, unit):
    assert time_unit_for(max_us) == unit


@pytest.mark.parametrize(
    ("max_bytes", "unit"),
    [(0.0, ("B", 1.0)), (999.0, ("B", 1.0)), (1e3, ("kB", 1e-3)), (5e6, ("MB", 1e-6)), (2e9, ("GB", 1e-9))],
)
def test_bytes_unit(max_bytes, unit):
    assert plots._bytes_unit(max_bytes) == unit


def test_shown_records_all_when_few():
    records = [rec(str(i), 100.0 - i) for i in range(MAX_BARS)]
    shown, cut = shown_records(records, 0, True, "step_latency_us")
    assert shown == records and shown is not records and not cut


def test_shown_records_best_plus_baseline_in_sweep_order():
    latencies = [50.0, 10.0, 40.0, 20.0, 30.0, 60.0]
    records = [rec(str(i), v) for i, v in enumerate(latencies)]
    shown, cut = shown_records(records, 5, True, "step_latency_us", limit=3)
    assert cut and [r["name"] for r in shown] == ["1", "3", "5"]  # the 2 lowest latencies and the baseline
    # higher is better for throughput: the 2 highest, in sweep order, and the baseline
    for r, v in zip(records, latencies):
        r["tokens_per_s_per_gpu"] = v
    shown, _ = shown_records(records, 1, False, "tokens_per_s_per_gpu", limit=3)
    assert [r["name"] for r in shown] == ["0", "1", "5"]
    # a tie is broken by sweep order
    tied = [rec(str(i), 10.0) for i in range(5)]
    assert [r["name"] for r in shown_records(tied, 4, True, "step_latency_us", limit=3)[0]] == ["0", "1", "4"]


def test_has_capacity_sweep():
    def cf(*values):
        return [{"settings": {"capacity_factor": v}} for v in values]

    assert not has_capacity_sweep(cf(None, None))
    assert has_capacity_sweep(cf(None, 1.25))
    assert has_capacity_sweep(cf(1.0))  # one capped run: still a capacity plot
    assert has_capacity_sweep(cf(1.0, 1.5))


def test_label_tags():
    assert plots._label({"name": "x"}) == "x"
    assert plots._label({"name": "x", "is_baseline": True, "is_best": True}) == "x  [base, best]"
    assert plots._label({"name": "x", "is_best": True}) == "x  [best]"


# ----------------------------------------------------------------------------------------- plot_latency
def latency_records() -> list[dict]:
    out = []
    for i, step in enumerate([900.0, 700.0, 1200.0]):
        phase = {"router": 10.0 * (i + 1), "permute": 20.0, "dispatch": 100.0, "compute": 300.0, "combine": 0.0}
        out.append(rec("abc"[i], step, phase_us=phase, attention_us=150.0, dense_us=0.0))
    out[0]["is_baseline"], out[1]["is_best"] = True, True
    return out


def test_latency_bars_stack_the_phases_top_down():
    records = latency_records()
    fig = plot_latency(records)
    ax = fig.axes[0]
    # combine and dense are 0 everywhere: no bars for them
    assert [c.get_label() for c in ax.containers] == [
        "MoE router",
        "MoE permute",
        "MoE dispatch",
        "MoE compute",
        "attention",
    ]
    router, permute, dispatch, compute, attention = (bars(c) for c in ax.containers)
    assert router == [(0.0, 10.0, 2.0), (0.0, 20.0, 1.0), (0.0, 30.0, 0.0)]  # first record on top (y = 2)
    assert permute == [(10.0, 20.0, 2.0), (20.0, 20.0, 1.0), (30.0, 20.0, 0.0)]
    assert [b[0] for b in compute] == [130.0, 140.0, 150.0]
    assert attention == [(430.0, 150.0, 2.0), (440.0, 150.0, 1.0), (450.0, 150.0, 0.0)]
    colors = [tuple(c.patches[0].get_facecolor()) for c in ax.containers]
    from matplotlib.colors import to_rgba

    assert colors == [to_rgba(PHASE_COLORS[p]) for p in ("router", "permute", "dispatch", "compute", "attention")]
    assert dispatch[0][1] == 100.0


def test_latency_diamonds_labels_and_limits():
    fig = plot_latency(latency_records(), title="T")
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.collections[0].get_offsets(), [[900, 2], [700, 1], [1200, 0]])
    # value labels at the end of each bar or diamond, whichever is further right (bar ends: 590, 600, 610)
    assert [t.get_text() for t in ax.texts] == ["  900", "  700", "  1,200"]
    assert [t.get_position()[0] for t in ax.texts] == [900.0, 700.0, 1200.0]
    assert ax.get_xlim() == pytest.approx((0.0, 1200 * 1.15))
    assert ax.get_xlabel() == "time per step (µs)" and ax.get_title() == "T"
    ticks = ax.get_yticklabels()
    assert list(ax.get_yticks()) == [2, 1, 0]
    assert [t.get_text() for t in ticks] == ["a  [base]", "b  [best]", "c"]
    assert [t.get_fontweight() for t in ticks] == ["bold", "bold", "normal"]
    legend = {t.get_text() for t in fig.legends[0].texts}
    assert legend == {"step latency", "MoE router", "MoE permute", "MoE dispatch", "MoE compute", "attention"}
    assert tuple(fig.get_size_inches()) == (11.0, 3.2)  # the smallest height, for 3 bars


def test_latency_in_ms_when_a_bar_ends_past_2000_us():
    phase = {"router": 0.0, "permute": 0.0, "dispatch": 500.0, "compute": 2000.0, "combine": 500.0}
    # overlap: the step (2500 µs) is shorter than the stacked phases (3000 µs plus 100 µs dense)
    fig = plot_latency([rec("x", 2500.0, phase_us=phase, dense_us=100.0)])
    ax = fig.axes[0]
    assert ax.get_xlabel() == "time per step (ms)"
    labels = [c.get_label() for c in ax.containers]
    assert labels == ["MoE dispatch", "MoE compute", "MoE combine", "dense MLP + LM head"]
    extents = [v for c in ax.containers for v in bars(c)[0][:2]]  # (left, width) of each part, in ms
    assert extents == pytest.approx([0.0, 0.5, 0.5, 2.0, 2.5, 0.5, 3.0, 0.1])
    np.testing.assert_allclose(ax.collections[0].get_offsets(), [[2.5, 0.0]])
    assert ax.texts[0].get_text() == "  2.5" and ax.texts[0].get_position()[0] == pytest.approx(3.1)
    assert ax.get_xlim() == pytest.approx((0.0, 3.1 * 1.15))


# ----------------------------------------------------------------------------------------- plot_gpu_load
def load_record(name: str, load: list[float], peak: list[float] | None, imbalance: float, placement: str) -> dict:
    return rec(
        name,
        1.0,
        gpu_load=load,
        gpu_load_max=peak,
        load_imbalance=imbalance,
        settings={"placement": placement, "capacity_factor": None},
    )


def test_gpu_load_baseline_and_best_panels():
    base = load_record("base", [100.0, 300.0, 200.0, 400.0], [150.0, 500.0, 260.0, 450.0], 1.5, "contiguous")
    best = load_record("eplb", [250.0, 250.0, 250.0, 250.0], [260.0, 270.0, 255.0, 300.0], 1.08, "eplb")
    fig = plot_gpu_load(base, best)
    top, bottom = fig.axes
    assert [p.get_height() for p in top.patches] == [100.0, 300.0, 200.0, 400.0]
    assert [p.get_height() for p in bottom.patches] == [250.0] * 4
    assert [p.get_x() + p.get_width() / 2 for p in top.patches] == [0.0, 1.0, 2.0, 3.0]
    np.testing.assert_array_equal(top.collections[0].get_offsets(), [[0, 150], [1, 500], [2, 260], [3, 450]])
    assert list(top.lines[0].get_ydata()) == [250.0, 250.0]  # the mean of all GPUs, dashed
    assert top.get_title() == (
        "baseline: base  (contiguous placement; busiest GPU / mean, per layer: 1.50)"
    ) and bottom.get_title().startswith("best: eplb  (eplb placement;")
    assert sorted(t.get_text() for t in top.get_legend().texts) == [
        "busiest layer",
        "mean of all GPUs (250)",
        "mean over layers",
    ]
    # one scale for both panels: the highest red tick (500) plus 30 % headroom
    assert top.get_ylim() == pytest.approx((0.0, 650.0)) and bottom.get_ylim() == pytest.approx((0.0, 650.0))
    assert top.get_xlim() == pytest.approx((-0.6, 3.6)) and bottom.get_xlabel() == "GPU index"


def test_gpu_load_single_panel_when_the_baseline_is_best_and_thousands_as_k():
    load = [float(x) for x in np.linspace(10_000, 40_000, 64)]
    base = load_record("only", load, None, 1.6, "contiguous")
    fig = plot_gpu_load(base, dict(base))
    (ax,) = fig.axes
    assert not ax.collections  # no per-layer peaks recorded: no red ticks
    assert ax.get_ylim() == pytest.approx((0.0, 40_000 * 1.3))
    assert ax.yaxis.get_major_formatter()(20_000, 0) == "20k" and ax.yaxis.get_major_formatter()(0, 0) == "0"
    assert list(ax.get_xticks()) == list(range(0, 64, 2))  # 64 GPUs: every second one labelled
    assert ax.get_title().startswith("baseline: only  (contiguous placement;")


# ----------------------------------------------------------------------------------------- plot_capacity
def cap(name: str, cf: float | None, policy: str, dropped: float, step: float, **axes) -> dict:
    return rec(
        name,
        step,
        dropped_fraction=dropped,
        settings={"capacity_factor": cf, "drop_policy": policy},
        axis_values={"capacity_factor": cf, "drop_policy": policy, **axes},
    )


def test_capacity_lines_per_policy_sorted_by_capacity():
    records = [
        cap("dropless", None, "probs", 0.0, 1000.0),
        cap("p1.5", 1.5, "probs", 0.01, 900.0),
        cap("p1.0", 1.0, "probs", 0.08, 800.0),
        cap("r1.0", 1.0, "reroute", 0.02, 850.0),
        cap("s1.0", 1.0, "position", 0.08, 800.0),  # the same point as probs at cf=1
    ]
    fig = plot_capacity(records)
    ax = fig.axes[0]
    lines = {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.lines}
    assert lines["drop policy: probs"] == ([8.0, 1.0], [800.0, 900.0])  # cf 1.0 then 1.5
    assert lines["drop policy: reroute"] == ([2.0], [850.0])
    assert lines["drop policy: position"] == ([8.0], [800.0])
    assert len(lines) == 3
    np.testing.assert_array_equal(ax.collections[0].get_offsets(), [[0.0, 1000.0]])  # the dropless star
    # one label per spot: position's point coincides with probs' cf=1 and is not labelled twice
    notes = sorted((t.get_text(), t.xy) for t in ax.texts)
    assert notes == [("cf=1", (2.0, 850.0)), ("cf=1", (8.0, 800.0)), ("cf=1.5", (1.0, 900.0))]
    assert ax.get_ylabel() == "step latency (µs)"
    legend = [t.get_text() for t in ax.get_legend().texts]
    assert "dropless (no capacity)" in legend and len(legend) == 4


def test_capacity_groups_by_the_other_axes_and_scales_to_ms():
    records = [
        cap("a", 1.0, "probs", 0.1, 3000.0, tokens_per_gpu=1024),
        cap("b", 2.0, "probs", 0.0, 4000.0, tokens_per_gpu=1024),
        cap("c", 1.0, "probs", 0.2, 5000.0, tokens_per_gpu=2048),
    ]
    ax = plot_capacity(records).axes[0]
    lines = {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.lines}
    assert lines == {
        "drop policy: probs, tokens_per_gpu=1024": ([10.0, 0.0], [3.0, 4.0]),
        "drop policy: probs, tokens_per_gpu=2048": ([20.0], [5.0]),
    }
    assert ax.get_ylabel() == "step latency (ms)" and not ax.collections  # no dropless run, no star


# ----------------------------------------------------------------------------------------- plot_traffic
def test_traffic_bars_by_link_class_inter_node_first():
    records = [
        rec("a", 1.0, traffic_bytes={"nvswitch": 2e9, "ib": 1e9, "pcie": 0.0}, is_baseline=True),
        rec("b", 1.0, traffic_bytes={"nvswitch": 3e9, "ib": 0.5e9}),
    ]
    records[0]["link_level"] = {"nvswitch": "intra-node", "ib": "inter-node"}
    fig = plot_traffic(records)
    ax = fig.axes[0]
    assert [c.get_label() for c in ax.containers] == ["ib (inter-node)", "nvswitch (intra-node)"]  # pcie: all 0
    ib, nvs = (bars(c) for c in ax.containers)
    assert np.allclose(ib, [(0.0, 1.0, 1.0), (0.0, 0.5, 0.0)])  # GB: the largest total is 3.5e9
    assert np.allclose(nvs, [(1.0, 2.0, 1.0), (0.5, 3.0, 0.0)])
    assert ax.get_xlabel().startswith("bytes moved per step (GB)")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a  [base]", "b"]
    assert [t.get_text() for t in fig.legends[0].texts] == ["ib (inter-node)", "nvswitch (intra-node)"]


def test_traffic_small_and_empty():
    ax = plot_traffic([rec("a", 1.0, traffic_bytes={"nvswitch": 2500.0})]).axes[0]
    assert ax.get_xlabel().startswith("bytes moved per step (kB)")
    assert [c.get_label() for c in ax.containers] == ["nvswitch"]  # no link level recorded: the bare name
    assert np.allclose(bars(ax.containers[0]), [(0.0, 2.5, 0.0)])
    empty = plot_traffic([rec("a", 1.0, traffic_bytes={"nvswitch": 0.0})])
    assert not empty.axes[0].containers and not empty.legends
    assert empty.axes[0].get_xlabel().startswith("bytes moved per step (B)")

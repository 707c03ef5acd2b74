"""Plots of a what-if sweep (matplotlib, Agg backend), each returned as a ``Figure`` for the report to embed.

- ``plot_latency``: step latency per scenario, the MoE phases (router, permute, dispatch, compute, combine)
  stacked, a marker at the simulated step latency (below the stack when overlap hides communication);
- ``plot_gpu_load``: tokens processed per GPU per layer under the baseline's and the best scenario's placement;
- ``plot_capacity``: step latency against the fraction of assignments dropped, one line per drop policy,
  for sweeps that vary the capacity factor;
- ``plot_traffic``: bytes sent per step by link class (NVLink, PCIe, NIC, ...), per scenario.

Records are the dicts of ``whatif.sweep`` (``phase_us``, ``step_latency_us``, ``gpu_load``,
``dropped_fraction``, ``traffic_bytes``). matplotlib is imported inside the functions (heavy import).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from whatif.sweep import PHASES

PHASE_COLORS = {
    "router": "#9467bd",
    "permute": "#8c564b",
    "dispatch": "#1f77b4",
    "compute": "#2ca02c",
    "combine": "#ff7f0e",
    "attention": "#a6a6a6",
    "dense": "#d4d4d4",
}
MAX_BARS = 40  # beyond this a bar chart stops being readable: show the best ones and the baseline


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 10,
            "axes.titlesize": 12,
            "axes.labelsize": 10.5,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )
    return plt


def time_unit_for(max_us: float) -> tuple[str, float]:
    """µs, or ms from 2000 µs up, so numbers stay short (the report's tables use the same rule)."""
    return ("ms", 1e-3) if max_us >= 2000 else ("µs", 1.0)


def _bytes_unit(max_bytes: float) -> tuple[str, float]:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if max_bytes >= scale:
            return unit, 1.0 / scale
    return "B", 1.0


def shown_records(
    records: list[dict], baseline_index: int, minimize: bool, objective: str, limit: int = MAX_BARS
) -> tuple[list[dict], bool]:
    """The records a bar chart shows, in sweep order: all, or the ``limit - 1`` best plus the baseline (``limit``
    bars at most; fewer when the baseline is among the best)."""
    if len(records) <= limit:
        return list(records), False
    sign = 1.0 if minimize else -1.0
    order = sorted(range(len(records)), key=lambda i: (sign * records[i][objective], i))
    keep = set(order[: limit - 1]) | {baseline_index}
    return [r for i, r in enumerate(records) if i in keep], True


def _label(rec: dict) -> str:
    tags = []
    if rec.get("is_baseline"):
        tags.append("base")
    if rec.get("is_best"):
        tags.append("best")
    return f"{rec['name']}  [{', '.join(tags)}]" if tags else rec["name"]


def _bar_height(n: int) -> float:
    return max(3.2, 0.32 * n + 1.6)


def plot_latency(records: list[dict], title: str = "Step latency by phase") -> Any:
    """Horizontal stacked bars per scenario: the MoE phases of each layer's tail GPU summed over all MoE
    layers, then attention and the dense part (dense MLPs, LM head); a diamond at the simulated step latency."""
    plt = _plt()
    n = len(records)
    parts = [*PHASES, "attention", "dense"]
    seq = np.array(
        [[r["phase_us"][p] for p in PHASES] + [r.get("attention_us", 0.0), r.get("dense_us", 0.0)] for r in records]
    )  # [n, 7]
    step = np.array([r["step_latency_us"] for r in records])
    ends = np.maximum(step, seq.sum(axis=1))
    unit, scale = time_unit_for(float(ends.max()))
    fig, ax = plt.subplots(figsize=(11, _bar_height(n)), layout="constrained")
    y = np.arange(n)[::-1]
    left = np.zeros(n)
    labels = {"attention": "attention", "dense": "dense MLP + LM head"}
    for j, p in enumerate(parts):
        if not seq[:, j].any():
            continue
        ax.barh(y, seq[:, j] * scale, left=left, color=PHASE_COLORS[p], label=labels.get(p, f"MoE {p}"), height=0.7)
        left += seq[:, j] * scale
    ax.scatter(step * scale, y, marker="D", color="black", s=22, zorder=3, label="step latency")
    for yi, s, end in zip(y, step, ends * scale):
        ax.text(end, yi, f"  {s * scale:,.4g}", va="center", ha="left", fontsize=8.5)
    ax.set_yticks(y, [_label(r) for r in records])
    for tick, r in zip(ax.get_yticklabels(), records):
        if r.get("is_best") or r.get("is_baseline"):
            tick.set_fontweight("bold")
    ax.set_xlabel(f"time per step ({unit})")
    ax.set_xlim(0, ends.max() * scale * 1.15)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncol=4, fontsize=9, frameon=False)
    return fig


def plot_gpu_load(base: dict, best: dict) -> Any:
    """Assignments per GPU for the baseline's and the best scenario's placement: bars are the mean over the
    simulated layers, red ticks the busiest layer of each GPU (a hot expert that moves between GPUs from layer
    to layer averages out in the bars but not in the ticks, and the tail GPU of each layer sets its time)."""
    plt = _plt()
    pairs = [("baseline", base)] if base["name"] == best["name"] else [("baseline", base), ("best", best)]
    fig, axes = plt.subplots(len(pairs), 1, figsize=(11, 3.0 * len(pairs) + 0.6), layout="constrained", squeeze=False)
    tops = [max(r.get("gpu_load_max") or r["gpu_load"]) for _, r in pairs]
    ymax = max(tops) * 1.3  # headroom for the legend
    for ax, (role, rec) in zip(axes[:, 0], pairs):
        load = np.asarray(rec["gpu_load"], dtype=float)
        g = np.arange(len(load))
        mean = load.mean()
        color = "#1f77b4" if role == "baseline" else "#2ca02c"
        ax.bar(g, load, color=color, width=0.8, label="mean over layers")
        if rec.get("gpu_load_max"):
            ax.scatter(
                g,
                rec["gpu_load_max"],
                marker="_",
                s=260,
                linewidths=2.2,
                color="#d62728",
                zorder=3,
                label="busiest layer",
            )
        ax.axhline(mean, color="black", ls="--", lw=1, label=f"mean of all GPUs ({mean:,.0f})")
        ax.set_title(
            f"{role}: {rec['name']}  ({rec['settings']['placement']} placement; busiest GPU / mean, "
            f"per layer: {rec['load_imbalance']:.2f})",
            fontsize=11,
        )
        ax.set_ylabel("assignments per GPU\nper layer")
        ax.set_ylim(0, ymax)
        if ymax >= 1e4:
            ax.yaxis.set_major_formatter(lambda v, _: f"{v / 1e3:,.0f}k" if v else "0")
        step = max(1, len(load) // 32)
        ax.set_xticks(g[::step])
        ax.set_xlim(-0.6, len(load) - 0.4)
        ax.legend(loc="upper right", fontsize=9, ncol=3)
        ax.grid(axis="y", alpha=0.3)
    axes[-1, 0].set_xlabel("GPU index")
    return fig


def has_capacity_sweep(records: list[dict]) -> bool:
    return len({r["settings"]["capacity_factor"] for r in records}) > 1 or any(
        r["settings"]["capacity_factor"] is not None for r in records
    )


def plot_capacity(records: list[dict]) -> Any:
    """Step latency vs dropped fraction; one line per drop policy, points labelled with the capacity factor."""
    plt = _plt()
    unit, scale = time_unit_for(max(r["step_latency_us"] for r in records))
    fig, ax = plt.subplots(figsize=(11, 5.0), layout="constrained")
    # probs and position keep the same number of assignments per expert, so their points coincide: draw
    # probs as large hollow circles under position's small squares so both stay visible
    styles: dict[str, dict[str, Any]] = {
        "probs": {"marker": "o", "ms": 11, "mfc": "none", "mew": 1.6, "ls": "-", "lw": 2.5, "alpha": 0.8},
        "position": {"marker": "s", "ms": 5, "ls": "--", "lw": 1.3},
        "reroute": {"marker": "^", "ms": 7, "ls": "-", "lw": 1.5},
    }
    labelled: set[tuple[float, float]] = set()
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        s = r["settings"]
        rest = tuple(
            (k, str(v))
            for k, v in sorted(r.get("axis_values", {}).items())
            if k not in ("capacity_factor", "drop_policy")
        )
        groups.setdefault((s["drop_policy"],) + rest, []).append(r)
    for key, recs in groups.items():
        capped = sorted(
            [r for r in recs if r["settings"]["capacity_factor"] is not None],
            key=lambda r: r["settings"]["capacity_factor"],
        )
        label = key[0] + "".join(f", {k}={v}" for k, v in key[1:])
        if capped:
            x = [100 * r["dropped_fraction"] for r in capped]
            y = [r["step_latency_us"] * scale for r in capped]
            ax.plot(x, y, label=f"drop policy: {label}", **styles.get(key[0], {"marker": "o"}))
            for r, xi, yi in zip(capped, x, y):
                spot = (round(xi, 6), round(yi, 6))
                if spot in labelled:
                    continue
                labelled.add(spot)
                ax.annotate(
                    f"cf={r['settings']['capacity_factor']:g}",
                    (xi, yi),
                    xytext=(5, 5),
                    textcoords="offset points",
                    fontsize=8.5,
                )
    dropless = [r for r in records if r["settings"]["capacity_factor"] is None]
    if dropless:
        ax.scatter(
            [0.0] * len(dropless),
            [r["step_latency_us"] * scale for r in dropless],
            marker="*",
            s=160,
            color="black",
            zorder=3,
            label="dropless (no capacity)",
        )
    ax.set_xlabel("assignments dropped (% of tokens × top-k)")
    ax.set_ylabel(f"step latency ({unit})")
    ax.set_title("Latency vs dropped tokens (capacity factor sweep)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return fig


def plot_traffic(records: list[dict]) -> Any:
    """Horizontal stacked bars: bytes sent per step on each link class, per scenario."""
    plt = _plt()
    level = {c: lv for r in records for c, lv in r.get("link_level", {}).items()}
    # inter-node first, then intra-node; sorted before the data columns are built so labels match the bars
    classes = sorted(
        {c for r in records for c, v in r["traffic_bytes"].items() if v > 0}, key=lambda c: (level.get(c, ""), c)
    )
    n = len(records)
    data = np.array([[r["traffic_bytes"].get(c, 0.0) for c in classes] for r in records]).reshape(n, -1)
    unit, scale = _bytes_unit(float(data.sum(axis=1).max()) if data.size else 0.0)
    fig, ax = plt.subplots(figsize=(11, _bar_height(n)), layout="constrained")
    y = np.arange(n)[::-1]
    left = np.zeros(n)
    cmap = plt.get_cmap("tab10")
    for j, c in enumerate(classes):
        name = f"{c} ({level[c]})" if c in level else c
        ax.barh(y, data[:, j] * scale, left=left, color=cmap(j % 10), label=name, height=0.7)
        left += data[:, j] * scale
    ax.set_yticks(y, [_label(r) for r in records])
    ax.set_xlabel(f"bytes moved per step ({unit}): dispatch + combine, all GPUs, all MoE layers")
    ax.set_title("All-to-all traffic by link class")
    ax.grid(axis="x", alpha=0.3)
    if classes:
        fig.legend(loc="outside lower center", ncol=6, fontsize=9, frameon=False)
    return fig

"""Write a what-if sweep's report: ``report.html`` (self-contained), ``report.md``, ``results.csv``, ``results.json``.

The HTML embeds every plot as a base64 PNG and needs nothing else (no scripts, no network), so it can be
attached to a design review as one file. ``report.md`` shows the same tables and links the PNGs written to
``plots/``. ``results.csv`` has one flat row per scenario; ``results.json`` (compact, no indent) carries every
record, including the simulator's own ``StepResult.to_dict()`` per scenario; the per-GPU arrays
(``DETAIL_FIELDS``) and the step's per-layer rows (``simulate.layers``) only with ``detail=True``
(``moesim whatif --detail``). Every file is written to a
temporary file in the output directory and ``os.replace``-d into place.

Each figure is drawn once (``whatif.figures``), as PNG bytes that both the HTML and ``plots/`` use. With
``workers > 1`` (and fork) the figures are drawn in that many worker processes while this one writes the CSV
and JSON; only those processes import matplotlib (0.25 s), the caller never does.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import Any

from moesim.fileio import atomic_write_bytes, atomic_write_text
from whatif.figures import collect_figures, draw_all, plot_jobs, start_plot_pool
from whatif.sweep import PHASES, WhatifRun

# Record fields with one entry per GPU or per physical expert slot (the placement's phy2log and shares are
# [L, P] each), and the simulated step's rows per MoE layer (14 numbers x 58 layers for DeepSeek-V3): written
# only on request, the totals always (benchmarks/bench_whatif.py prints the size). The cache and
# WhatifRun.records always keep them.
DETAIL_FIELDS = ("gpu_load", "gpu_load_max", "placement")
DETAIL_STEP_FIELDS = ("layers",)  # of a record's "simulate" (StepResult.to_dict())


def _without_detail(record: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in record.items() if k not in DETAIL_FIELDS}
    if isinstance(out.get("simulate"), dict):
        out["simulate"] = {k: v for k, v in out["simulate"].items() if k not in DETAIL_STEP_FIELDS}
    return out


SETTING_COLUMNS = (
    "model",
    "cluster",
    "trace",
    "tokens_per_gpu",
    "placement",
    "redundant_experts",
    "capacity_factor",
    "drop_policy",
    "overlap_chunks",
    "dispatch_dtype",
    "combine_dtype",
    "alltoall",
    "weight_dtype",
)


def _short(value: Any) -> str:
    if value is None:
        return ""
    s = str(value)
    return Path(s).name if "/" in s else s


def flat_row(run: WhatifRun, rec: dict) -> dict[str, Any]:
    """One CSV row: settings, headline numbers, the phase breakdown and traffic per link class."""
    s = rec["settings"]
    row: dict[str, Any] = {"name": rec["name"], "baseline": int(rec["is_baseline"]), "best": int(rec["is_best"])}
    for col, value in s.items():  # every setting, in Scenario's field order
        if col in ("model", "cluster", "trace"):
            value = _short(value)
        elif isinstance(value, (tuple, list)):
            value = " ".join(str(v) for v in value)
        row[col] = value
    row["num_gpus"] = rec["num_gpus"]
    row["error"] = rec.get("error", "")
    if "error" in rec:
        return row
    row["num_layers"] = rec["num_layers"]
    row["step_latency_us"] = rec["step_latency_us"]
    row["tokens_per_s_per_gpu"] = rec["tokens_per_s_per_gpu"]
    row["gain_vs_baseline"] = run.gain(rec)
    for p in PHASES:
        row[f"{p}_us"] = rec["phase_us"][p]
    row["moe_share"] = rec["moe_share"]
    row["alltoall_share"] = rec["alltoall_share"]
    row["dropped_fraction"] = rec["dropped_fraction"]
    row["load_imbalance"] = rec["load_imbalance"]
    return row


def results_document(run: WhatifRun, detail: bool = False) -> dict[str, Any]:
    """The JSON document: what was asked, which scenario is the baseline and the best, every record
    (without ``DETAIL_FIELDS`` and the step's ``DETAIL_STEP_FIELDS`` unless ``detail``)."""
    sf = run.scenario_file
    records = run.records if detail else [_without_detail(r) for r in run.records]
    return {
        "title": sf.title,
        "scenario_file": sf.path,
        "objective": sf.objective,
        "objective_sense": "min" if sf.minimize else "max",
        "baseline": run.baseline["name"],
        "best": run.best["name"],
        "best_gain_vs_baseline": run.gain(),
        "detail": detail,
        "scenarios": records,
    }


def time_unit(run: WhatifRun) -> tuple[str, float]:
    """One time unit for a whole report (ms when the slowest step is >= 2 ms), so columns compare at a glance."""
    from whatif.plots import time_unit_for

    return time_unit_for(max(r["step_latency_us"] for r in run.feasible))


def fmt_us(us: float, unit: tuple[str, float] = ("µs", 1.0)) -> str:
    """``us`` in the given unit with about four significant digits (``12.35 ms``, ``1,227 ms``, ``86.4 µs``)."""
    name, scale = unit
    v = us * scale
    digits = 3 if abs(v) < 10 else 2 if abs(v) < 100 else 1 if abs(v) < 1000 else 0
    return f"{v:,.{digits}f} {name}"


def fmt_gain(g: float) -> str:
    return f"{100 * g:+.1f}%"


def varying_columns(run: WhatifRun) -> list[str]:
    """Setting columns that actually differ between scenarios (the rest go in the 'fixed' line)."""
    names = [k for k in run.records[0]["settings"] if k not in ("model", "cluster", "trace")]
    names = ["model", "cluster", "trace", *names]  # Scenario's field order, the inputs first
    cols = [c for c in names if len({repr(r["settings"].get(c)) for r in run.records}) > 1]
    # a column that only repeats the scenario names (a single axis of slugs) adds nothing
    return [c for c in cols if any(cell(c, r["settings"][c]) != r["name"] for r in run.records)]


def cell(col: str, value: Any) -> str:
    if col in ("model", "cluster", "trace"):
        return _short(value)
    if value is None:
        return "none" if col == "capacity_factor" else ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def summary_lines(run: WhatifRun) -> list[str]:
    sf = run.scenario_file
    base, best = run.baseline, run.best
    obj = sf.objective
    unit = "tokens/s per GPU" if obj == "tokens_per_s_per_gpu" else ""
    tu = time_unit(run)
    fmt = (lambda v: f"{v:,.0f} {unit}") if unit else (lambda v: fmt_us(v, tu))
    lines = [f"Baseline: {base['name']}: {fmt(base[obj])}"]
    if best["name"] == base["name"]:
        lines.append(f"Best: the baseline itself ({len(run.records)} scenarios evaluated)")
    else:
        drops = f", dropping {100 * best['dropped_fraction']:.1f}% of assignments" if best["dropped_fraction"] else ""
        lines.append(
            f"Best: {best['name']}: {fmt(best[obj])}, {fmt_gain(run.gain())} vs baseline "
            f"({'lower latency' if sf.minimize else 'higher throughput'} is better){drops}"
        )
    return lines


def _fixed_settings(run: WhatifRun, varying: list[str]) -> str:
    s = run.records[0]["settings"]
    parts = [f"{c}={cell(c, s[c])}" for c in SETTING_COLUMNS if c not in varying]
    return ", ".join(parts)


def compact_names(run: WhatifRun) -> bool:
    """Generated names of a multi-axis sweep only repeat the value columns: number the rows instead."""
    sf = run.scenario_file
    return len(sf.axes) >= 2 and not sf.named_variants


TABLE_NOTE = (
    "Step: one forward step of the whole model (attention, dense layers, LM head and every MoE layer; MoE layers "
    "the trace does not record count at the mean of the recorded ones). Dispatch+combine and compute: the "
    "slowest GPU's, summed over the MoE layers. Gain: relative to the baseline, positive is better. Dropped: "
    "share of token-expert assignments over capacity. Max/mean load: per layer, the busiest GPU's assignments "
    "over the mean, averaged over layers."
)


def table_rows(run: WhatifRun, varying: list[str], compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the results table; ``compact`` puts the row number where the name would be."""
    tu = time_unit(run)
    head = [
        "#" if compact else "scenario",
        *varying,
        "GPUs",
        f"step ({tu[0]})",
        "gain",
        "tokens/s/GPU",
        f"dispatch+combine ({tu[0]})",
        f"compute ({tu[0]})",
        "dropped",
        "max/mean load",
    ]
    rows = []

    def label(r: dict) -> str:
        return str(r["index"] + 1) if compact else r["name"]

    for r in run.records:
        if "error" in r:
            rows.append(
                [
                    label(r),
                    *[cell(c, r["settings"][c]) for c in varying],
                    str(r["num_gpus"]),
                    "—",
                    "cannot run",
                    "",
                    "",
                    "",
                    "",
                    "",
                ]
            )
            continue
        ph = r["phase_us"]
        rows.append(
            [
                label(r),
                *[cell(c, r["settings"][c]) for c in varying],
                str(r["num_gpus"]),
                fmt_us(r["step_latency_us"], tu).split()[0],
                "" if r["is_baseline"] else fmt_gain(run.gain(r)),
                f"{r['tokens_per_s_per_gpu']:,.0f}",
                fmt_us(ph["dispatch"] + ph["combine"], tu).split()[0],
                fmt_us(ph["compute"], tu).split()[0],
                f"{100 * r['dropped_fraction']:.2f}%",
                f"{r['load_imbalance']:.2f}",
            ]
        )
    return head, rows


_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px auto;max-width:1240px;
color:#1b1b1b;padding:0 16px;line-height:1.45}
h1{font-size:26px;margin-bottom:4px}h2{font-size:19px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#555;margin-top:0}
.cards{display:flex;gap:14px;flex-wrap:wrap;margin:18px 0}
.card{border:1px solid #d0d7de;border-radius:8px;padding:12px 16px;min-width:220px;flex:1;background:#f6f8fa}
.card .k{font-size:12px;text-transform:uppercase;color:#57606a;letter-spacing:.04em}
.card .v{font-size:21px;font-weight:600;margin-top:2px}
.card .d{font-size:13px;color:#444}
.good{color:#1a7f37}.bad{color:#cf222e}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:13px;width:100%}
th,td{border-bottom:1px solid #e1e4e8;padding:5px 8px;text-align:right;white-space:nowrap}
th{background:#f6f8fa;position:sticky;top:0}
td:first-child,th:first-child{text-align:left;white-space:normal}
tr.base td{background:#eef4ff}tr.best td{background:#e9f7ec;font-weight:600}
.tag{font-size:11px;border-radius:4px;padding:1px 5px;margin-left:6px;color:#fff}
.tag.base{background:#0969da}.tag.best{background:#1a7f37}
figure{margin:18px 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:13px;margin-top:4px}
pre{background:#f6f8fa;padding:10px;overflow:auto;font-size:12px}
.fixed{font-size:13px;color:#444}
"""


def render_html(run: WhatifRun, plot_list: list[tuple[str, str, str, bytes]], scenario_text: str) -> str:
    sf = run.scenario_file
    esc = html.escape
    base, best = run.baseline, run.best
    varying = varying_columns(run)
    head, rows = table_rows(run, varying, compact_names(run))
    gain = run.gain()
    tu = time_unit(run)
    gain_cls = "good" if gain > 0 else "bad" if gain < 0 else ""
    obj_fmt = (lambda v: f"{v:,.0f} tok/s/GPU") if not sf.minimize else (lambda v: fmt_us(v, tu))
    cards = [
        ("baseline", esc(base["name"]), obj_fmt(base[sf.objective])),
        ("best", esc(best["name"]), obj_fmt(best[sf.objective])),
        (
            "gain of best over baseline",
            f"<span class='{gain_cls}'>{fmt_gain(gain)}</span>",
            "lower latency is better" if sf.minimize else "higher throughput is better",
        ),
        ("scenarios", str(len(run.records)), f"objective: {esc(sf.objective)}"),
    ]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(sf.title)}: moesim what-if</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(sf.title)}</h1>",
        f"<p class='sub'>moesim what-if report · {esc(Path(sf.path).name)}</p>",
    ]
    if sf.description:
        parts.append(f"<p>{esc(sf.description)}</p>")
    parts.append("<div class='cards'>")
    for k, v, d in cards:
        parts.append(
            f"<div class='card'><div class='k'>{esc(k)}</div><div class='v'>{v}</div><div class='d'>{d}</div></div>"
        )
    parts.append("</div>")
    parts.append("<h2>Results</h2>")
    parts.append(f"<p class='fixed'>Fixed in every scenario: {esc(_fixed_settings(run, varying))}</p>")
    parts.append(
        "<div class='scroll'><table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>"
    )
    for rec, row in zip(run.records, rows):
        cls = "best" if rec["is_best"] else "base" if rec["is_baseline"] else ""
        tags = "".join(
            f"<span class='tag {t}'>{t}</span>"
            for t, on in (("base", rec["is_baseline"]), ("best", rec["is_best"]))
            if on
        )
        cells = [f"<td>{esc(row[0])}{tags}</td>"] + [f"<td>{esc(c)}</td>" for c in row[1:]]
        parts.append(f"<tr class='{cls}'>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table></div>")
    failed = [r for r in run.records if "error" in r]
    if failed:
        parts.append("<p><b>Scenarios that cannot run as specified:</b></p><ul>")
        parts += [f"<li>{esc(r['name'])}: {esc(r['error'])}</li>" for r in failed]
        parts.append("</ul>")
    parts.append(f"<p class='fixed'>{esc(TABLE_NOTE)}</p>")
    for _stem, title, caption, png in plot_list:
        b64 = base64.b64encode(png).decode()
        parts.append(
            f"<h2>{esc(title)}</h2><figure><img alt='{esc(title)}' src='data:image/png;base64,{b64}'>"
            f"<figcaption>{esc(caption)}</figcaption></figure>"
        )
    parts.append("<h2>Scenario file</h2>")
    parts.append(f"<pre>{esc(scenario_text)}</pre>")
    from moesim import __version__

    parts.append(
        f"<p class='fixed'>moesim {esc(__version__)} · <code>moesim whatif {esc(sf.path)}</code> · "
        "every number is in results.json (with --detail, each step's per-layer rows and per-GPU arrays "
        "too).</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(run: WhatifRun, plot_list: list[tuple[str, str, str, bytes]]) -> str:
    sf = run.scenario_file
    varying = varying_columns(run)
    head, rows = table_rows(run, varying, compact_names(run))

    def md_cell(c: str) -> str:
        return c.replace("|", "\\|")

    out = [f"# {sf.title}", "", f"moesim what-if report for `{Path(sf.path).name}`.", ""]
    if sf.description:
        out += [sf.description, ""]
    out += [f"- {line}" for line in summary_lines(run)]
    out += ["", f"Fixed in every scenario: {_fixed_settings(run, varying)}", "", "## Results", ""]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join([":---"] + ["---:"] * (len(head) - 1)) + "|")
    for rec, row in zip(run.records, rows):
        name = row[0] + (" **(base)**" if rec["is_baseline"] else "") + (" **(best)**" if rec["is_best"] else "")
        out.append("| " + " | ".join(md_cell(c) for c in [name, *row[1:]]) + " |")
    out += ["", TABLE_NOTE, ""]
    failed = [r for r in run.records if "error" in r]
    if failed:
        out += ["Scenarios that cannot run as specified:", ""]
        out += [f"- {r['name']}: {r['error']}" for r in failed]
        out.append("")
    for stem, title, caption, _ in plot_list:
        out += [f"## {title}", "", f"![{title}](plots/{stem}.png)", "", caption, ""]
    return "\n".join(out)


def write_report(
    run: WhatifRun,
    out_dir: str | Path,
    scenario_text: str | None = None,
    *,
    detail: bool = False,
    workers: int = 1,
    pool: Any = None,
) -> dict[str, Path]:
    """Write report.html, report.md, results.csv, results.json and plots/*.png into ``out_dir``.

    ``detail``: results.json keeps ``DETAIL_FIELDS`` (per-GPU load, the placement's arrays) and each step's
    per-layer rows. ``workers``:
    plot worker processes (see the module docstring), or ``pool`` from ``start_plot_pool`` (left running); the
    files are the same either way.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if scenario_text is None:
        try:
            scenario_text = Path(run.scenario_file.path).read_text()
        except OSError:
            scenario_text = ""
    jobs = plot_jobs(run)
    paths: dict[str, Path] = {f"plot:{stem}": out / "plots" / f"{stem}.png" for stem, *_ in jobs}
    own = pool is None
    if own:
        pool = start_plot_pool(min(workers, len(jobs)))
    try:
        # the figures draw in the pool while this process writes the tables (1.5 s of drawing vs 0.05 s)
        futures = draw_all(jobs, pool)
        _write_tables(run, out, paths, detail)
        plot_list = collect_figures(jobs, futures)
    finally:
        if own and pool is not None:
            pool.shutdown(cancel_futures=True)
    for stem, _, _, png in plot_list:
        atomic_write_bytes(paths[f"plot:{stem}"], png)
    paths["md"] = out / "report.md"
    atomic_write_text(paths["md"], render_markdown(run, plot_list))
    paths["html"] = out / "report.html"
    atomic_write_text(paths["html"], render_html(run, plot_list, scenario_text))
    return paths


def _write_tables(run: WhatifRun, out: Path, paths: dict[str, Path], detail: bool) -> None:
    """results.csv and results.json (compact: the indent made the benchmark's file 2.2x larger)."""
    buf = io.StringIO()
    rows = [flat_row(run, r) for r in run.records]
    fieldnames = list(rows[0])
    for r in rows[1:]:  # traffic classes can differ between clusters
        fieldnames += [k for k in r if k not in fieldnames]
    classes = sorted({c for r in run.feasible for c in r["traffic_bytes"]})
    fieldnames += [f"traffic_{c}_bytes" for c in classes]
    writer = csv.DictWriter(buf, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    for rec, row in zip(run.records, rows):
        for c in classes:
            row[f"traffic_{c}_bytes"] = rec["traffic_bytes"].get(c, 0.0) if "traffic_bytes" in rec else ""
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    paths["csv"] = out / "results.csv"
    atomic_write_text(paths["csv"], buf.getvalue())

    paths["json"] = out / "results.json"
    doc = results_document(run, detail=detail)
    atomic_write_text(paths["json"], json.dumps(doc, separators=(",", ":")) + "\n")

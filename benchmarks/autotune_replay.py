"""Part 2 of ``bench_autotune.py``, ``--from FILE`` (CPU, needs optuna): replay the tuner's search on a measured table.

Each trial's objective is the measured median of the proposed config; a config outside the measured sub-grid (or
outside the shared-memory filter) is pruned at no cost, exactly as the tuner treats infeasible configs; failed
configs count as trials. Studies are seeded as ``moesim autotune kernel`` seeds them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tuner.autotune import space as kernel_space


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def load_table(path: Path) -> dict[str, Any]:
    """Read the JSONL: per M, {config key: median us or None (failed)}, the grid keys, and the references."""
    tables: dict[int, dict[tuple, float | None]] = {}
    grid: dict[int, set[tuple]] = {}
    refs: dict[int, dict[str, tuple]] = {}
    device = ""
    with open(path) as fh:
        for line in fh:
            if not line.strip():
                continue
            rec = json.loads(line)
            if rec.get("kind") != "fused_moe" or rec.get("schema") != 1:
                continue
            device = rec.get("device_name", device)
            m = int(rec["M"])
            key = kernel_space.config_key(rec["config"])
            tables.setdefault(m, {})[key] = rec.get("median_us")
            if rec.get("perm_index") is not None:
                grid.setdefault(m, set()).add(key)
            for role in str(rec.get("role", "")).split(","):
                if role in ("vllm", "default"):
                    refs.setdefault(m, {})[role] = key
    if not tables:
        raise SystemExit(f"bench_autotune: error: {path}: no schema-1 fused_moe records")
    return {"tables": tables, "grid": grid, "refs": refs, "device": device}


def replay(
    table: dict[tuple, float | None], grid: set[tuple], refs: dict[str, tuple], sampler: str, seed: int, n_trials: int
) -> list[float]:
    """Run the tuner's loop on an in-memory study whose objective is the table; -> best-so-far per trial.

    Returns a list whose i-th entry is the best measured us after i+1 counted trials (inf until one succeeds).
    """
    import optuna

    from tuner.autotune.kernel.study import enqueue_seeds, tune_loop
    from tuner.autotune.samplers import make_sampler

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="minimize", sampler=make_sampler(sampler, seed))
    if sampler != "random":
        # The tuner seeds every study with the vLLM shipped config and our default (random search is the
        # unseeded baseline).
        enqueue_seeds(
            study, [(role, kernel_space.config_from_key(refs[role])) for role in ("vllm", "default") if role in refs]
        )
    measured = set(table)
    trace: list[float] = []
    best = math.inf

    def evaluate(cfg: dict) -> float:
        value = table[kernel_space.config_key(cfg)]
        if value is None:
            raise RuntimeError("failed on the device")
        return value

    def on_trial(frozen: Any, _counted: Any) -> None:
        nonlocal best
        if frozen.value is not None:
            best = min(best, float(frozen.value))
        trace.append(best)

    tune_loop(
        study,
        evaluate,
        n_trials,
        None,
        lambda c: kernel_space.config_key(c) in measured,
        on_trial=on_trial,
        max_pruned_in_row=5000,
    )
    return trace


def run_replay(args: argparse.Namespace) -> int:
    try:
        import optuna  # noqa: F401
    except ImportError:
        print("bench_autotune: error: --from needs optuna (pip install optuna)", file=sys.stderr)
        return 2
    from rich.console import Console
    from rich.table import Table

    path = Path(args.from_file)
    if not path.exists():
        print(f"bench_autotune: error: {path}: no such file", file=sys.stderr)
        return 2
    data = load_table(path)
    fractions = [float(f) for f in args.fractions.split(",")]
    samplers = args.samplers.split(",")
    summary: dict[str, Any] = {"file": str(path), "device": data["device"], "per_m": []}
    table = Table(
        title=f"Optuna replay on measured {data['device']} fused-MoE grid "
        f"(median over {args.seeds} seeds; \\[share of seeds within 2% of the exhaustive best])"
    )
    for col in (
        ["M", "grid", "exhaustive us", "vLLM us", "default us", "sampler"]
        + [f"best @{f:.0%}" for f in fractions]
        + ["goal"]
    ):
        table.add_column(col, justify="right")
    goal_all = True
    for m in sorted(data["tables"]):
        tab = data["tables"][m]
        grid = data["grid"].get(m, set())
        refs = data["refs"].get(m, {})
        ok_grid = [tab[k] for k in grid if tab[k] is not None]
        if not ok_grid:
            continue
        measured_ok = [v for v in tab.values() if v is not None]
        truth = min(measured_ok)  # exhaustive over everything measured (sub-grid and references)
        vllm_us = tab.get(refs["vllm"]) if "vllm" in refs else None
        default_us = tab.get(refs["default"]) if "default" in refs else None
        n_grid = len(grid)
        budgets = [max(1, math.ceil(f * n_grid)) for f in fractions]
        row_m: dict[str, Any] = {
            "M": m,
            "grid_size": n_grid,
            "exhaustive_us": truth,
            "vllm_us": vllm_us,
            "default_us": default_us,
            "samplers": {},
        }
        for si, sampler in enumerate(samplers):
            traces = []
            t0 = time.monotonic()
            for seed in range(args.seeds):
                traces.append(replay(tab, grid, refs, sampler, seed, max(budgets)))
            cells = []
            res_s = {}
            for f, b in zip(fractions, budgets):
                bests = np.array([tr[min(b, len(tr)) - 1] if tr else math.inf for tr in traces])
                within = float(np.mean(bests <= truth * 1.02))
                med = float(np.median(bests))
                res_s[f"{f:g}"] = {
                    "trials": b,
                    "median_best_us": med,
                    "worst_best_us": float(bests.max()),
                    "share_within_2pct": within,
                }
                cells.append(f"{med:.1f} ({med / truth - 1:+.1%}) \\[{within:.0%}]")
            at10 = res_s.get("0.1")
            goal = None
            if at10 is not None:
                goal = at10["median_best_us"] <= truth * 1.02 and (vllm_us is None or at10["median_best_us"] <= vllm_us)
                if sampler == "tpe":
                    goal_all = goal_all and goal
            res_s["replay_s"] = round(time.monotonic() - t0, 1)
            row_m["samplers"][sampler] = res_s
            table.add_row(
                str(m) if si == 0 else "",
                str(n_grid) if si == 0 else "",
                f"{truth:.1f}" if si == 0 else "",
                _fmt(vllm_us) if si == 0 else "",
                _fmt(default_us) if si == 0 else "",
                sampler,
                *cells,
                "-" if goal is None else ("met" if goal else "missed"),
            )
        summary["per_m"].append(row_m)
    summary["goal_met_tpe"] = goal_all
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        Console(width=max(Console().width, 150)).print(table)
        print(
            "goal: TPE median best at 10% of the grid's trials within 2% of the exhaustive best and no slower "
            f"than the vLLM shipped config: {'met for every M' if goal_all else 'missed for at least one M'}"
        )
    return 0

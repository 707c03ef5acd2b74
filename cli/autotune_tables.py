"""The rich tables ``moesim autotune kernel`` and ``moesim autotune capacity`` print at the end."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tuner.autotune.capacity.search import CapacityResult
from tuner.autotune.kernel.results import MResult, ratio
from tuner.autotune.space import PARAM_NAMES


def results_table(results: Sequence[MResult], title: str = "") -> Any:
    """The closing kernel table: per M, best config, median us, trials, speedups."""
    from rich.table import Table

    table = Table(title=title or None)
    for col in (
        "M",
        "best config (BM,BN,BK,G,warps,stages)",
        "median us",
        "trials",
        "failed",
        "vs default",
        "vs vLLM shipped",
    ):
        table.add_column(col, justify="right" if col != "best config (BM,BN,BK,G,warps,stages)" else "left")
    for r in results:
        cfg = ",".join(str(r.best_config[k]) for k in PARAM_NAMES) if r.best_config else "-"
        table.add_row(
            str(r.m),
            cfg,
            f"{r.best_us:.1f}" if r.best_us is not None else "-",
            str(r.trials),
            str(r.failed),
            _fmt_speedup(r.default_us, r.best_us),
            _fmt_speedup(r.vllm_us, r.best_us),
        )
    return table


def _fmt_speedup(ref: float | None, best: float | None) -> str:
    speedup = ratio(ref, best)
    return f"{speedup:.2f}x" if speedup is not None else "-"


def front_table(result: CapacityResult, title: str = "") -> Any:
    """Rich table of the Pareto front: latency, dropped share, speedup over dropless, per-layer settings."""
    from rich.table import Table

    table = Table(title=title or f"Pareto front ({len(result.front)} of {len(result.points)} trials)")
    for col in ("#", "step us", "vs dropless", "dropped", "per-layer capacity (layer:factor/policy)"):
        table.add_column(col, justify="left" if col.startswith("per-layer") else "right")
    base = result.dropless.step_latency_us
    for i, p in enumerate(result.front):
        mark = " *" if result.pick is not None and p.trial == result.pick.trial else ""
        layers = " ".join(
            f"{s.layer}:-" if s.factor is None else f"{s.layer}:{s.factor:.2f}/{s.policy}" for s in p.settings
        )
        table.add_row(
            f"{i}{mark}",
            f"{p.step_latency_us:.1f}",
            f"{base / p.step_latency_us:.3f}x",
            f"{100 * p.dropped_fraction:.3f}%",
            layers,
        )
    return table

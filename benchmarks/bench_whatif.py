"""Time a 100-scenario what-if sweep of DeepSeek-V3 (all 58 MoE layers, no ILP), cold cache then warm.

    python benchmarks/bench_whatif.py [--workers 2] [--keep DIR]

The sweep: 2 clusters (16 and 64 H100s, 400G IB) x 2 placements (contiguous, EPLB) x 5 batch sizes x 5 capacity
settings, synthetic Zipf routing. Goal: under 60 s cold on a 2-core machine.
Prints one row per phase (cold run, warm run, report writing) and the slowest scenarios' own timings.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SWEEP = {
    "title": "Benchmark: 100 DeepSeek-V3 scenarios",
    "description": "2 clusters x 2 placements x 5 tokens per GPU x 5 capacity settings; all 58 MoE layers; no ILP.",
    "base": {
        "model": "deepseek-v3",
        "cluster": "h100-2x8-ib400",
        "trace": "synthetic:zipf:1.2",
        "trace_tokens": 262144,  # one routing sample for every batch size and GPU count
        "tokens_per_gpu": 4096,
        "placement": "contiguous",
        "weight_dtype": "fp8",
        "dispatch_dtype": "fp8",
        "alltoall": "hierarchical",
    },
    "axes": {
        "cluster": ["h100-2x8-ib400", "h100-8x8-ib400"],
        "placement": ["contiguous", "eplb"],
        "tokens_per_gpu": [1024, 2048, 4096, 8192, 16384],
        "capacity_factor": [None, 1.0, 1.25, 1.5, 2.0],
    },
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--keep", type=Path, default=None, help="write the report here (default: a temp dir)")
    args = ap.parse_args()

    import yaml
    from rich.console import Console
    from rich.table import Table

    from whatif.report import write_report
    from whatif.scenario import load_scenarios
    from whatif.sweep import run_whatif

    os.chdir(REPO)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MOESIM_CACHE_DIR"] = str(Path(tmp) / "cache")  # cold: a fresh, empty cache
        spec = Path(tmp) / "bench.yaml"
        spec.write_text(yaml.safe_dump(SWEEP, sort_keys=False))
        sf = load_scenarios(spec)
        assert len(sf.scenarios) == 100, len(sf.scenarios)

        t0 = time.perf_counter()
        cold = run_whatif(sf, workers=args.workers)
        t_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = run_whatif(sf, workers=args.workers)
        t_warm = time.perf_counter() - t0
        out = args.keep or Path(tmp) / "report"
        t0 = time.perf_counter()
        write_report(cold, out, workers=args.workers)  # as `moesim whatif` does: the figures in the workers
        t_report = time.perf_counter() - t0
        json_mb = (out / "results.json").stat().st_size / 1e6
        assert warm.cache_hits == 100
        # 25 of the 100 cannot run (EPLB's 16 slots x 58 layers overflow the 16-GPU cluster's HBM): no latency
        assert [r.get("step_latency_us") for r in warm.records] == [r.get("step_latency_us") for r in cold.records]

    console = Console(width=100)
    table = Table(
        title=f"bench_whatif: 100 scenarios, DeepSeek-V3 x 58 layers, {args.workers} workers, {os.cpu_count()} cores",
        title_justify="left",
    )
    for col in ("phase", "wall s", "per scenario ms", "goal"):
        table.add_column(col, justify="right" if col != "phase" else "left")
    table.add_row("cold sweep (traces, placements, simulate)", f"{t_cold:.2f}", f"{1e3 * t_cold / 100:.0f}", "")
    table.add_row("warm sweep (all from cache)", f"{t_warm:.2f}", f"{1e3 * t_warm / 100:.1f}", "")
    table.add_row(f"report (4 plots, html/md/csv/json; results.json {json_mb:.1f} MB)", f"{t_report:.2f}", "", "")
    table.add_row("total: cold sweep + report", f"{t_cold + t_report:.2f}", f"{10 * (t_cold + t_report):.0f}", "< 60 s")
    console.print(table)

    slow = sorted(cold.feasible, key=lambda r: -sum(r["timing_s"].values()))[:5]
    t2 = Table(title="slowest scenarios (inside the worker)", title_justify="left")
    for col in ("scenario", "GPUs", "inputs s", "placement s", "simulate s"):
        t2.add_column(col, justify="right" if col != "scenario" else "left")
    for r in slow:
        t = r["timing_s"]
        t2.add_row(r["name"], str(r["num_gpus"]), f"{t['inputs']:.3f}", f"{t['placement']:.3f}", f"{t['simulate']:.3f}")
    console.print(t2)
    console.print(
        f"best: {cold.best['name']} ({cold.best['step_latency_us'] / 1e3:.2f} ms per step); "
        f"baseline {cold.baseline['name']} ({cold.baseline['step_latency_us'] / 1e3:.2f} ms)"
    )
    return 0 if t_cold + t_report < 60 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Wall time of the commands a user waits for, as ratios to a bare ``python -c "import numpy"`` in the same run.

    python benchmarks/bench_cli.py               # every command, 5 runs each (the whatif and autotune rows: 3)
    python benchmarks/bench_cli.py --runs 3 --only simulate,plan
    python benchmarks/bench_cli.py --json out.json

Each command runs in a fresh interpreter (what a person typing it gets), with bytecode caching on (an untimed
first run of the short rows fills the cache), several times; the table shows the
median wall, the median peak resident memory of the process (``ru_maxrss`` from ``os.wait4``) and the ratio of
the median wall to the bare-numpy median measured in this run. Rows (issue 17's goals):

- ``import numpy``: the yardstick;
- ``simulate``: ``moesim simulate --model deepseek-v3 --cluster h100-8x8-ib400 --synthetic zipf:1.2 --json``,
  end to end (goal <= 0.3 s and <= 3x the yardstick);
- ``plan start-up``: ``moesim plan`` for DeepSeek-V3 on 64 GPUs (+64; a 2^18-token synthetic zipf 0.9 trace,
  affinity 0.5, written by ``moesim trace synth`` before the timing) up to the moment
  the MILP would start: the process runs the CLI with the MILP's entry point replaced by one that exits, so
  the wall covers imports, the trace, the baselines and their scoring (goal <= 0.5 s);
- ``whatif``: ``moesim whatif --no-cache`` on ``benchmarks/bench_whatif.py``'s 100 DeepSeek-V3 scenarios, with
  the report (goal <= 3 s; ``results.json`` <= 2 MB, its size is printed);
- ``autotune capacity``: ``moesim autotune capacity --model deepseek-v3 --cluster h100-8x8-ib400 --trace
  zipf:1.2 --trials 200`` (goal <= 5 s and <= 200 MB), a fresh study each run (each run has its own empty
  ``MOESIM_CACHE_DIR``, so the default journal starts empty; every row gets one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# run as `python -c`: the MILP's entry point exits the process at once, so the wall is everything before it
PLAN_STARTUP = """
import os, sys
import tuner.placers.ilp as ilp
def _stop(*args, **kwargs):
    sys.stdout.flush()
    os._exit(0)
ilp.solve = _stop  # tuner.plan calls it through the module
from cli.main import main
sys.argv = ["moesim", "plan", "--model", "deepseek-v3", "--cluster", "h100-8x8-ib400", "--trace", sys.argv[1],
            "--redundant-experts", "64", "--time-limit", "60", "-o", sys.argv[2]]
main()
"""


def timed(cmd: list[str], cwd: Path, name: str, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds and peak resident MiB of one run of ``cmd`` (stdout and stderr discarded)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"bench_cli: {name}: exit {proc.returncode}: {err.strip()[-400:]}")
    return wall, usage.ru_maxrss / 1024.0  # Linux reports KiB


def commands(tmp: Path) -> dict[str, tuple[list[str], int]]:
    """Row name -> (command, runs divisor: the long rows run fewer times)."""
    py = sys.executable
    moesim = [py, "-m", "cli"]
    return {
        "import numpy": ([py, "-c", "import numpy"], 1),
        "simulate": (
            moesim
            + ["simulate", "--model", "deepseek-v3", "--cluster", "h100-8x8-ib400", "--synthetic", "zipf:1.2"]
            + ["--json"],
            1,
        ),
        "plan start-up": ([py, "-c", PLAN_STARTUP, str(tmp / "dsv3.npz"), str(tmp / "plan.yaml")], 1),
        "whatif": (moesim + ["whatif", str(tmp / "sweep.yaml"), "-o", str(tmp / "w"), "--no-cache"], 2),
        "autotune capacity": (
            moesim
            + ["autotune", "capacity", "--model", "deepseek-v3", "--cluster", "h100-8x8-ib400"]
            + ["--trace", "zipf:1.2", "--trials", "200", "--json"],
            2,
        ),
    }


GOALS = {"simulate": (0.3, None), "plan start-up": (0.5, None), "whatif": (3.0, None), "autotune capacity": (5.0, 200)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="runs per row (the whatif and autotune rows: half, >= 1)")
    ap.add_argument("--only", default="", help="comma-separated rows (the numpy yardstick always runs)")
    ap.add_argument("--json", dest="json_out", type=Path, help="write every run's numbers here")
    args = ap.parse_args()
    if args.runs < 1:
        raise SystemExit("bench_cli: --runs: must be >= 1")
    with tempfile.TemporaryDirectory(prefix="moesim-bench-cli-") as d:
        tmp = Path(d)
        sys.path.insert(0, str(REPO / "benchmarks"))
        from bench_whatif import SWEEP

        (tmp / "sweep.yaml").write_text(json.dumps(SWEEP))  # JSON is YAML
        # as on a user's machine, modules load from cached bytecode (some sandboxes and CI images set
        # PYTHONDONTWRITEBYTECODE, which recompiles every module on every run); the cache lives in the temp dir
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        synth = ["trace", "synth", "--model", "deepseek-v3", "--tokens", "262144", "--skew", "zipf:0.9"]
        synth += ["--affinity", "0.5", "--counts-only", "-o", str(tmp / "dsv3.npz")]
        timed([sys.executable, "-m", "cli", *synth], REPO, "trace synth", env)  # the plan row's input, untimed
        rows = commands(tmp)
        wanted = {s.strip() for s in args.only.split(",") if s.strip()}
        unknown = wanted - set(rows)
        if unknown:
            raise SystemExit(f"bench_cli: --only: unknown rows {sorted(unknown)}; rows: {', '.join(rows)}")
        results: dict[str, dict] = {}
        for name, (cmd, div) in rows.items():
            if wanted and name not in wanted and name != "import numpy":
                continue
            runs = max(1, args.runs // div)
            if div == 1:
                timed(cmd, REPO, name, env)  # untimed: writes the bytecode cache
            walls, rss = [], []
            for i in range(runs):
                # a fresh cache for every run: autotune capacity's default journal would otherwise resume the
                # previous run's finished study instead of tuning (whatif runs with --no-cache anyway)
                run_env = {**env, "MOESIM_CACHE_DIR": str(tmp / "cache" / f"{name.replace(' ', '-')}-{i}")}
                w, m = timed(cmd, REPO, name, run_env)
                walls.append(w)
                rss.append(m)
            results[name] = {"walls_s": walls, "rss_mib": rss}
            extra = ""
            if name == "whatif":
                out = tmp / "w" / "results.json"
                if out.is_file():
                    results[name]["results_json_bytes"] = out.stat().st_size
                    extra = f" results.json {out.stat().st_size / 1e6:.1f} MB"
            print(f"... {name}: {statistics.median(walls):.3f} s{extra}", file=sys.stderr)
    base = statistics.median(results["import numpy"]["walls_s"])
    print("| command | runs | median wall (s) | x import numpy | peak RSS (MiB) | goal |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        wall = statistics.median(r["walls_s"])
        goal = GOALS.get(name)
        note = ""
        if goal:
            ok = wall <= goal[0] and (goal[1] is None or statistics.median(r["rss_mib"]) <= goal[1])
            note = f"<= {goal[0]} s" + (f", <= {goal[1]} MiB" if goal[1] else "") + (" met" if ok else " MISSED")
        if "results_json_bytes" in r:
            mb = r["results_json_bytes"] / 1e6
            note += f"; results.json {mb:.1f} MB (<= 2 MB {'met' if mb <= 2 else 'MISSED'})"
        print(
            f"| {name} | {len(r['walls_s'])} | {wall:.3f} | {wall / base:.1f} | "
            f"{statistics.median(r['rss_mib']):.0f} | {note} |"
        )
    if args.json_out:
        args.json_out.write_text(json.dumps({"python": sys.version.split()[0], "rows": results}, indent=1))


if __name__ == "__main__":
    main()

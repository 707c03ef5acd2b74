#!/usr/bin/env python
"""How close does model-based search get to exhaustive search, and how fast?

Shape: Mixtral-8x7B at tensor parallel 2 (E=8, N=7168 per shard, K=4096, top-2, bf16), batch sizes
M in {1, 64, 1024}, our fused-MoE Triton kernel, vLLM's 1920-config grid after the shared-memory filter.

Two parts:

1. ``--device-runs`` (GPU, no optuna needed): measure the exhaustive truth.
   a. Enumerate the grid and apply the shared-memory filter (tuner.autotune.space; 1248 of 1920 fit 227 KB).
   b. Order the feasible configs by a seeded permutation (numpy default_rng(0)); put the vLLM shipped configs
      and our default configs for each M first (they are always timed, as references).
   c. Compile in parallel (``benchmarks/autotune_compile.py``): ``--workers`` spawned processes (default: one per
      CPU core, 16 on the device box), each
      with its own CUDA context, pull configs from one queue in that order and trigger Triton compilation
      with one warm-up launch per M (so every specialisation is built); Triton's on-disk cache is shared, so
      the timing process then only loads binaries. A config that fails to compile or launch is recorded as
      failed; a worker that dies (a sticky CUDA error) is replaced and its config recorded as failed.
   d. Time, in this process, each compiled config at every M with the tuner's harness
      (tuner.autotune.kernel.measure.measure_us: CUDA graphs, fresh uniform routing per replay, median of repeats).
   e. The sub-grid, when the whole feasible grid does not fit the time budget (``--budget-s``): the compile
      phase stops when the configs compiled so far would fill the rest of the budget with timing, and the
      sub-grid is the *longest prefix of the seeded permutation* whose configs all compiled (or failed) and
      were timed at every M. That one prefix is the exhaustive truth and the Optuna search space alike; its
      size and definition are written to ``autotune_grid.meta.json`` beside the measurements.
   f. Every measurement is one JSON line (schema 1, kind "fused_moe": device, driver, versions, shape, M,
      config, median_us or the failure) in ``--out DIR/autotune_grid.jsonl``
      (default ``profiles/measured/<device>/``); lines are appended as they are taken, to
      ``autotune_grid.jsonl.partial``, renamed into place at the end, so a run killed by a time limit still
      leaves its data.

2. ``--from DIR/autotune_grid.jsonl`` (CPU, needs optuna; ``benchmarks/autotune_replay.py``): replay the search
   against the measured table. Each trial's objective is the measured median of the proposed config; a config outside
   the measured sub-grid (or outside the shared-memory filter) is pruned at no cost, exactly as the tuner treats
   infeasible configs; failed configs count as trials. Studies are seeded as ``moesim autotune kernel`` seeds them
   (vLLM shipped config, our default). Over ``--seeds`` seeds we report the best found after 5%, 10% and 20% of the
   sub-grid's size in trials, against the exhaustive best and the vLLM shipped config, for TPE (multivariate, our
   default) and for random search as the baseline.

Goal: within 2% of the exhaustive best in at most 10% of the trials, and at least as fast as the vLLM config.

Run (device):  python benchmarks/bench_autotune.py --device-runs --out "$OUT"
Run (replay):  python benchmarks/bench_autotune.py --from profiles/measured/<device>/autotune_grid.jsonl
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from autotune_compile import compile_all  # noqa: E402
from autotune_replay import run_replay  # noqa: E402

from tuner.autotune import space as kernel_space  # noqa: E402  (no optuna, no torch at import)
from tuner.autotune.samplers import SAMPLERS  # noqa: E402

SHAPE = {"model": "mixtral-8x7b-tp2", "E": 8, "N": 7168, "K": 4096, "top_k": 2, "dtype": "bf16"}
DEFAULT_MS = (1, 64, 1024)
PERMUTATION_SEED = 0
GRID_FILE = "autotune_grid.jsonl"
META_FILE = "autotune_grid.meta.json"


# --------------------------------------------------------------------------------------------------------
# Part 1: device runs
# --------------------------------------------------------------------------------------------------------
def device_runs(args: argparse.Namespace) -> int:
    t_start = time.monotonic()
    deadline = t_start + args.budget_s
    backend = args.backend
    if backend == "interpret":
        # CPU smoke test of the orchestration only (tiny shape via --shape); times are meaningless.
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        import torch
    except ImportError:
        print(
            "bench_autotune: error: --device-runs needs torch with CUDA (pip install 'moesim[kernels]')",
            file=sys.stderr,
        )
        return 2
    if backend == "cuda" and not torch.cuda.is_available():
        print(
            "bench_autotune: error: --device-runs needs a CUDA GPU and none is visible "
            "(torch.cuda.is_available() is False); replay measured data on a CPU with --from FILE",
            file=sys.stderr,
        )
        return 2
    if args.shape:
        e, n, k = (int(x) for x in args.shape.split(","))
        SHAPE.update({"model": "custom", "E": e, "N": n, "K": k})
    from kernels.timing import versions
    from moesim.fileio import atomic_write_text
    from tuner.autotune.kernel.device import device_label
    from tuner.autotune.kernel.measure import measure_us
    from tuner.autotune.kernel.problem import make_problem, make_weights
    from tuner.autotune.kernel.seeds import seed_configs

    def log(text: str) -> None:
        print(f"[{time.monotonic() - t_start:6.1f}s] {text}", flush=True)

    ms = [int(m) for m in args.ms.split(",")]
    device = device_label(backend)
    props = torch.cuda.get_device_properties(0) if backend == "cuda" else None
    smem_kb, smem_src = kernel_space.smem_limit_kb_for(None, props)
    dtype_bytes = kernel_space.DTYPE_BYTES[SHAPE["dtype"]]
    feasible = kernel_space.feasible_grid(smem_kb, dtype_bytes)
    perm = np.random.default_rng(PERMUTATION_SEED).permutation(len(feasible))
    grid_size = len(kernel_space.full_grid())
    log(f"{device}: smem {smem_kb:g} KB/block ({smem_src}); grid {grid_size}, feasible {len(feasible)}")

    # References first: the tuner's seeds at each M, i.e. the vLLM shipped config for the nearest shape and our
    # default (timed whatever the sub-grid).
    entries: list[dict] = []
    seen: dict[tuple, int] = {}
    vllm_file = None
    for m in ms:
        for label, cfg in seed_configs(
            SHAPE["E"], SHAPE["N"], SHAPE["K"], m, device, SHAPE["dtype"], top_k=SHAPE["top_k"]
        ):
            role, _, file = label.partition(":")  # "vllm:<file>" or "default"
            vllm_file = file or vllm_file
            key = kernel_space.config_key(cfg)
            if key not in seen:
                seen[key] = len(entries)
                entries.append({"config": cfg, "roles": {}, "perm_index": None})
            entries[seen[key]]["roles"][str(m)] = entries[seen[key]]["roles"].get(str(m), []) + [role]
    n_refs = len(entries)
    for pos, gi in enumerate(perm[: args.limit or None]):
        cfg = feasible[int(gi)]
        key = kernel_space.config_key(cfg)
        if key in seen:
            entries[seen[key]]["perm_index"] = pos
            # A reference that is also in the grid is compiled where it already sits (first).
            entries.append({"config": cfg, "roles": {}, "perm_index": pos, "alias_of": seen[key]})
        else:
            seen[key] = len(entries)
            entries.append({"config": cfg, "roles": {}, "perm_index": pos})
    to_compile = [e for e in entries if "alias_of" not in e]
    index_of = {id(e): i for i, e in enumerate(to_compile)}

    # Phase 1: parallel compile.
    workers = args.workers or os.cpu_count() or 1
    log(f"compiling with {workers} processes; budget {args.budget_s:.0f}s total")
    t_compile = time.monotonic()
    status = compile_all(to_compile, SHAPE, ms, workers, deadline - 10, args.timing_s_per_config, log, backend)
    compile_wall = time.monotonic() - t_compile

    def entry_status(e: dict) -> dict | None:
        target = entries[e["alias_of"]] if "alias_of" in e else e
        return status.get(index_of[id(target)])

    # The sub-grid: longest prefix of the permutation whose configs all finished compiling.
    grid_entries = entries[n_refs:]
    n_compiled_prefix = 0
    for e in grid_entries:
        if entry_status(e) is None:
            break
        n_compiled_prefix += 1

    # Phase 2: timing in this process.
    meta = {
        "schema": 1,
        "kind": "fused_moe_grid_meta",
        "device_name": device,
        **versions(),
        "backend": backend,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **SHAPE,
        "ms": ms,
        "routing": "uniform",
        "smem_limit_kb": smem_kb,
        "smem_source": smem_src,
        "grid_size": grid_size,
        "feasible_size": len(feasible),
        "permutation_seed": PERMUTATION_SEED,
        "compile_workers": workers,
        "compile_wall_s": round(compile_wall, 1),
        "compiled_prefix": n_compiled_prefix,
        "references": n_refs,
        "vllm_file": vllm_file,
        "subgrid_definition": (
            "the first `subgrid_size` configs of numpy.random.default_rng(permutation_seed).permutation over the "
            "shared-memory-feasible grid in tuner.autotune.space.feasible_grid order"
        ),
    }
    out_dir = Path(args.out) if args.out else ROOT / "profiles" / "measured" / device
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / GRID_FILE
    partial = out_dir / (GRID_FILE + ".partial")
    base_record = {k: meta[k] for k in ("device_name", "driver", "cuda", "torch", "triton", "date")}
    w1, w2 = make_weights(SHAPE["E"], SHAPE["N"], SHAPE["K"], SHAPE["dtype"], backend, seed=0)
    problems = {m: make_problem(w1, w2, m, SHAPE["top_k"], backend, draws=args.draws, seed=m) for m in ms}
    t_timing = time.monotonic()
    n_timed_grid = 0
    context_dead = False
    best: dict[int, tuple[float, dict]] = {}
    ref_times: dict[int, dict[str, float | None]] = {m: {} for m in ms}
    with open(partial, "w") as fh:
        timed_entries = entries[:n_refs] + grid_entries[:n_compiled_prefix]
        for i, e in enumerate(timed_entries):
            is_ref = i < n_refs
            if not is_ref and time.monotonic() > deadline:
                log("timing stopped at the time budget")
                break
            st = entry_status(e)
            cached_from = entries[e["alias_of"]] if "alias_of" in e else None
            for m in ms:
                rec = {
                    "schema": 1,
                    "kind": "fused_moe",
                    **base_record,
                    "dtype": SHAPE["dtype"],
                    "E": SHAPE["E"],
                    "N": SHAPE["N"],
                    "K": SHAPE["K"],
                    "M": m,
                    "top_k": SHAPE["top_k"],
                    "routing": "uniform",
                    "config": e["config"],
                    "repeats": args.repeats,
                    "warmup": args.warmup,
                    "draws": args.draws,
                    "timing": "cuda_graph" if backend == "cuda" else "wall_clock_interpret",
                    "role": ",".join(e["roles"].get(str(m), [])) or ("grid" if not is_ref else "reference"),
                    "perm_index": e["perm_index"],
                    "source": "benchmarks/bench_autotune.py",
                    "compile_s": st["compile_s"] if st else None,
                }
                if cached_from is not None and "median_us" in cached_from.get("_times", {}).get(m, {}):
                    rec.update(cached_from["_times"][m])
                elif st is None or not st["ok"]:
                    rec.update(
                        {
                            "median_us": None,
                            "status": "failed",
                            "error": st["error"] if st else "not compiled within the time budget",
                        }
                    )
                elif context_dead:
                    rec.update({"median_us": None, "status": "failed", "error": "CUDA context lost earlier"})
                else:
                    try:
                        us = measure_us(problems[m], e["config"], args.warmup, args.repeats)
                        rec.update({"median_us": round(us, 3), "status": "ok"})
                    except Exception as exc:
                        err = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
                        rec.update({"median_us": None, "status": "failed", "error": err})
                        if "CUDA error" in err or "illegal" in err:
                            context_dead = True
                            log(f"CUDA context lost while timing {e['config']}: {err}")
                e.setdefault("_times", {})[m] = {k: rec[k] for k in ("median_us", "status") if k in rec}
                if "error" in rec:
                    e["_times"][m]["error"] = rec["error"]
                if rec.get("median_us") is not None:
                    if not is_ref and (m not in best or rec["median_us"] < best[m][0]):
                        best[m] = (rec["median_us"], e["config"])
                    for role in e["roles"].get(str(m), []):
                        ref_times[m][role] = rec["median_us"]
                fh.write(json.dumps(rec) + "\n")
            fh.flush()
            if not is_ref:
                n_timed_grid += 1
            if i % 100 == 0:
                log(f"  timed {i + 1}/{len(timed_entries)} configs")
    timing_wall = time.monotonic() - t_timing
    os.replace(partial, final)
    meta.update(
        {
            "subgrid_size": n_timed_grid,
            "timing_wall_s": round(timing_wall, 1),
            "warmup": args.warmup,
            "repeats": args.repeats,
            "draws": args.draws,
            "context_lost": context_dead,
        }
    )
    atomic_write_text(out_dir / META_FILE, json.dumps(meta, indent=2) + "\n")
    log(
        f"wrote {final} ({n_timed_grid} grid configs x {len(ms)} M + {n_refs} references); "
        f"compile {compile_wall:.0f}s, timing {timing_wall:.0f}s"
    )

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"exhaustive over {n_timed_grid} of {len(feasible)} feasible configs, {device}")
    for col in ("M", "best us", "best config", "vLLM shipped us", "default us"):
        table.add_column(col)
    for m in ms:
        b = best.get(m)
        table.add_row(
            str(m),
            f"{b[0]:.1f}" if b else "-",
            _cfg_str(b[1]) if b else "-",
            _fmt(ref_times[m].get("vllm")),
            _fmt(ref_times[m].get("default")),
        )
    Console().print(table)
    print(f"replay on a CPU: python benchmarks/bench_autotune.py --from {final}")
    return 0


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _cfg_str(cfg: dict) -> str:
    return ",".join(str(cfg[k]) for k in kernel_space.PARAM_NAMES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python benchmarks/bench_autotune.py --device-runs --out $OUT\n"
        "  python benchmarks/bench_autotune.py --from profiles/measured/"
        "NVIDIA_H100_80GB_HBM3/autotune_grid.jsonl",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--device-runs", action="store_true", help="measure the grid on the GPU")
    mode.add_argument("--from", dest="from_file", help="replay Optuna on a measured autotune_grid.jsonl")
    parser.add_argument("--out", help="output folder (default profiles/measured/<device>/)")
    parser.add_argument("--ms", default=",".join(map(str, DEFAULT_MS)), help="batch sizes (default 1,64,1024)")
    # 480 s: one device call is limited to 10 minutes; the rest is left for start-up and writing (a choice).
    parser.add_argument(
        "--budget-s",
        type=float,
        default=480.0,
        help="wall-clock budget of --device-runs from start to end of timing (default 480)",
    )
    parser.add_argument(
        "--timing-s-per-config",
        type=float,
        default=0.25,
        help="assumed (not measured) timing cost of one config at all M, used to end compiling "
        "in time; the log's timing wall time shows the real one",
    )
    parser.add_argument("--workers", type=int, default=0, help="compile processes (default: CPU count)")
    # kernels.timing.time_cuda_graph captures 10 calls per graph; 5 replays of it (50 calls) per config and M
    # keep a 1248-config grid at 3 batch sizes inside one 10-minute device call.
    parser.add_argument("--warmup", type=int, default=2, help="eager calls before capture")
    parser.add_argument("--repeats", type=int, default=5, help="timed graph replays (10 calls each); median")
    parser.add_argument("--draws", type=int, default=16, help="routing draws cycled across repeats")
    parser.add_argument("--seeds", type=int, default=10, help="replay seeds per sampler and M")
    parser.add_argument("--fractions", default="0.05,0.1,0.2", help="trial budgets as fractions of the grid")
    parser.add_argument("--samplers", default="tpe,random", help=f"samplers to replay ({', '.join(SAMPLERS)})")
    parser.add_argument("--json", action="store_true", help="print the replay summary as JSON")
    parser.add_argument(
        "--backend",
        choices=("cuda", "interpret"),
        default="cuda",
        help="interpret: CPU smoke test of --device-runs' orchestration (use a tiny --shape)",
    )
    parser.add_argument("--shape", help="E,N,K instead of Mixtral TP2 (for smoke tests)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N configs of the permutation")
    args = parser.parse_args(argv)
    if args.device_runs:
        return device_runs(args)
    return run_replay(args)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""How close does model-based search get to exhaustive search, and how fast?

Shape: Mixtral-8x7B at tensor parallel 2 (E=8, N=7168 per shard, K=4096, top-2, bf16), batch sizes
M in {1, 64, 1024}, our fused-MoE Triton kernel, vLLM's 1920-config grid after the shared-memory filter.

Two parts:

1. ``--device-runs`` (GPU, no optuna needed): measure the exhaustive truth.
   a. Enumerate the grid and apply the shared-memory filter (tuner.kernel_space; 1248 of 1920 fit 227 KB).
   b. Order the feasible configs by a seeded permutation (numpy default_rng(0)); put the vLLM shipped configs
      and our default configs for each M first (they are always timed, as references).
   c. Compile in parallel: ``--workers`` spawned processes (default: one per CPU core, 16 on the device box),
      each with its own CUDA context, pull configs from one queue in that order and trigger Triton compilation
      with one warm-up launch per M (so every specialisation is built); Triton's on-disk cache is shared, so
      the timing process then only loads binaries. A config that fails to compile or launch is recorded as
      failed; a worker that dies (a sticky CUDA error) is replaced and its config recorded as failed.
   d. Time, in this process, each compiled config at every M with the tuner's harness
      (tuner.autotune_kernel.measure_us: CUDA graphs, fresh uniform routing per replay, median of repeats).
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

2. ``--from DIR/autotune_grid.jsonl`` (CPU, needs optuna): replay the search against the measured table.
   Each trial's objective is the measured median of the proposed config; a config outside the measured
   sub-grid (or outside the shared-memory filter) is pruned at no cost, exactly as the tuner treats infeasible
   configs; failed configs count as trials. Studies are seeded as ``moesim autotune kernel`` seeds them (vLLM
   shipped config, our default). Over ``--seeds`` seeds we report the best found after 5%, 10% and 20% of the
   sub-grid's size in trials, against the exhaustive best and the vLLM shipped config, for TPE (multivariate,
   our default) and for random search as the baseline.

Goal: within 2% of the exhaustive best in at most 10% of the trials, and at least as fast as the vLLM config.

Run (device):  python benchmarks/bench_autotune.py --device-runs --out "$OUT"
Run (replay):  python benchmarks/bench_autotune.py --from profiles/measured/<device>/autotune_grid.jsonl
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import queue
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from tuner import kernel_space  # noqa: E402  (no optuna, no torch at import)

SHAPE = {"model": "mixtral-8x7b-tp2", "E": 8, "N": 7168, "K": 4096, "top_k": 2, "dtype": "bf16"}
DEFAULT_MS = (1, 64, 1024)
PERMUTATION_SEED = 0
GRID_FILE = "autotune_grid.jsonl"
META_FILE = "autotune_grid.meta.json"


# --------------------------------------------------------------------------------------------------------
# Part 1: device runs
# --------------------------------------------------------------------------------------------------------
def _compile_worker(wid: int, tasks: Any, results: Any, shape: dict, ms: list[int], backend: str) -> None:
    """Spawned process: pull (index, config), launch the kernel once per M so Triton compiles and caches it."""
    try:
        if backend == "interpret":
            os.environ["TRITON_INTERPRET"] = "1"
        import torch

        from kernels import fused_moe
        from tuner.autotune_kernel import make_problem, make_weights

        w1, w2 = make_weights(shape["E"], shape["N"], shape["K"], shape["dtype"], backend, seed=wid)
        problems = [make_problem(w1, w2, m, shape["top_k"], backend, draws=1, seed=m) for m in ms]
        sync = torch.cuda.synchronize if backend == "cuda" else (lambda: None)
        sync()
    except Exception as exc:  # a worker that cannot start reports it once and leaves
        results.put(("init_failed", wid, f"{type(exc).__name__}: {exc}"))
        return
    results.put(("ready", wid))
    while True:
        item = tasks.get()
        if item is None:
            return
        idx, config = item
        results.put(("start", wid, idx))
        start = time.perf_counter()
        try:
            for p in problems:
                fused_moe(p.hidden, p.w1, p.w2, p.topk_weights, p.topk_ids, config=dict(config))
            sync()
            results.put(("done", wid, idx, True, "", time.perf_counter() - start))
        except Exception as exc:  # compile or launch failure: record it, keep going
            msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
            results.put(("done", wid, idx, False, msg, time.perf_counter() - start))
            if "CUDA" in msg or "cuda" in msg:
                # A CUDA error poisons this context; flush the report, then leave so the parent starts a
                # fresh worker.
                results.close()
                results.join_thread()
                os._exit(3)


def _compile_all(entries: list[dict], ms: list[int], workers: int, deadline: float,
                 timing_s_per_config: float, log: Any, backend: str = "cuda") -> dict[int, dict]:
    """Compile ``entries`` (in order) with ``workers`` processes until done or until the budget says stop.

    Returns {entry index: {"ok": bool, "error": str, "compile_s": float}} for the entries that finished.
    Stops early when elapsed + timing_s_per_config * (entries finished) would pass ``deadline``.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    for i, entry in enumerate(entries):
        tasks.put((i, entry["config"]))
    procs: dict[int, Any] = {}
    next_wid = 0

    def spawn() -> None:
        nonlocal next_wid
        proc = ctx.Process(target=_compile_worker, args=(next_wid, tasks, results, dict(SHAPE), ms, backend),
                           daemon=True)
        proc.start()
        procs[next_wid] = proc
        next_wid += 1

    for _ in range(workers):
        spawn()
    status: dict[int, dict] = {}
    current: dict[int, int] = {}
    ready = 0
    last_report = time.monotonic()
    stop_reason = "all compiled"
    while len(status) < len(entries):
        now = time.monotonic()
        if now + timing_s_per_config * len(status) >= deadline:
            stop_reason = "time budget"
            break
        try:
            msg = results.get(timeout=0.5)
        except queue.Empty:
            msg = None
        if msg is not None:
            kind, wid = msg[0], msg[1]
            if kind == "ready":
                ready += 1
            elif kind == "init_failed":
                log(f"compile worker {wid} could not start: {msg[2]}")
                procs.pop(wid, None)
                if not procs:
                    raise RuntimeError(f"no compile worker could start: {msg[2]}")
            elif kind == "start":
                current[wid] = msg[2]
            elif kind == "done":
                _, _, idx, ok, err, secs = msg
                status[idx] = {"ok": ok, "error": err, "compile_s": secs}
                current.pop(wid, None)
        for wid, proc in list(procs.items()):
            if not proc.is_alive() and proc.exitcode is not None:
                procs.pop(wid)
                idx = current.pop(wid, None)
                if idx is not None and idx not in status:
                    status[idx] = {"ok": False, "error": f"compile worker died (exit code {proc.exitcode})",
                                   "compile_s": None}
                if proc.exitcode != 0 and time.monotonic() < deadline - 30:
                    spawn()
        if time.monotonic() - last_report > 15:
            last_report = time.monotonic()
            log(f"  compiled {len(status)}/{len(entries)} configs ({ready} workers ready)")
    for proc in procs.values():
        proc.terminate()
    for proc in procs.values():
        proc.join(timeout=5)
    # Unfetched tasks would make the queues' feeder threads block interpreter exit.
    tasks.cancel_join_thread()
    results.cancel_join_thread()
    log(f"compile phase: {len(status)}/{len(entries)} configs finished ({stop_reason})")
    return status


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
        print("bench_autotune: error: --device-runs needs torch with CUDA (pip install 'moesim[kernels]')",
              file=sys.stderr)
        return 2
    if backend == "cuda" and not torch.cuda.is_available():
        print("bench_autotune: error: --device-runs needs a CUDA GPU and none is visible "
              "(torch.cuda.is_available() is False); replay measured data on a CPU with --from FILE",
              file=sys.stderr)
        return 2
    if args.shape:
        e, n, k = (int(x) for x in args.shape.split(","))
        SHAPE.update({"model": "custom", "E": e, "N": n, "K": k})
    from kernels.timing import versions
    from moesim.fileio import atomic_write_text
    from tuner.autotune_kernel import device_label, make_problem, make_weights, measure_us, seed_configs

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
        for label, cfg in seed_configs(SHAPE["E"], SHAPE["N"], SHAPE["K"], m, device, SHAPE["dtype"],
                                       top_k=SHAPE["top_k"]):
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
    status = _compile_all(to_compile, ms, workers, deadline - 10, args.timing_s_per_config, log, backend)
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
        "schema": 1, "kind": "fused_moe_grid_meta", "device_name": device, **versions(), "backend": backend,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **SHAPE, "ms": ms, "routing": "uniform", "smem_limit_kb": smem_kb, "smem_source": smem_src,
        "grid_size": grid_size, "feasible_size": len(feasible), "permutation_seed": PERMUTATION_SEED,
        "compile_workers": workers, "compile_wall_s": round(compile_wall, 1),
        "compiled_prefix": n_compiled_prefix, "references": n_refs, "vllm_file": vllm_file,
        "subgrid_definition": (
            "the first `subgrid_size` configs of numpy.random.default_rng(permutation_seed).permutation over the "
            "shared-memory-feasible grid in tuner.kernel_space.feasible_grid order"
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
                rec = {"schema": 1, "kind": "fused_moe", **base_record, "dtype": SHAPE["dtype"],
                       "E": SHAPE["E"], "N": SHAPE["N"], "K": SHAPE["K"], "M": m, "top_k": SHAPE["top_k"],
                       "routing": "uniform", "config": e["config"], "repeats": args.repeats,
                       "warmup": args.warmup, "draws": args.draws,
                       "timing": "cuda_graph" if backend == "cuda" else "wall_clock_interpret",
                       "role": ",".join(e["roles"].get(str(m), [])) or ("grid" if not is_ref else "reference"),
                       "perm_index": e["perm_index"], "source": "benchmarks/bench_autotune.py",
                       "compile_s": st["compile_s"] if st else None}
                if cached_from is not None and "median_us" in cached_from.get("_times", {}).get(m, {}):
                    rec.update(cached_from["_times"][m])
                elif st is None or not st["ok"]:
                    rec.update({"median_us": None, "status": "failed",
                                "error": st["error"] if st else "not compiled within the time budget"})
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
    meta.update({"subgrid_size": n_timed_grid, "timing_wall_s": round(timing_wall, 1),
                 "warmup": args.warmup, "repeats": args.repeats, "draws": args.draws,
                 "context_lost": context_dead})
    atomic_write_text(out_dir / META_FILE, json.dumps(meta, indent=2) + "\n")
    log(f"wrote {final} ({n_timed_grid} grid configs x {len(ms)} M + {n_refs} references); "
        f"compile {compile_wall:.0f}s, timing {timing_wall:.0f}s")

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"exhaustive over {n_timed_grid} of {len(feasible)} feasible configs, {device}")
    for col in ("M", "best us", "best config", "vLLM shipped us", "default us"):
        table.add_column(col)
    for m in ms:
        b = best.get(m)
        table.add_row(str(m), f"{b[0]:.1f}" if b else "-", _cfg_str(b[1]) if b else "-",
                      _fmt(ref_times[m].get("vllm")), _fmt(ref_times[m].get("default")))
    Console().print(table)
    print(f"replay on a CPU: python benchmarks/bench_autotune.py --from {final}")
    return 0


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _cfg_str(cfg: dict) -> str:
    return ",".join(str(cfg[k]) for k in kernel_space.PARAM_NAMES)


# --------------------------------------------------------------------------------------------------------
# Part 2: replay on the measured table (CPU)
# --------------------------------------------------------------------------------------------------------
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


def replay(table: dict[tuple, float | None], grid: set[tuple], refs: dict[str, tuple], sampler: str,
           seed: int, n_trials: int) -> list[float]:
    """Run the tuner's loop on an in-memory study whose objective is the table; -> best-so-far per trial.

    Returns a list whose i-th entry is the best measured us after i+1 counted trials (inf until one succeeds).
    """
    import optuna

    from tuner.autotune_kernel import enqueue_seeds, make_sampler, tune_loop

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="minimize", sampler=make_sampler(sampler, seed))
    if sampler != "random":
        # The tuner seeds every study with the vLLM shipped config and our default (random search is the
        # unseeded baseline).
        enqueue_seeds(study, [(role, kernel_space.config_from_key(refs[role]))
                              for role in ("vllm", "default") if role in refs])
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

    tune_loop(study, evaluate, n_trials, None, lambda c: kernel_space.config_key(c) in measured,
              on_trial=on_trial, max_pruned_in_row=5000)
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
    table = Table(title=f"Optuna replay on measured {data['device']} fused-MoE grid "
                        f"(median over {args.seeds} seeds; \\[share of seeds within 2% of the exhaustive best])")
    for col in ["M", "grid", "exhaustive us", "vLLM us", "default us", "sampler"] + \
               [f"best @{f:.0%}" for f in fractions] + ["goal"]:
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
        row_m: dict[str, Any] = {"M": m, "grid_size": n_grid, "exhaustive_us": truth, "vllm_us": vllm_us,
                                 "default_us": default_us, "samplers": {}}
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
                res_s[f"{f:g}"] = {"trials": b, "median_best_us": med, "worst_best_us": float(bests.max()),
                                   "share_within_2pct": within}
                cells.append(f"{med:.1f} ({med / truth - 1:+.1%}) \\[{within:.0%}]")
            at10 = res_s.get("0.1")
            goal = None
            if at10 is not None:
                goal = at10["median_best_us"] <= truth * 1.02 and (vllm_us is None or at10["median_best_us"] <= vllm_us)
                if sampler == "tpe":
                    goal_all = goal_all and goal
            res_s["replay_s"] = round(time.monotonic() - t0, 1)
            row_m["samplers"][sampler] = res_s
            table.add_row(str(m) if si == 0 else "", str(n_grid) if si == 0 else "",
                          f"{truth:.1f}" if si == 0 else "", _fmt(vllm_us) if si == 0 else "",
                          _fmt(default_us) if si == 0 else "", sampler, *cells,
                          "-" if goal is None else ("met" if goal else "missed"))
        summary["per_m"].append(row_m)
    summary["goal_met_tpe"] = goal_all
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        Console(width=max(Console().width, 150)).print(table)
        print("goal: TPE median best at 10% of the grid's trials within 2% of the exhaustive best and no slower "
              f"than the vLLM shipped config: {'met for every M' if goal_all else 'missed for at least one M'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="examples:\n"
                                            "  python benchmarks/bench_autotune.py --device-runs --out $OUT\n"
                                            "  python benchmarks/bench_autotune.py --from profiles/measured/"
                                            "NVIDIA_H100_80GB_HBM3/autotune_grid.jsonl")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--device-runs", action="store_true", help="measure the grid on the GPU")
    mode.add_argument("--from", dest="from_file", help="replay Optuna on a measured autotune_grid.jsonl")
    parser.add_argument("--out", help="output folder (default profiles/measured/<device>/)")
    parser.add_argument("--ms", default=",".join(map(str, DEFAULT_MS)), help="batch sizes (default 1,64,1024)")
    # 480 s: one device call is limited to 10 minutes; the rest is left for start-up and writing (a choice).
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="wall-clock budget of --device-runs from start to end of timing (default 480)")
    parser.add_argument("--timing-s-per-config", type=float, default=0.25,
                        help="assumed (not measured) timing cost of one config at all M, used to end compiling "
                             "in time; the log's timing wall time shows the real one")
    parser.add_argument("--workers", type=int, default=0, help="compile processes (default: CPU count)")
    # kernels.timing.time_cuda_graph captures 10 calls per graph; 5 replays of it (50 calls) per config and M
    # keep a 1248-config grid at 3 batch sizes inside one 10-minute device call.
    parser.add_argument("--warmup", type=int, default=2, help="eager calls before capture")
    parser.add_argument("--repeats", type=int, default=5, help="timed graph replays (10 calls each); median")
    parser.add_argument("--draws", type=int, default=16, help="routing draws cycled across repeats")
    parser.add_argument("--seeds", type=int, default=10, help="replay seeds per sampler and M")
    parser.add_argument("--fractions", default="0.05,0.1,0.2", help="trial budgets as fractions of the grid")
    parser.add_argument("--samplers", default="tpe,random", help="samplers to replay (tpe, gp, random)")
    parser.add_argument("--json", action="store_true", help="print the replay summary as JSON")
    parser.add_argument("--backend", choices=("cuda", "interpret"), default="cuda",
                        help="interpret: CPU smoke test of --device-runs' orchestration (use a tiny --shape)")
    parser.add_argument("--shape", help="E,N,K instead of Mixtral TP2 (for smoke tests)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N configs of the permutation")
    args = parser.parse_args(argv)
    if args.device_runs:
        return device_runs(args)
    return run_replay(args)


if __name__ == "__main__":
    sys.exit(main())

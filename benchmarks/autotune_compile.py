"""The compile phase of ``bench_autotune.py --device-runs``: Triton builds every config in parallel processes.

``--workers`` spawned processes, each with its own CUDA context, pull configs from one queue in order and trigger
Triton compilation with one warm-up launch per M (so every specialisation is built); Triton's on-disk cache is
shared, so the timing process then only loads binaries. A config that fails to compile or launch is recorded as
failed; a worker that dies (a sticky CUDA error) is replaced and its config recorded as failed.
"""

from __future__ import annotations

import os
import queue
import time
from typing import Any


def _compile_worker(wid: int, tasks: Any, results: Any, shape: dict, ms: list[int], backend: str) -> None:
    """Spawned process: pull (index, config), launch the kernel once per M so Triton compiles and caches it."""
    try:
        if backend == "interpret":
            os.environ["TRITON_INTERPRET"] = "1"
        import torch

        from kernels import fused_moe
        from tuner.autotune.kernel.problem import make_problem, make_weights

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


def compile_all(
    entries: list[dict],
    shape: dict,
    ms: list[int],
    workers: int,
    deadline: float,
    timing_s_per_config: float,
    log: Any,
    backend: str = "cuda",
) -> dict[int, dict]:
    """Compile ``entries`` (in order) for ``shape`` (E, N, K, top_k, dtype) with ``workers`` processes until
    done or until the budget says stop.

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
        proc = ctx.Process(
            target=_compile_worker, args=(next_wid, tasks, results, dict(shape), ms, backend), daemon=True
        )
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
                    status[idx] = {
                        "ok": False,
                        "error": f"compile worker died (exit code {proc.exitcode})",
                        "compile_s": None,
                    }
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

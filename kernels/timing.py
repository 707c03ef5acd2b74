"""GPU timing: CUDA-graph replay (no launch overhead, no host jitter) with a torch.cuda.Event fallback.

Both return the median over ``repeats`` of the time of one call of ``fn``, in microseconds. Never used on CPU.

Graph timing: ``warmup`` eager calls (compile, allocator warm-up), then one graph capturing ``launches`` calls
back to back; each repeat times one replay with events and divides by ``launches``. Many launches per graph
amortise the replay's own start-up (~a few us) for short kernels.

``versions()`` gives the provenance every measured record carries (docs/ARCHITECTURE.md, "Measured profiles").
"""

from __future__ import annotations

import statistics
import subprocess
from collections.abc import Callable
from typing import Any


def _require_cuda() -> Any:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("kernels.timing: CUDA is not available (timing runs on a GPU only)")
    return torch


def time_cuda_graph(fn: Callable[[], Any], warmup: int = 5, repeats: int = 20, launches: int = 10) -> float:
    """Median microseconds per call of ``fn`` from CUDA-graph replays of ``launches`` calls each."""
    torch = _require_cuda()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on a side stream, as graph capture requires
        for _ in range(max(warmup, 1)):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(launches):
            fn()
    torch.cuda.synchronize()
    graph.replay()  # first replay uploads the graph
    torch.cuda.synchronize()
    samples = []
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(repeats):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1000.0 / launches)
    del graph
    return float(statistics.median(samples))


def time_cuda_events(fn: Callable[[], Any], warmup: int = 3, repeats: int = 20) -> float:
    """Median microseconds per call of ``fn`` timed eagerly with CUDA events (for code a graph cannot capture,
    e.g. with host synchronisation; includes launch overhead)."""
    torch = _require_cuda()
    for _ in range(max(warmup, 1)):
        fn()
    torch.cuda.synchronize()
    samples = []
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1000.0)
    return float(statistics.median(samples))


def versions() -> dict[str, str]:
    """``{"torch", "triton", "cuda", "driver"}`` versions of this host, for measured records. The driver comes from
    ``nvidia-smi`` and is informative only: ``"unknown"`` when it cannot be read, never an error."""
    import torch
    import triton

    try:
        res = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        driver = (res.stdout.strip().splitlines() or ["unknown"])[0]
    except (OSError, subprocess.SubprocessError):
        driver = "unknown"
    return {"torch": torch.__version__, "triton": triton.__version__, "cuda": str(torch.version.cuda), "driver": driver}

"""``KernelTuneSpec``: everything that defines a kernel tuning run (one Optuna study per batch size M).

A frozen dataclass that checks itself in ``__post_init__``, so no invalid spec exists; every message names the
spec field (:class:`~tuner.autotune.kernel.errors.KernelSpecError`), and the CLI maps the fields to its flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuner.autotune.kernel.errors import KernelSpecError
from tuner.autotune.kernel.routing import parse_routing
from tuner.autotune.processes import KERNEL_STALE_AFTER_S
from tuner.autotune.samplers import SAMPLERS
from tuner.autotune.samplers.base import MAX_SEED

DTYPES = ("bf16", "fp16")
BACKENDS = ("cuda", "interpret")


@dataclass(frozen=True)
class KernelTuneSpec:
    """Everything that defines a kernel tuning run (one study per M).

    E experts, N intermediate size per expert (w1 is [E, 2N, K]), K hidden size, top_k experts per token,
    ms the batch sizes (tokens) tuned, one study each; trials counted per M; patience None or 0: off.
    """

    E: int
    N: int
    K: int
    top_k: int = 2
    dtype: str = "bf16"
    ms: tuple[int, ...] = (1, 64, 1024)
    trials: int = 100
    patience: int | None = 40
    sampler: str = "tpe"
    seed: int | None = None
    backend: str = "cuda"  # "cuda" | "interpret"
    routing: str = "uniform"  # "uniform" | "dirichlet:ALPHA"
    trace: str | None = None  # path to a moesim trace (overrides routing)
    trace_layer: int | None = None
    # Timing choices (not measured optima): 16 routing draws cycled through the graph's calls; 5 eager warm-up
    # calls and the median of 20 graph replays of 10 calls each (kernels.timing.time_cuda_graph's defaults).
    draws: int = 16
    warmup: int = 5
    repeats: int = 20
    storage: str | None = None  # Optuna storage URL; None = embedded journal file
    gpu: str | None = None  # GPU profile slug for the smem filter
    study_prefix: str = "moesim-kernel"
    stale_after_s: float = KERNEL_STALE_AFTER_S  # a RUNNING trial older than this is stale (an assumption)
    reference_dir: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ms", tuple(self.ms))
        if not self.ms or min(self.ms) < 1:
            raise KernelSpecError("ms", f"batch sizes must be >= 1, got {self.ms}")
        if self.trace and not Path(self.trace).exists():
            raise KernelSpecError("trace", "no such file", source=str(self.trace))
        if self.dtype not in DTYPES:
            raise KernelSpecError("dtype", f"expected {' or '.join(DTYPES)}, got {self.dtype!r}")
        for name in ("E", "N", "K", "top_k", "repeats"):
            if getattr(self, name) < 1:
                raise KernelSpecError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.top_k > self.E:
            raise KernelSpecError("top_k", f"must be <= {{E}} ({self.E}), got {self.top_k}", names=("E",))
        if self.patience is not None and self.patience < 0:
            raise KernelSpecError("patience", f"must be >= 0 (0: off), got {self.patience}")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise KernelSpecError("seed", f"must be in 0..{MAX_SEED}, got {self.seed}")
        if self.backend not in BACKENDS:
            raise KernelSpecError("backend", f"{self.backend}: expected {' or '.join(BACKENDS)}")
        if not self.trace:
            parse_routing(self.routing)
        if self.trials < 1:
            raise KernelSpecError("trials", f"must be >= 1, got {self.trials}")
        if self.sampler not in SAMPLERS:
            raise KernelSpecError("sampler", f"{self.sampler}: expected {', '.join(SAMPLERS)}")

    def routing_label(self) -> str:
        """``trace:<file stem>[_l<layer>]`` with a trace, else the routing spec (``uniform``, ``dirichlet:0.3``)."""
        if self.trace:
            layer = "" if self.trace_layer is None else f"_l{self.trace_layer}"
            return f"trace:{Path(self.trace).stem}{layer}"
        return self.routing

    def study_name(self, device: str, m: int) -> str:
        """The Optuna study of batch size ``m`` on ``device``: every field the measured times depend on."""
        return (
            f"{self.study_prefix}:E={self.E},N={self.N},K={self.K},topk={self.top_k},dtype={self.dtype},"
            f"device={device},routing={self.routing_label()},M={m}"
        )

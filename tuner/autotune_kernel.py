"""Model-based autotuning of the fused-MoE Triton kernel's config, one Optuna study per batch size.

vLLM and SGLang tune by timing every config of a 1920-config grid at every batch size M (2644 s, about 44
minutes, per M for Mixtral TP2 on an H100: sglang PR #29484, profiles/reference/published_numbers.yaml). Here a
sampler (multivariate TPE by default, GP selectable) proposes configs from the same grid, each proposal is
measured, and the study stops after ``trials`` measurements or when the best has not improved for ``patience``
of them. The study is seeded (``enqueue_trial``) with the vLLM
config shipped for the nearest shape and with our batch-size default, so it never ends worse than either.

Dimension legend: M tokens in the batch, E experts, N intermediate size per expert (vLLM's N: w1 is [E, 2N, K]),
K hidden size, k top-k, R routing draws (one per timed repeat).

What one trial is (the definition the budget and the tests use):
- the sampler proposes a config; one outside the shared-memory filter (tuner.kernel_space) is told PRUNED at
  once, inside the budget lock, costs nothing and is not counted (TPE learns to avoid it: pruned trials without
  intermediate values rank below every complete one);
- every other trial is *counted* (user attr ``counted``): it is measured (state COMPLETE, value = median us),
  or it failed to compile/launch (state PRUNED with user attrs ``failed`` and ``error``: PRUNED rather than FAIL
  so TPE steers away from it; FAIL trials are invisible to TPE), or it repeats an already measured config and
  reuses that value (user attr ``cached``: no GPU work, but counted, which is conservative);
- a study holds exactly ``trials`` counted trials at the end, whatever the number of workers and restarts:
  counting and asking happen under ``tuner.storage.budget_lock``.
A RUNNING counted trial left by a killed process is marked FAIL with user attr ``stale`` (owner pid gone on this
host, or older than ``stale_after_s``) when a worker next starts, and is no longer counted.

Timing (``measure_us``): CUDA graphs via ``kernels.timing.time_cuda_graph``; each graph replay first copies the
next of R routing draws (fresh top-k ids and weights) into the kernel's input buffers, so the median is over
routings users really have (trace, uniform or Dirichlet-skewed); the cost of that copy, timed alone in the same
way, is subtracted.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moesim.errors import HardwareError, InfeasibleError, SpecError, TraceError
from tuner import kernel_space
from tuner.kernel_space import PARAM_CHOICES, PARAM_NAMES, Config

TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


# ----------------------------------------------------------------------------------------------------------
# Routing: R fresh top-k draws per timed repeat
# ----------------------------------------------------------------------------------------------------------
def parse_routing(spec: str) -> tuple[str, float]:
    """``"uniform"`` -> ("uniform", 0); ``"dirichlet:0.3"`` -> ("dirichlet", 0.3). SpecError otherwise."""
    if spec == "uniform":
        return "uniform", 0.0
    if spec.startswith("dirichlet:"):
        try:
            alpha = float(spec.split(":", 1)[1])
        except ValueError:
            alpha = -1.0
        if not alpha > 0:
            raise SpecError(f"--routing: {spec}: Dirichlet concentration must be a number > 0")
        return "dirichlet", alpha
    raise SpecError(f"--routing: {spec}: expected 'uniform' or 'dirichlet:ALPHA'")


def _sample_topk(rng: np.random.Generator, probs: np.ndarray, m: int, k: int) -> np.ndarray:
    """k distinct experts per token, drawn without replacement from ``probs`` [E] (Gumbel top-k). -> [m, k]."""
    logp = np.log(np.maximum(probs, 1e-30))
    gumbel = rng.gumbel(size=(m, probs.shape[0]))
    return np.argsort(-(logp[None, :] + gumbel), axis=1)[:, :k]


def check_trace_shape(trace: Any, num_experts: int, top_k: int, layer: int | None, origin: str) -> None:
    """The trace fits the kernel shape: same E and top-k, and ``layer`` (if given) recorded; else a TraceError
    naming ``origin`` (the trace's path on the command line)."""
    if trace.num_experts != num_experts or trace.top_k != top_k:
        raise TraceError(
            f"{origin}: num_experts/top_k: trace has E={trace.num_experts}, k={trace.top_k}; the kernel shape has "
            f"E={num_experts}, k={top_k}"
        )
    layers = list(trace.layers)
    if layer is not None and layer not in layers:
        raise TraceError(f"{origin}: layer: {layer} not recorded (has {layers})")


def routing_bank(
    num_experts: int,
    top_k: int,
    m: int,
    draws: int,
    routing: str = "uniform",
    trace: Any = None,
    layer: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """R = ``draws`` routings of ``m`` tokens: ids [R, m, k] int32 and weights [R, m, k] float32 (rows sum to 1).

    Sources: ``trace`` (a moesim RoutingTrace): rows of ``topk_ids`` of one recorded layer, sampled with
    replacement (real per-token choices), or, without per-token ids, k experts per token drawn from that layer's
    counts; ``routing="uniform"``: k distinct experts uniformly; ``"dirichlet:ALPHA"``: per draw, expert
    probabilities p ~ Dirichlet(ALPHA) (small ALPHA = skewed), then k distinct experts per token from p.
    Weights are softmax-normalised positive scores, as a router's top-k weights are.
    """
    if m < 1 or draws < 1 or top_k < 1 or top_k > num_experts:
        raise SpecError(f"routing: need m >= 1, draws >= 1, 1 <= top_k <= E; got m={m} R={draws} k={top_k}")
    rng = np.random.default_rng(seed)
    ids = np.empty((draws, m, top_k), dtype=np.int32)
    if trace is not None:
        check_trace_shape(trace, num_experts, top_k, layer, trace.source or "trace")
        layers = list(trace.layers)
        li = 0 if layer is None else layers.index(layer)
        if trace.topk_ids is not None:
            rows = np.asarray(trace.topk_ids)[:, li, :]  # [T, k]
            for r in range(draws):
                ids[r] = rows[rng.integers(0, rows.shape[0], size=m)]
        else:
            counts = np.asarray(trace.counts[li], dtype=np.float64)
            probs = counts / counts.sum()
            for r in range(draws):
                ids[r] = _sample_topk(rng, probs, m, top_k)
    else:
        kind, alpha = parse_routing(routing)
        for r in range(draws):
            probs = (
                np.full(num_experts, 1.0 / num_experts)
                if kind == "uniform"
                else rng.dirichlet(np.full(num_experts, alpha))
            )
            ids[r] = _sample_topk(rng, probs, m, top_k)
    scores = rng.standard_normal((draws, m, top_k)).astype(np.float32)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    return ids, weights.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Measuring one config (GPU: CUDA graphs; interpret backend: wall clock, for loop tests only)
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Problem:
    """Device tensors of one (E, N, K, M) problem plus its routing bank.

    hidden [M, K], w1 [E, 2N, K], w2 [E, K, N], ids_bank [R, M, k] int32, weights_bank [R, M, k] float32,
    topk_ids / topk_weights [M, k]: the static buffers the kernel reads (graph inputs), cursor [1] int64.
    """

    hidden: Any
    w1: Any
    w2: Any
    ids_bank: Any
    weights_bank: Any
    topk_ids: Any
    topk_weights: Any
    cursor: Any
    backend: str
    base_us: float | None = None  # cost of the routing copy alone, subtracted from every measurement


def make_weights(E: int, N: int, K: int, dtype: str, backend: str, seed: int = 0) -> tuple[Any, Any]:
    """w1 [E, 2N, K] and w2 [E, K, N], scaled like a trained layer (std 1/sqrt(fan_in)) so bf16 stays finite."""
    import torch

    device = "cuda" if backend == "cuda" else "cpu"
    tdtype = getattr(torch, TORCH_DTYPES.get(dtype, dtype))
    gen = torch.Generator(device=device).manual_seed(seed)
    w1 = torch.randn(E, 2 * N, K, device=device, dtype=tdtype, generator=gen) / math.sqrt(K)
    w2 = torch.randn(E, K, N, device=device, dtype=tdtype, generator=gen) / math.sqrt(N)
    return w1, w2


def make_problem(
    w1: Any, w2: Any, m: int, top_k: int, backend: str, draws: int = 16,
    routing: str = "uniform", trace: Any = None, layer: int | None = None, seed: int = 0,
) -> Problem:
    """Inputs for batch size ``m`` on the weights' device, with a bank of ``draws`` routings."""
    import torch

    E, _, K = w1.shape
    ids, weights = routing_bank(E, top_k, m, draws, routing, trace, layer, seed)
    device = w1.device
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    hidden = torch.randn(m, K, device=device, dtype=w1.dtype, generator=gen)
    ids_bank = torch.from_numpy(ids).to(device)
    weights_bank = torch.from_numpy(weights).to(device)
    return Problem(
        hidden=hidden, w1=w1, w2=w2, ids_bank=ids_bank, weights_bank=weights_bank,
        topk_ids=ids_bank[0].clone(), topk_weights=weights_bank[0].clone(),
        cursor=torch.zeros(1, dtype=torch.int64, device=device), backend=backend,
    )


def _next_routing(p: Problem) -> None:
    # Copy routing draw number `cursor` into the static buffers, then advance the cursor (all on device, so a
    # CUDA graph replays a fresh routing each time without any host work).
    p.topk_ids.copy_(p.ids_bank.index_select(0, p.cursor).squeeze(0))
    p.topk_weights.copy_(p.weights_bank.index_select(0, p.cursor).squeeze(0))
    p.cursor.add_(1).remainder_(p.ids_bank.shape[0])


def _time_fn(fn: Callable[[], Any], backend: str, warmup: int, repeats: int) -> float:
    if backend == "cuda":
        from kernels.timing import time_cuda_graph

        return float(time_cuda_graph(fn, warmup=warmup, repeats=repeats))
    samples = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        fn()
        if i >= warmup:
            samples.append((time.perf_counter() - start) * 1e6)
    return float(np.median(samples))


def measure_us(p: Problem, config: Config, warmup: int = 5, repeats: int = 20) -> float:
    """Median time of one fused-MoE call (us) with ``config``, fresh routing per repeat; raises on failure.

    The first eager call compiles (or loads from Triton's cache) and surfaces compile/launch errors before
    graph capture. The routing-copy cost ``p.base_us`` is measured once per problem and subtracted.
    """
    from kernels import fused_moe

    def call() -> Any:
        _next_routing(p)
        return fused_moe(p.hidden, p.w1, p.w2, p.topk_weights, p.topk_ids, config=dict(config))

    out = call()
    if p.backend == "cuda":
        import torch

        torch.cuda.synchronize()
        if not bool(torch.isfinite(out).all()):
            raise RuntimeError("non-finite output")
    if p.base_us is None:
        p.base_us = _time_fn(lambda: _next_routing(p), p.backend, warmup, repeats)
    total = _time_fn(call, p.backend, warmup, repeats)
    return max(total - p.base_us, 0.0)


# ----------------------------------------------------------------------------------------------------------
# Seeds: the vLLM config shipped for the nearest shape, and our batch-size default
# ----------------------------------------------------------------------------------------------------------
def nearest_shipped_file(
    E: int, N: int, device_name: str, dtype: str | None = None, reference_dir: Path | None = None
) -> Path | None:
    """The shipped vLLM config file whose (E, N) is nearest in log space, same device preferred.

    distance = |log2 E - log2 E'| + |log2 N - log2 N'|, plus 10 for another device (so any file of the same
    device wins) and plus 10 for another dtype tag (bf16 files carry none; ``dtype=fp8_w8a8`` ones do).
    """
    from kernels import configs as kconfigs

    folder = Path(reference_dir) if reference_dir is not None else kconfigs.reference_dir()
    if folder is None or not folder.is_dir():
        return None
    want_device = kconfigs.normalize_device_name(device_name)
    best: tuple[float, str] | None = None
    for path in sorted(folder.glob("E=*,N=*.json")):
        fields = kconfigs.parse_config_file_name(path.name)
        try:
            e, n = int(fields["E"]), int(fields["N"])
        except (KeyError, ValueError):
            continue
        dist = abs(math.log2(e) - math.log2(E)) + abs(math.log2(n) - math.log2(N))
        dist += 0 if fields.get("device_name", "") == want_device else 10
        file_dtype = fields.get("dtype")
        dist += 0 if (file_dtype in (None, "bf16") and dtype in (None, "bf16", "fp16")) or file_dtype == dtype else 10
        if best is None or dist < best[0]:
            best = (dist, str(path))
    return Path(best[1]) if best else None


def seed_configs(
    E: int, N: int, K: int, m: int, device_name: str, dtype: str = "bf16", reference_dir: Path | None = None,
    top_k: int = 2,
) -> list[tuple[str, Config]]:
    """[(label, config)]: the vLLM shipped config for the nearest shape at batch size ``m`` (label
    ``vllm:<file>``) and ``kernels.configs.default_config`` (label ``default``: what ``fused_moe`` runs without
    a tuned file, which depends on ``top_k``), grid-valid ones only."""
    from kernels import configs as kconfigs

    out: list[tuple[str, Config]] = []
    path = nearest_shipped_file(E, N, device_name, dtype, reference_dir)
    if path is not None:
        shipped = kconfigs.pick_config(kconfigs.load_configs(str(path)), m)
        out.append((f"vllm:{path.name}", kernel_space.normalize_config(shipped)))
    out.append(("default", kernel_space.normalize_config(kconfigs.default_config(m, E, N, K, top_k))))
    return [(label, cfg) for label, cfg in out if kernel_space.in_grid(cfg)]


# ----------------------------------------------------------------------------------------------------------
# The tuning loop (shared by the CLI, the worker processes and the benchmark's replay)
# ----------------------------------------------------------------------------------------------------------
def suggest_config(trial: Any) -> Config:
    """Ask the trial for the six grid parameters (categorical over vLLM's choices)."""
    return {name: int(trial.suggest_categorical(name, list(choices))) for name, choices in PARAM_CHOICES.items()}


SAMPLERS = ("tpe", "gp", "random")


def make_sampler(name: str = "tpe", seed: int | None = None) -> Any:
    """``"tpe"``: TPESampler(multivariate=True, constant_liar=True); ``"gp"``: GPSampler; ``"random"``."""
    import optuna

    if name == "tpe":
        # multivariate: block sizes interact (BM x BN sets occupancy); constant_liar: parallel workers
        # do not all pile onto the point the others are already measuring.
        return optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, deterministic_objective=False)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise SpecError(f"--sampler: {name}: expected tpe, gp or random")


def counted_trials(study: Any) -> list[Any]:
    """The study's counted trials (see module docstring), in trial-number order."""
    import optuna

    states = (
        optuna.trial.TrialState.RUNNING,
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.FAIL,
    )
    trials = study.get_trials(deepcopy=False, states=states)
    return [t for t in trials if t.user_attrs.get("counted") and not t.user_attrs.get("stale")]


def best_so_far(trials: Sequence[Any]) -> tuple[float | None, int]:
    """(best value, index in ``trials`` of the trial that set it) over COMPLETE trials."""
    import optuna

    best, where = None, -1
    for i, t in enumerate(trials):
        if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None and (best is None or t.value < best):
            best, where = float(t.value), i
    return best, where


def fail_stale_running(study: Any, stale_after_s: float) -> int:
    """Mark RUNNING trials whose owner died (same host, pid gone) or older than ``stale_after_s`` as FAIL+stale."""
    import datetime

    import optuna

    host = socket.gethostname()
    now = datetime.datetime.now()
    marked = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner = str(t.user_attrs.get("owner", ""))
        owner_host, _, pid = owner.rpartition(":")
        dead = owner_host == host and pid.isdigit() and not _pid_alive(int(pid))
        old = t.datetime_start is not None and (now - t.datetime_start).total_seconds() > stale_after_s
        if dead or old:
            study._storage.set_trial_user_attr(t._trial_id, "stale", True)
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            marked += 1
    return marked


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed child not yet reaped) still answers kill(0); it is dead all the same.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


@dataclass
class LoopResult:
    """What one worker did on one study."""

    measured: int = 0       # trials this worker counted (measured, failed or cached)
    pruned: int = 0         # infeasible proposals told PRUNED for free
    stopped_by: str = ""    # "trials" | "patience" | "exhausted"


def tune_loop(
    study: Any,
    evaluate: Callable[[Config], float],
    n_trials: int,
    patience: int | None = None,
    feasible: Callable[[Config], bool] = lambda c: True,
    lock: Callable[[], Any] | None = None,
    on_trial: Callable[[Any, list[Any]], None] | None = None,
    max_pruned_in_row: int = 500,
) -> LoopResult:
    """Run trials on ``study`` until it holds ``n_trials`` counted trials or ``patience`` is exhausted.

    ``evaluate(config) -> median us`` raises on a compile/launch failure (the trial becomes PRUNED+failed).
    ``lock()`` returns a context manager (the study's budget lock); counting and asking happen under it.
    ``on_trial(frozen_trial, counted)`` is called after every counted trial (progress bars); ``counted`` is the
    list of counted trials seen before this one was asked for.
    ``max_pruned_in_row``: consecutive infeasible proposals after which the sampler is taken to be stuck
    (``stopped_by="exhausted"``); 500 is a choice, about a quarter of the 1920-config grid.
    """
    import contextlib

    import optuna

    owner = f"{socket.gethostname()}:{os.getpid()}"
    result = LoopResult()
    pruned_in_row = 0
    while True:
        with (lock() if lock is not None else contextlib.nullcontext()):
            counted = counted_trials(study)
            if len(counted) >= n_trials:
                result.stopped_by = "trials"
                return result
            if patience is not None and patience > 0:
                best, where = best_so_far(counted)
                finished = [t for t in counted if t.state != optuna.trial.TrialState.RUNNING]
                if best is not None and len(finished) - 1 - where >= patience and len(finished) == len(counted):
                    result.stopped_by = "patience"
                    return result
            trial = study.ask()
            config = suggest_config(trial)
            if not feasible(config):
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                result.pruned += 1
                pruned_in_row += 1
                if pruned_in_row >= max_pruned_in_row:
                    result.stopped_by = "exhausted"
                    return result
                continue
            pruned_in_row = 0
            # owner before counted: a kill between the two must not leave a counted RUNNING trial that names no
            # owner, which no later worker could tell dead (it would hold a budget slot for stale_after_s)
            trial.set_user_attr("owner", owner)
            trial.set_user_attr("counted", True)
            cached = _cached_outcome(counted, config)
        if cached is not None and cached[0] == "running":
            # Another worker is measuring this very config now: wait for its result instead of measuring twice.
            cached = _wait_for(study, int(cached[1]))
        if cached is not None:
            value, error = cached
            trial.set_user_attr("cached", True)
            if error is None:
                frozen = study.tell(trial, value)
            else:
                trial.set_user_attr("failed", True)
                trial.set_user_attr("error", error)
                frozen = study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            try:
                value = float(evaluate(config))
                if not math.isfinite(value):
                    raise RuntimeError(f"non-finite time {value}")
                frozen = study.tell(trial, value)
            except Exception as exc:  # any compile/launch failure is a failed trial, never a crash
                trial.set_user_attr("failed", True)
                trial.set_user_attr("error", f"{type(exc).__name__}: {str(exc).strip()[:300]}")
                frozen = study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        result.measured += 1
        if on_trial is not None:
            on_trial(frozen, counted)


def _cached_outcome(counted: Sequence[Any], config: Config) -> tuple[float | None, str | None] | None:
    """(value, None) or (None, error) of an earlier finished trial with the same config; None if unseen."""
    import optuna

    key = kernel_space.config_key(config)
    running = None
    for t in counted:
        if kernel_space.config_key(t.params) != key:
            continue
        if t.state == optuna.trial.TrialState.RUNNING:
            running = t
            continue
        if t.state == optuna.trial.TrialState.COMPLETE:
            return float(t.value), None
        if t.user_attrs.get("failed"):
            return None, str(t.user_attrs.get("error", "failed"))
    if running is not None:
        return "running", running._trial_id  # type: ignore[return-value]
    return None


def _wait_for(study: Any, trial_id: int, timeout_s: float = 900.0) -> tuple[float | None, str | None] | None:
    """Poll until trial ``trial_id`` finishes; its (value, None) or (None, error); None if it never does.

    ``timeout_s``: the same 15 minutes after which a RUNNING trial counts as stale (``KernelTuneSpec``).
    """
    import optuna

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        t = study._storage.get_trial(trial_id)
        if t.state == optuna.trial.TrialState.COMPLETE:
            return float(t.value), None
        if t.state != optuna.trial.TrialState.RUNNING:
            if t.user_attrs.get("failed"):
                return None, str(t.user_attrs.get("error", "failed"))
            return None  # killed or stale: measure it ourselves
        time.sleep(0.05)
    return None


def enqueue_seeds(study: Any, seeds: Iterable[tuple[str, Config]]) -> None:
    """Enqueue each seed config once per study (``skip_if_exists``), labelled with user attr ``seed``."""
    for label, config in seeds:
        study.enqueue_trial(dict(config), user_attrs={"seed": label}, skip_if_exists=True)


# ----------------------------------------------------------------------------------------------------------
# The command: studies per M, workers, progress, table, JSON
# ----------------------------------------------------------------------------------------------------------
@dataclass
class KernelTuneSpec:
    """Everything that defines a kernel tuning run (one study per M)."""

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
    backend: str = "cuda"           # "cuda" | "interpret"
    routing: str = "uniform"        # "uniform" | "dirichlet:ALPHA"
    trace: str | None = None        # path to a moesim trace (overrides routing)
    trace_layer: int | None = None
    # Timing choices (not measured optima): 16 routing draws cycled through the graph's calls; 5 eager warm-up
    # calls and the median of 20 graph replays of 10 calls each (kernels.timing.time_cuda_graph's defaults).
    draws: int = 16
    warmup: int = 5
    repeats: int = 20
    storage: str | None = None      # Optuna storage URL; None = embedded journal file
    gpu: str | None = None          # GPU profile slug for the smem filter
    study_prefix: str = "moesim-kernel"
    # A RUNNING trial older than this is stale. An assumption: 15 minutes is far longer than one measurement (a
    # compile and 20 graph replays), so only a dead worker's trial gets that old.
    stale_after_s: float = 900.0
    reference_dir: str | None = None

    def routing_label(self) -> str:
        if self.trace:
            layer = "" if self.trace_layer is None else f"_l{self.trace_layer}"
            return f"trace:{Path(self.trace).stem}{layer}"
        return self.routing

    def study_name(self, device: str, m: int) -> str:
        return (
            f"{self.study_prefix}:E={self.E},N={self.N},K={self.K},topk={self.top_k},dtype={self.dtype},"
            f"device={device},routing={self.routing_label()},M={m}"
        )


def check_backend(backend: str) -> None:
    """HardwareError unless the backend can run here (CUDA present, or the Triton interpreter requested)."""
    if backend == "interpret":
        # Must be set before triton is first imported in this process.
        os.environ["TRITON_INTERPRET"] = "1"
        return
    if backend != "cuda":
        raise SpecError(f"--backend: {backend}: expected cuda or interpret")
    try:
        import torch
    except ImportError as exc:
        raise HardwareError(
            "autotune kernel: torch is not installed (pip install 'moesim[kernels]')"
        ) from exc
    if not torch.cuda.is_available():
        raise HardwareError(
            "autotune kernel: no CUDA GPU visible (torch.cuda.is_available() is False); timing needs a GPU. "
            "Use --backend interpret for a functional run of the loop on tiny shapes (not for timing)"
        )


def device_label(backend: str) -> str:
    """The device name used in study names and output files (vLLM spelling, spaces as underscores). The
    interpreter runs on the CPU: ``cpu``, the name :func:`kernels.configs.device_name` (and vLLM) looks up there."""
    if backend == "interpret":
        from moesim.vllm_configs import CPU_DEVICE_NAME  # not kernels: triton must not load before TRITON_INTERPRET

        return CPU_DEVICE_NAME
    from kernels.configs import device_name

    return device_name()


def _smem_limit(spec: KernelTuneSpec) -> tuple[float, str]:
    if spec.gpu:
        return kernel_space.smem_limit_kb_for(spec.gpu)
    if spec.backend == "cuda":
        import torch

        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        slug = kernel_space.gpu_slug_for_device(props.name)
        if slug:
            try:
                return kernel_space.smem_limit_kb_for(slug)
            except Exception:  # a malformed or half-written profile must not block tuning
                pass
        return kernel_space.smem_limit_kb_for(None, props)
    return kernel_space.smem_limit_kb_for(None)


def _load_trace(spec: KernelTuneSpec) -> Any:
    if not spec.trace:
        return None
    from moesim.trace import load_trace

    return load_trace(spec.trace)


@dataclass
class MResult:
    """Outcome of one study (one batch size)."""

    m: int
    best_config: Config | None
    best_us: float | None
    trials: int
    failed: int
    pruned: int
    default_us: float | None
    vllm_us: float | None
    vllm_file: str | None
    stopped_by: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "M": self.m, "best_config": self.best_config, "best_us": self.best_us, "trials": self.trials,
            "failed": self.failed, "pruned_infeasible": self.pruned, "default_us": self.default_us,
            "vllm_us": self.vllm_us, "vllm_file": self.vllm_file, "stopped_by": self.stopped_by,
            "speedup_vs_default": _ratio(self.default_us, self.best_us),
            "speedup_vs_vllm": _ratio(self.vllm_us, self.best_us),
        }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b > 0 else None


def _seed_time(trials: Sequence[Any], label_prefix: str) -> tuple[float | None, str | None]:
    import optuna

    for t in trials:
        label = str(t.user_attrs.get("seed", ""))
        if label.startswith(label_prefix) and t.state == optuna.trial.TrialState.COMPLETE:
            return float(t.value), label
    for t in trials:  # the seed may have been measured as a cached repeat or failed
        label = str(t.user_attrs.get("seed", ""))
        if label.startswith(label_prefix):
            return (float(t.value) if t.value is not None else None), label
    return None, None


def summarize_study(study: Any, m: int, stopped_by: str = "") -> MResult:
    """Best config and reference times of one study (reads storage; used after workers finish)."""
    import optuna

    trials = counted_trials(study)
    finished = [t for t in trials if t.state != optuna.trial.TrialState.RUNNING]
    best, where = best_so_far(finished)
    default_us, _ = _seed_time(finished, "default")
    vllm_us, vllm_label = _seed_time(finished, "vllm:")
    pruned = sum(
        1 for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))
        if not t.user_attrs.get("counted")
    )
    return MResult(
        m=m,
        best_config=kernel_space.normalize_config(finished[where].params) if where >= 0 else None,
        best_us=best,
        trials=len(finished),
        failed=sum(1 for t in finished if t.user_attrs.get("failed")),
        pruned=pruned,
        default_us=default_us,
        vllm_us=vllm_us,
        vllm_file=vllm_label.removeprefix("vllm:") if vllm_label else None,
        stopped_by=stopped_by,
    )


def run_worker(spec: KernelTuneSpec, worker: int = 0, progress: Callable[[int, Any, list[Any]], None] | None = None
               ) -> dict[int, LoopResult]:
    """One worker: for each M, join the shared study and run trials until its budget is spent."""
    import optuna

    from tuner import storage as tstorage

    check_backend(spec.backend)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = device_label(spec.backend)
    smem_kb, _ = _smem_limit(spec)
    dtype_bytes = kernel_space.DTYPE_BYTES.get(spec.dtype, 2)
    kernel_space.feasible_grid(smem_kb, dtype_bytes)  # raises InfeasibleError on an empty space
    feasible = lambda c: kernel_space.is_feasible(c, smem_kb, dtype_bytes)  # noqa: E731
    trace = _load_trace(spec)
    storage = tstorage.open_storage(spec.storage)
    ref_dir = Path(spec.reference_dir) if spec.reference_dir else None
    w1, w2 = make_weights(spec.E, spec.N, spec.K, spec.dtype, spec.backend, seed=0)
    results: dict[int, LoopResult] = {}
    for m in spec.ms:
        name = spec.study_name(device, m)
        # per worker and M its own stream; RandomState takes seeds below 2**32
        sampler = make_sampler(spec.sampler, None if spec.seed is None else (spec.seed + 1000 * worker + m) % 2**32)
        study = optuna.create_study(storage=storage, study_name=name, direction="minimize",
                                    sampler=sampler, load_if_exists=True)
        lock = lambda name=name: tstorage.budget_lock(spec.storage, name)  # noqa: E731
        with lock():
            fail_stale_running(study, spec.stale_after_s)
            study.set_user_attr("problem", {"E": spec.E, "N": spec.N, "K": spec.K, "top_k": spec.top_k,
                                            "dtype": spec.dtype, "device": device, "M": m,
                                            "routing": spec.routing_label()})
            if not counted_trials(study):
                enqueue_seeds(study, seed_configs(spec.E, spec.N, spec.K, m, device, spec.dtype, ref_dir,
                                                  top_k=spec.top_k))
        problem = make_problem(w1, w2, m, spec.top_k, spec.backend, spec.draws, spec.routing, trace,
                               spec.trace_layer, seed=m)
        evaluate = lambda c, p=problem: measure_us(p, c, spec.warmup, spec.repeats)  # noqa: E731
        on_trial = (lambda t, counted, m=m: progress(m, t, counted)) if progress else None
        results[m] = tune_loop(study, evaluate, spec.trials, spec.patience, feasible, lock, on_trial)
    return results


def _worker_main(spec_dict: dict, worker: int, gpu: str | None) -> None:
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    run_worker(KernelTuneSpec(**spec_dict), worker)


def visible_gpus() -> list[str]:
    """GPU ids from CUDA_VISIBLE_DEVICES, else 0..count-1 from torch (no CUDA init if the variable is set)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


def autotune_kernel(spec: KernelTuneSpec, workers: int = 1, save_dir: str | None = None,
                    console: Any = None, show_progress: bool = True) -> list[MResult]:
    """Tune every M of ``spec`` (resuming any finished trials in storage); optionally write vLLM JSON.

    ``workers > 1`` starts that many processes, one per visible GPU (``CUDA_VISIBLE_DEVICES`` set per process;
    with the interpret backend they share the CPU), all on the same studies; the budget stays exact.
    """
    import multiprocessing

    import optuna
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tuner import storage as tstorage

    check_backend(spec.backend)
    if spec.trials < 1:
        raise SpecError(f"--trials: must be >= 1, got {spec.trials}")
    if workers < 1:
        raise SpecError(f"--workers: must be >= 1, got {workers}")
    smem_kb, _ = _smem_limit(spec)
    kernel_space.feasible_grid(smem_kb, kernel_space.DTYPE_BYTES.get(spec.dtype, 2))
    device = device_label(spec.backend)
    # everything that can be wrong with the input fails here, before the storage (journal, lock) is touched
    if spec.sampler not in SAMPLERS:
        raise SpecError(f"--sampler: {spec.sampler}: expected {', '.join(SAMPLERS)}")
    if spec.trace:
        from moesim.trace import load_trace

        check_trace_shape(load_trace(spec.trace), spec.E, spec.top_k, spec.trace_layer, spec.trace)
    if save_dir is not None:
        check_save_dir(spec, save_dir, device)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = tstorage.open_storage(spec.storage)

    def load(m: int) -> Any:
        return optuna.load_study(study_name=spec.study_name(device, m), storage=storage)

    def show(m: int, finished: Sequence[Any]) -> None:
        best, _ = best_so_far(finished)
        bar.update(tasks[m], completed=len(finished), best="-" if best is None else f"{best:.1f} us")

    def refresh() -> None:  # every study's finished counted trials, from storage
        for m in spec.ms:
            try:
                study = load(m)
            except KeyError:  # no worker has created this study yet
                continue
            show(m, [t for t in counted_trials(study) if t.state != optuna.trial.TrialState.RUNNING])

    bar = Progress(TextColumn("M={task.fields[m]:>5}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("best {task.fields[best]}"), TimeElapsedColumn(),
                   console=console, disable=not show_progress)
    stopped: dict[int, str] = {}
    with bar:
        tasks = {m: bar.add_task("", total=spec.trials, m=m, best="-") for m in spec.ms}
        if workers == 1:
            # One worker: the trials counted before this one plus this one are all the study's finished trials.
            results = run_worker(spec, 0, lambda m, frozen, counted: show(m, [*counted, frozen]))
            stopped = {m: res.stopped_by for m, res in results.items()}
        else:
            gpus = visible_gpus() if spec.backend == "cuda" else []
            if spec.backend == "cuda" and len(gpus) < workers:
                raise HardwareError(f"--workers: {workers} workers need {workers} visible GPUs, found {len(gpus)}")
            ctx = multiprocessing.get_context("spawn")
            spec_dict = dict(spec.__dict__)
            procs = [ctx.Process(target=_worker_main, args=(spec_dict, w, gpus[w] if gpus else None))
                     for w in range(workers)]
            for proc in procs:
                proc.start()
            while any(p.is_alive() for p in procs):
                refresh()
                time.sleep(0.5)
            bad = [p.exitcode for p in procs if p.exitcode != 0]
            if bad:
                raise HardwareError(f"autotune kernel: {len(bad)} worker process(es) failed (exit codes {bad})")
        refresh()

    results_out = [summarize_study(load(m), m, stopped.get(m, "")) for m in spec.ms]
    if save_dir is not None:
        save_results(spec, results_out, save_dir, device)
    return results_out


def check_save_dir(spec: KernelTuneSpec, save_dir: str, device: str) -> Path:
    """The config file ``save_results`` will write, checked before any tuning: ``--save-dir`` must be a folder
    (or not exist yet) and a file already there must load, since the new configs are merged into it."""
    from kernels import configs as kconfigs

    folder = Path(save_dir)
    if folder.exists() and not folder.is_dir():
        raise SpecError(f"{save_dir}: --save-dir: exists and is not a directory")
    dtype_tag = None if spec.dtype in ("bf16", "fp16") else spec.dtype
    path = folder / kconfigs.config_file_name(spec.E, spec.N, device, dtype_tag)
    if path.is_dir():
        raise SpecError(f"{path}: --save-dir: is a directory, where the config file goes")
    if path.exists():
        try:
            kconfigs.load_configs(str(path))
        except (OSError, ValueError, TypeError, KeyError) as exc:  # json.JSONDecodeError is a ValueError
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SpecError(f"{path}: --save-dir: the config file there does not load ({first}); "
                            "move it or pick another folder") from None
    return path


def save_results(spec: KernelTuneSpec, results: Sequence[MResult], save_dir: str, device: str) -> Path:
    """Write (or update) the vLLM-format JSON ``E=..,N=..,device_name=...json`` with the best config per M."""
    from kernels import configs as kconfigs

    folder = Path(save_dir)
    dtype_tag = None if spec.dtype in ("bf16", "fp16") else spec.dtype
    path = folder / kconfigs.config_file_name(spec.E, spec.N, device, dtype_tag)
    merged: dict[int, dict] = {}
    if path.exists():
        merged.update({int(m): dict(c) for m, c in kconfigs.load_configs(str(path)).items()})
    for r in results:
        if r.best_config is not None:
            merged[r.m] = dict(r.best_config)
    if not merged:
        raise InfeasibleError(f"autotune kernel: no config measured successfully; {path} not written")
    import triton

    kconfigs.save_configs(str(path), dict(sorted(merged.items())), triton_version=triton.__version__)
    return path


def results_table(results: Sequence[MResult], title: str = "") -> Any:
    """The closing rich table: per M, best config, median us, trials, speedups."""
    from rich.table import Table

    table = Table(title=title or None)
    for col in ("M", "best config (BM,BN,BK,G,warps,stages)", "median us", "trials", "failed",
                "vs default", "vs vLLM shipped"):
        table.add_column(col, justify="right" if col != "best config (BM,BN,BK,G,warps,stages)" else "left")
    for r in results:
        cfg = ",".join(str(r.best_config[k]) for k in PARAM_NAMES) if r.best_config else "-"
        table.add_row(
            str(r.m), cfg, f"{r.best_us:.1f}" if r.best_us is not None else "-", str(r.trials), str(r.failed),
            _fmt_speedup(r.default_us, r.best_us), _fmt_speedup(r.vllm_us, r.best_us),
        )
    return table


def _fmt_speedup(ref: float | None, best: float | None) -> str:
    ratio = _ratio(ref, best)
    return f"{ratio:.2f}x" if ratio is not None else "-"


def results_json(results: Sequence[MResult], spec: KernelTuneSpec, device: str) -> str:
    """One JSON document for ``--json``."""
    return json.dumps({"problem": {"E": spec.E, "N": spec.N, "K": spec.K, "top_k": spec.top_k,
                                   "dtype": spec.dtype, "device": device, "routing": spec.routing_label()},
                       "results": [r.to_dict() for r in results]}, indent=2)

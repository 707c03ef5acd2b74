"""Evaluate what-if scenarios: build each scenario's inputs, place experts, simulate, cache, compare.

Dimension legend: L MoE layers simulated, E logical experts, G GPUs, P physical expert slots.

For every ``whatif.scenario.Scenario`` the evaluation is

1. inputs: ``load_model``, ``load_cluster`` and the routing trace (a file, optionally restricted to
   ``layers``, or ``synthetic_trace(model, min(tokens_per_gpu * G, 2^18), ...)`` as ``moesim simulate`` draws);
2. placement over the trace's L layers, by the placement family's registry (``tuner.placers.place``; the
   names are ``moesim.placement.PlacementMethod``): ``contiguous`` is what ``moesim simulate`` uses without
   ``--placement``; ``ilp`` is ``tuner.plan.plan``'s plan, as ``moesim plan`` makes it (``tuner`` imported
   lazily, only when a scenario needs a placement solved);
3. ``moesim.simulate.simulate(model, cluster, trace, placement, scenario.options)``;
4. a flat record: step latency, the phase breakdown, dropped fraction, per-GPU load, traffic per link class,
   and the simulator's own ``StepResult.to_dict()`` for the full detail.

A scenario that cannot run as specified (weights overflow HBM, slots that do not divide over the GPUs, an ILP
without incumbent) gives a record with ``error`` instead of numbers; the sweep goes on and the report lists it.

Records are cached (``whatif.cache``) under ``cache_dir()`` by a SHA-256 of everything that determines them: the
scenario's settings, the model and cluster specs (their full contents, whether named by slug or path), the trace
file's bytes, and the source of the simulator and the placement solvers (so editing the code invalidates the
cache). A scenario's ``calibration`` (default ``auto``: the GPU's shipped
``profiles/measured/<gpu>/calibration.json``) is part of the key by its contents.
A cached record is bit-identical to a fresh one, so a repeated run is instant and reports the same numbers.

Inputs load through ``whatif.inputs`` (memoised per process). Scenarios run in worker processes (``workers``);
cache look-ups happen in the parent first so only misses are dispatched.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from moesim.errors import InfeasibleError, MoesimError
from moesim.results import PHASES
from whatif.cache import cache_get, cache_key, cache_put
from whatif.inputs import build_inputs, prepare_traces, scenario_calibration, synthetic_tokens
from whatif.scenario import Scenario, ScenarioFile

# Placements solved in this process, keyed by what determines them: scenarios of a sweep that differ only in
# capacity, overlap or dtypes share one EPLB/ILP solve. Bounded: a placement is at most L * P numbers.
# A placement that fails (no replicas for a method without them, an ILP with no incumbent) is kept as its
# error, so scenarios sharing it do not solve it again.
_PLACEMENTS: dict[tuple, Any] = {}
_PLACEMENTS_MAX = 32


def _placement_key(scenario: Scenario, num_gpus: int) -> tuple:
    trace_key = (scenario.trace, scenario.layers)
    if scenario.is_synthetic:
        trace_key += (synthetic_tokens(scenario, num_gpus), scenario.trace_seed, scenario.trace_affinity)
    # the MILP's plan also checks the slots against HBM in the scenario's weight dtype
    ilp = ()
    if scenario.placement == "ilp":
        ilp = (scenario.ilp_time_limit_s, scenario.options.tokens_per_gpu, scenario.options.weight_dtype)
    return (scenario.placement, scenario.model, scenario.cluster, trace_key, scenario.redundant_experts, ilp)


def build_placement(scenario: Scenario, model: Any, cluster: Any, trace: Any) -> Any:
    """The placement a scenario asks for, one row per trace layer (memoised per process, see ``_PLACEMENTS``)."""
    key = _placement_key(scenario, cluster.num_gpus)
    if key not in _PLACEMENTS:
        if len(_PLACEMENTS) >= _PLACEMENTS_MAX:
            _PLACEMENTS.pop(next(iter(_PLACEMENTS)))
        try:
            _PLACEMENTS[key] = _solve_placement(scenario, model, cluster, trace)
        except MoesimError as exc:
            _PLACEMENTS[key] = exc
    found = _PLACEMENTS[key]
    if isinstance(found, MoesimError):
        raise found.with_traceback(None)  # the same type and message as the first time
    return found


def _solve_placement(scenario: Scenario, model: Any, cluster: Any, trace: Any) -> Any:
    """The placement a scenario asks for, one row per trace layer, from the placement registry
    (``tuner.placers``, imported lazily)."""
    from tuner.placers import get_method, place

    method = get_method(scenario.placement, "scenario", "placement")
    if method.milp:
        return _ilp_placement(scenario, model, cluster, trace)
    # a method without replicas asked for some raises PlacementError itself ("has no replicas; use eplb or ilp")
    counts = np.asarray(trace.counts, dtype=np.float64)
    return place(scenario.placement, counts, None, model, cluster, scenario.redundant_experts, layers=trace.layers)


def _ilp_placement(scenario: Scenario, model: Any, cluster: Any, trace: Any) -> Any:
    """``tuner.plan.plan``'s MILP placement (warm-started from the best heuristic), as ``moesim plan`` makes it.

    Raises ``InfeasibleError`` when the solver finds no incumbent within ``ilp_time_limit_s``.
    """
    from moesim.options import WEIGHT_DTYPES
    from tuner.plan import plan

    result = plan(
        model,
        cluster,
        trace,
        redundant_experts=scenario.redundant_experts,
        time_limit_s=scenario.ilp_time_limit_s,
        tokens_per_gpu=scenario.options.tokens_per_gpu,
        trace_name="synthetic:" + scenario.synthetic_spec if scenario.is_synthetic else scenario.trace,
        weight_bytes=WEIGHT_DTYPES[scenario.options.weight_dtype],
    )
    return result.best


# --------------------------------------------------------------------------------------------- records
def summarise(step: Any, scenario: Scenario, model: Any, cluster: Any) -> dict:
    """A flat record of one simulated step (see module docstring); JSON-ready.

    ``phase_us``: the tail GPU's phase times of each simulated MoE layer, summed, then scaled by
    ``num_moe_layers / simulated layers`` so they cover the whole step as ``StepResult.moe_us`` does (a trace
    recording 3 of Mixtral's 32 layers stands for all 32). ``attention_us`` and ``dense_us`` (dense MLPs and
    LM head) complete the step. With overlap the phases add up to more than the MoE time.
    """
    layers = step.layers
    n_sim = max(len(layers), 1)
    scale = model.num_moe_layers / n_sim
    phases = step.phase_us()
    gpu_tokens = np.array([la.gpu_tokens for la in layers], dtype=np.float64)  # [L, G]
    load = gpu_tokens.mean(axis=0)
    mean = float(load.mean())
    # traffic by link class, named by the link kind of the cluster profile (nvswitch, pcie, ib, roce)
    intra = cluster.levels[0].kind
    inter = cluster.levels[1].kind if len(cluster.levels) > 1 and cluster.num_nodes > 1 else ""
    traffic = {intra: scale * float(sum(la.nvlink_bytes for la in layers))}
    if inter:
        traffic[inter] = traffic.get(inter, 0.0) + scale * float(sum(la.network_bytes for la in layers))
    return {
        "settings": scenario.settings(),
        "model": model.slug,
        "cluster": cluster.slug,
        "gpu": cluster.gpu.slug,
        "num_gpus": int(cluster.num_gpus),
        "num_nodes": int(cluster.num_nodes),
        "num_layers": len(layers),
        "num_moe_layers": int(model.num_moe_layers),
        "top_k": int(model.top_k),
        "step_latency_us": float(step.step_latency_us),
        "tokens_per_s_per_gpu": scenario.options.tokens_per_gpu / (step.step_latency_us * 1e-6),
        "phase_us": {p: scale * phases[f"{p}_us"] for p in PHASES},
        "moe_us": float(step.moe_us),
        "attention_us": float(step.attention_us),
        "dense_us": float(step.dense_us + step.lm_head_us),
        "moe_share": float(step.moe_share),
        "alltoall_share": float(step.alltoall_share),
        "dropped_fraction": float(np.mean([la.dropped_fraction for la in layers])) if layers else 0.0,
        "rerouted_fraction": float(np.mean([la.rerouted_fraction for la in layers])) if layers else 0.0,
        "gpu_load": [float(x) for x in load],
        "gpu_load_max": [float(x) for x in gpu_tokens.max(axis=0)],
        # the straggler factor of each layer (its busiest GPU over its mean), averaged over layers: with
        # per-layer placements the max of the layer-averaged load would hide imbalance that moves between GPUs
        "load_imbalance": float(np.mean(gpu_tokens.max(axis=1) / np.maximum(gpu_tokens.mean(axis=1), 1e-300)))
        if mean > 0
        else 1.0,
        "traffic_bytes": traffic,
        "link_level": {intra: "intra-node", **({inter: "inter-node"} if inter else {})},
        "simulate": step.to_dict(),
    }


def evaluate_scenario(scenario: Scenario, origin: str = "<scenario>") -> dict:
    """Place, simulate and summarise one resolved scenario.

    Bad inputs (a missing file, a trace of another model) raise, naming ``origin`` and the scenario. A scenario
    that cannot run as specified (weights overflow HBM, experts that do not divide over the GPUs, an ILP with no
    solution in time) is a result too: it comes back as ``{"settings", "error"}`` and the sweep goes on.
    """
    from moesim.simulate import simulate

    t0 = time.perf_counter()
    try:
        model, cluster, trace = build_inputs(scenario)
    except MoesimError as exc:
        raise type(exc)(f"{origin}: scenario {scenario.name!r}: {exc}") from None
    t1 = time.perf_counter()
    try:
        placement = build_placement(scenario, model, cluster, trace)
        t2 = time.perf_counter()
        cal = scenario_calibration(scenario, cluster)
        step = simulate(model, cluster, trace, placement, scenario.options, calibration=cal)
    except MoesimError as exc:
        return {
            "settings": scenario.settings(),
            "error": str(exc),
            "error_kind": type(exc).__name__,
            "num_gpus": int(cluster.num_gpus),
            "model": model.slug,
            "cluster": cluster.slug,
        }
    t3 = time.perf_counter()
    record = summarise(step, scenario, model, cluster)
    record["calibration"] = None if cal is None else cal.describe  # which measured fit the numbers rest on
    meta = dict(getattr(placement, "meta", {}) or {})
    record["placement_meta"] = _jsonable(meta)
    if scenario.placement != "contiguous":
        # solved placements are kept so the numbers can be reproduced with `moesim simulate --placement`
        record["placement"] = {
            "num_gpus": placement.num_gpus,
            "slots_per_gpu": placement.slots_per_gpu,
            "num_experts": placement.num_experts,
            "layers": [int(x) for x in trace.layers],
            "phy2log": np.asarray(placement.phy2log).tolist(),
            "shares": np.asarray(placement.shares).tolist(),
        }
    record["timing_s"] = {"inputs": t1 - t0, "placement": t2 - t1, "simulate": t3 - t2}
    return record


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)))


# --------------------------------------------------------------------------------------------- sweep
@dataclass
class WhatifRun:
    """The outcome of a sweep: one record per scenario (in sweep order), the baseline and the best."""

    scenario_file: ScenarioFile
    records: list[dict]
    baseline_index: int
    best_index: int
    wall_s: float
    cache_hits: int

    @property
    def baseline(self) -> dict:
        return self.records[self.baseline_index]

    @property
    def best(self) -> dict:
        return self.records[self.best_index]

    @property
    def feasible(self) -> list[dict]:
        """Records of the scenarios that ran (the others carry ``error``)."""
        return [r for r in self.records if "error" not in r]

    @property
    def objective(self) -> str:
        return self.scenario_file.objective

    def gain(self, record: dict | None = None) -> float:
        """Relative improvement of ``record`` (default: the best) over the baseline, as a fraction.

        Latency: (base - x) / base. Throughput: (x - base) / base. Positive means better than the baseline.
        """
        rec = self.best if record is None else record
        b, x = self.baseline[self.objective], rec[self.objective]
        if b == 0:
            return 0.0
        return (b - x) / b if self.scenario_file.minimize else (x - b) / b


def _worker(args: tuple[Scenario, str]) -> dict:
    scenario, origin = args
    return evaluate_scenario(scenario, origin)


def run_whatif(
    sf: ScenarioFile,
    workers: int = 1,
    use_cache: bool = True,
    on_done: Callable[[int, dict, bool], None] | None = None,
) -> WhatifRun:
    """Evaluate every scenario of ``sf``; ``on_done(index, record, cached)`` is called as each finishes.

    ``workers > 1`` runs cache misses in that many processes (fork where the platform has it: the parent's
    loaded specs are inherited, so a worker starts in milliseconds).
    """
    t0 = time.perf_counter()
    base_dir = sf.base_dir
    resolved = [sc.resolve(base_dir) for sc in sf.scenarios]
    records: list[dict | None] = [None] * len(resolved)
    keys: list[str | None] = [None] * len(resolved)
    hits = 0
    todo: list[int] = []
    for i, sc in enumerate(resolved):
        try:
            keys[i] = cache_key(sc)
        except MoesimError as exc:
            raise type(exc)(f"{sf.path}: scenario {sc.name!r}: {exc}") from None
        rec = cache_get(keys[i]) if use_cache else None
        if rec is not None:
            records[i] = rec
            hits += 1
            if on_done:
                on_done(i, rec, True)
        else:
            todo.append(i)

    def finish(i: int, rec: dict) -> None:
        records[i] = rec
        if use_cache:
            cache_put(keys[i], rec)
        if on_done:
            on_done(i, rec, False)

    if workers <= 1 or len(todo) <= 1:
        for i in todo:
            finish(i, evaluate_scenario(resolved[i], sf.path))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        prepare_traces([resolved[i] for i in todo], workers, ctx)
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as pool:
            futures = {pool.submit(_worker, (resolved[i], sf.path)): i for i in todo}
            try:
                for fut in as_completed(futures):
                    finish(futures[fut], fut.result())
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    done: list[dict] = []
    for i, (sc, rec) in enumerate(zip(sf.scenarios, records)):
        assert rec is not None
        rec = dict(rec)
        rec["name"] = sc.name  # the cache is keyed by settings, not names: a renamed scenario is a hit
        rec["settings"] = resolved[i].settings()  # and by file contents, not paths: show this run's paths
        rec["index"] = i
        rec["axis_values"] = {k: v for k, v in sc.axis_values}
        done.append(rec)
    base_rec = done[sf.baseline_index]
    if "error" in base_rec:
        raise InfeasibleError(
            f"{sf.path}: baseline: scenario {base_rec['name']!r} cannot run "
            f"({base_rec['error']}); pick a feasible baseline"
        )
    sign = 1.0 if sf.minimize else -1.0
    feasible = [i for i, r in enumerate(done) if "error" not in r]
    best = min(feasible, key=lambda i: (sign * done[i][sf.objective], i))
    for i, rec in enumerate(done):
        rec["is_baseline"] = i == sf.baseline_index
        rec["is_best"] = i == best
    return WhatifRun(sf, done, sf.baseline_index, best, time.perf_counter() - t0, hits)

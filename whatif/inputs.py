"""A what-if scenario's inputs: its model and cluster specs and its routing trace, loaded once per process.

Specs and trace files are memoised by name (``functools.lru_cache``); synthetic traces by what draws them
(:func:`synthetic_key`), in ``TRACES``. A synthetic trace has ``synthetic_tokens`` tokens per layer:
``trace_tokens``, or ``min(T * G, 2^18)`` as ``moesim simulate`` draws (T tokens per GPU, G GPUs).
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from pathlib import Path
from typing import Any

from moesim.errors import MoesimError, TraceError
from moesim.traces.synthetic import step_synthetic_tokens
from whatif.scenario import Scenario


@lru_cache(maxsize=16)
def model_spec(name: str) -> Any:
    from moesim.specs import load_model

    return load_model(name)


@lru_cache(maxsize=32)
def cluster_spec(name: str) -> Any:
    from moesim.specs import load_cluster

    return load_cluster(name)


def load_specs(model_name: str, cluster_name: str) -> tuple[Any, Any]:
    return model_spec(model_name), cluster_spec(cluster_name)


@lru_cache(maxsize=8)
def trace_file(path: str) -> Any:
    from moesim.traces.formats import load_trace

    return load_trace(path)


def subset_layers(trace: Any, layers: tuple[int, ...], origin: str) -> Any:
    """Restrict a trace to the given model layers (in the given order); transitions kept when contiguous."""
    have = list(trace.layers)
    missing = [x for x in layers if x not in have]
    if missing:
        raise TraceError(f"layers: trace {Path(origin).name} has no layer {missing[0]} (recorded: {have})")
    idx = [have.index(x) for x in layers]
    transitions = None
    if trace.transitions is not None and idx == list(range(idx[0], idx[0] + len(idx))):
        transitions = trace.transitions[idx[0] : idx[0] + len(idx) - 1]
    topk_ids = None if trace.topk_ids is None else trace.topk_ids[:, idx]
    return dataclasses.replace(
        trace, layers=tuple(layers), counts=trace.counts[idx], transitions=transitions, topk_ids=topk_ids
    )


def synthetic_tokens(scenario: Scenario, num_gpus: int) -> int:
    """Tokens per layer drawn for a synthetic trace: ``trace_tokens`` or, as ``moesim simulate`` draws,
    ``step_synthetic_tokens(tokens_per_gpu, G)`` = ``min(T * G, 2^18)``."""
    return scenario.trace_tokens or step_synthetic_tokens(scenario.options.tokens_per_gpu, num_gpus)


# Synthetic traces made in this process, by ``synthetic_key``. Drawing one for a 58-layer model takes ~0.3 s
# (DeepSeek-V3, 2^18 tokens, counts only, measured), so a parallel sweep draws each distinct trace once, in the
# pool, before forking the scenario workers (``run_whatif``), and the workers inherit them. Bounded: drawn
# without transitions or top-k ids, a DeepSeek-V3 trace is its counts, 58 x 256 int64 = 0.12 MB (measured).
TRACES: dict[tuple, Any] = {}
TRACES_MAX = 16


def synthetic_key(scenario: Scenario, num_gpus: int) -> tuple:
    return (
        scenario.model,
        scenario.synthetic_spec,
        synthetic_tokens(scenario, num_gpus),
        scenario.trace_seed,
        scenario.trace_affinity,
        scenario.layers,
    )


def make_synthetic(key: tuple) -> Any:
    from moesim.traces.synthetic import parse_synthetic, synthetic_trace

    model_name, spec, num_tokens, seed, affinity, layers = key
    params = dict(parse_synthetic(spec))
    # as `moesim simulate`: a seed or affinity written in the spec ("zipf:1.2,seed=3") wins
    params.setdefault("seed", seed)
    if affinity:
        params.setdefault("affinity", affinity)
    params["with_topk_ids"] = False  # the simulator's hot path works on per-expert counts
    params["with_transitions"] = False  # as `moesim simulate`: no placement here prices transitions
    if layers is not None:
        params["layers"] = layers
    return synthetic_trace(model_spec(model_name), num_tokens, **params)


def synthetic(key: tuple) -> Any:
    if key not in TRACES:
        if len(TRACES) >= TRACES_MAX:
            TRACES.pop(next(iter(TRACES)))
        TRACES[key] = make_synthetic(key)
    return TRACES[key]


def build_inputs(scenario: Scenario) -> tuple[Any, Any, Any]:
    """(model, cluster, trace) for a resolved scenario (paths absolute)."""
    model, cluster = load_specs(scenario.model, scenario.cluster)
    if scenario.is_synthetic:
        trace = synthetic(synthetic_key(scenario, cluster.num_gpus))
    else:
        trace = trace_file(scenario.trace)
        trace.check_model(model, scenario.trace)
        if scenario.layers is not None:
            trace = subset_layers(trace, scenario.layers, scenario.trace)
    return model, cluster, trace


def scenario_calibration(scenario: Scenario, cluster: Any) -> Any:
    """The calibration a scenario runs with (``auto``: the cluster GPU's shipped one, if any)."""
    from moesim.calibration.resolve import resolve_calibration

    return resolve_calibration(scenario.calibration, cluster.gpu.slug)


def prepare_traces(scenarios: list[Scenario], workers: int, ctx: Any) -> None:
    """Draw the distinct synthetic traces the scenarios need, in parallel, into this process's ``TRACES``.

    Done before the scenario workers fork so each trace is drawn once per sweep rather than once per worker.
    Only with fork (spawned workers would not inherit them; they draw their own).
    """
    if ctx is None or ctx.get_start_method() != "fork":
        return
    keys: list[tuple] = []
    for sc in scenarios:
        if sc.is_synthetic:
            try:
                key = synthetic_key(sc, cluster_spec(sc.cluster).num_gpus)
            except MoesimError:
                continue  # reported by the scenario itself
            if key not in TRACES and key not in keys:
                keys.append(key)
    keys = keys[:TRACES_MAX]
    if len(keys) == 1:
        keys_done = [(keys[0], try_make(keys[0]))]
    elif keys:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(workers, len(keys)), mp_context=ctx) as pool:
            keys_done = list(zip(keys, pool.map(try_make, keys)))
    else:
        keys_done = []
    for key, trace in keys_done:
        if trace is not None:
            TRACES[key] = trace


def try_make(key: tuple) -> Any:
    try:
        return make_synthetic(key)
    except MoesimError:
        return None  # the scenario's own evaluation raises it with the file and scenario named


__all__ = [
    "TRACES",
    "build_inputs",
    "cluster_spec",
    "load_specs",
    "model_spec",
    "prepare_traces",
    "scenario_calibration",
    "synthetic_key",
    "synthetic_tokens",
]

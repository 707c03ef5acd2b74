"""How fast is the simulator? DeepSeek-V3 (58 MoE layers, top-8 of 256) on 8..1024 GPUs, 1k..64k tokens/GPU.

Run on one core:

    OMP_NUM_THREADS=1 python benchmarks/bench_simulate.py

The routing comes from a counts-only synthetic trace (Zipf 1.2), generated outside the timed region. Clusters
of other sizes are the base cluster (``h100-8x8-ib400``) with its node count changed; the memory check is off
(DeepSeek-V3's 671B parameters do not fit 8 H100s; the point here is the simulator's own cost). Each cell is
the median wall time of ``simulate`` over ``--repeats`` runs. Goal (issue 3): 64 GPUs x 8k tokens/GPU, the
full 58-layer step, under 100 ms on one core, and cost growing no faster than linearly in tokens and GPUs.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy loads its BLAS

import argparse
import statistics
import time

GPUS = (8, 64, 256, 1024)
TOKENS = (1024, 8192, 65536)
GOAL_MS = 100.0
# the trace's routing distribution; its sampling noise is negligible at this size and the simulator's cost
# does not depend on it (counts only)
TRACE_TOKENS = 1 << 17


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deepseek-v3")
    parser.add_argument("--cluster", default="h100-8x8-ib400")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)

    from moesim.options import SimOptions
    from moesim.simulate import simulate
    from moesim.specs import load_cluster, load_model
    from moesim.traces.synthetic import synthetic_trace

    model = load_model(args.model)
    base = load_cluster(args.cluster)
    trace = synthetic_trace(model, TRACE_TOKENS, skew="zipf", alpha=1.2, seed=0, with_topk_ids=False)
    rows = []
    for num_gpus in GPUS:
        cluster = base.with_nodes(max(1, num_gpus // base.gpus_per_node))
        assert cluster.num_gpus == num_gpus, (cluster.num_gpus, num_gpus)
        for tokens in TOKENS:
            options = SimOptions(tokens_per_gpu=tokens, check_memory=False)
            simulate(model, cluster, trace, None, options)  # warm-up (link classes, caches)
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                step = simulate(model, cluster, trace, None, options)
                times.append(time.perf_counter() - t0)
            rows.append((num_gpus, tokens, 1e3 * statistics.median(times), step))

    print(
        f"simulate(): {model.slug}, {len(trace.layers)} MoE layers, {model.num_experts} experts, top-{model.top_k};"
        f" base cluster {base.slug}; median of {args.repeats}; OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    )
    header = (
        f"{'GPUs':>5} {'tokens/GPU':>10} {'sim ms':>8} {'ms/layer':>8} {'pred. step ms':>13} {'MoE %':>6} {'a2a %':>6}"
    )
    print(header)
    print("-" * len(header))
    for num_gpus, tokens, ms, step in rows:
        print(
            f"{num_gpus:>5} {tokens:>10} {ms:>8.2f} {ms / len(step.layers):>8.3f} {step.step_latency_us / 1e3:>13.1f}"
            f" {100 * step.moe_share:>6.1f} {100 * step.alltoall_share:>6.1f}"
        )
    by = {(g, t): ms for g, t, ms, _ in rows}
    goal = by[(64, 8192)]
    print(
        f"\ngoal: 64 GPUs x 8192 tokens/GPU full step {goal:.1f} ms < {GOAL_MS:.0f} ms: "
        f"{'PASS' if goal < GOAL_MS else 'FAIL'}"
    )
    tok_growth = max(by[(g, TOKENS[-1])] / by[(g, TOKENS[0])] for g in GPUS)
    gpu_growth = max(by[(GPUS[-1], t)] / by[(GPUS[0], t)] for t in TOKENS)
    print(
        f"cost growth: x{tok_growth:.2f} for x{TOKENS[-1] // TOKENS[0]} tokens, "
        f"x{gpu_growth:.2f} for x{GPUS[-1] // GPUS[0]} GPUs (linear would be x{TOKENS[-1] // TOKENS[0]} and "
        f"x{GPUS[-1] // GPUS[0]})"
    )
    return 0 if goal < GOAL_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""vLLM's published Mixtral fused-MoE timings (H100, TP2) against the shipped H100 calibration.

    python benchmarks/bench_published_calibrated.py

The figures (144 / 834 / 1123 us at 1 / 1024 / 1536 tokens, vllm-project/vllm PR #24700) are in
profiles/reference/published_numbers.yaml; the calibration was fitted on AIConfigurator's vLLM table, which never
saw them. Balanced routing is assumed (the PR's benchmark draws random top-2 routing).
"""

from __future__ import annotations

import yaml

from moesim.calibration.file_format import load_calibration
from moesim.calibration.resolve import shipped_calibration_path
from moesim.fused_moe import fused_moe_kernel_us
from moesim.specs import load_gpu, profiles_dir
from moesim.traces.collector_routing import local_counts


def main() -> None:
    ref = yaml.safe_load((profiles_dir() / "reference" / "published_numbers.yaml").read_text())
    row = ref["moe_kernels"]["vllm_fused_moe_h100_mixtral_tp2"]
    shape = row["shape"]
    gpu = load_gpu("h100-sxm")
    cal = load_calibration(shipped_calibration_path("h100-sxm"))
    print(f"{'tokens':>7} {'published us':>13} {'moesim us':>10} {'error':>7}")
    for tokens, published in row["latency_us"].items():
        counts = local_counts(int(tokens), shape["top_k"], shape["E"], 1, "balanced")
        t = float(
            fused_moe_kernel_us(
                gpu, counts, shape["hidden"], shape["N_intermediate_per_shard"], shape["top_k"], shape["E"],
                cal.fused_moe,
            )[0]
        )  # fmt: skip
        print(f"{tokens:>7} {published:>13.0f} {t:>10.1f} {100 * (t / published - 1):>+6.1f}%")


if __name__ == "__main__":
    main()

"""moesim's uncalibrated expert-compute model against vLLM's published H100 fused-MoE timings.

    python benchmarks/bench_compute_published.py

vLLM published its tuned Triton fused_moe times (both GEMMs) for Mixtral-8x7B at TP2 on an H100
(E=8, N=7168, K=4096, top-2; ``profiles/reference/published_numbers.yaml``, ``moe_kernels``). This prints
moesim's prediction for the same shape from the GPU profile's default efficiencies (no calibration), so the gap
that the measured calibration (issue 7) has to close is visible. Routing: M=1 hits two experts; larger M spread
evenly over the 8 experts (the published runs used random routing). Nothing here is fitted to these rows.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    from moesim.compute import fused_moe_us
    from moesim.specs import load_gpu

    ref = yaml.safe_load((REPO / "profiles" / "reference" / "published_numbers.yaml").read_text())
    row = ref["moe_kernels"]["vllm_fused_moe_h100_mixtral_tp2"]
    shape = row["shape"]
    E, N, K, k = shape["E"], shape["N_intermediate_per_shard"], shape["hidden"], shape["top_k"]
    gpu = load_gpu("h100-sxm")
    print(f"Mixtral-8x7B TP2 on {gpu.name}: E={E} N={N} K={K} top-{k}, bf16; source: {row['source']}")
    print(f"{'M':>6} {'moesim us':>10} {'vLLM us':>8} {'error':>8}")
    errors = []
    for m_str, published in sorted(row["latency_us"].items(), key=lambda kv: int(kv[0])):
        M = int(m_str)
        if M * k < E:
            per_expert = np.zeros(E)
            per_expert[: M * k] = 1.0
        else:
            per_expert = np.full(E, M * k / E)
        # BLOCK_SIZE_M (padding only): kernels.configs.default_config picks 16 at M=1 and 64 / 128 at the
        # 256 / 384 rows per expert of M=1024 / 1536; those loads are multiples of both 64 and 128, so 64 pads alike
        block_m = 16 if M * k / E <= 32 else 64
        t = float(fused_moe_us(gpu, per_expert, K, N, k, 2, block_m))
        errors.append(t / published - 1)
        print(f"{M:>6} {t:>10.1f} {published:>8.0f} {t / published - 1:>+8.1%}")
    print(f"mean absolute error {np.mean(np.abs(errors)):.1%} (uncalibrated defaults; see docs/COSTMODEL.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

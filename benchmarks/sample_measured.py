"""Write the small stratified sample of AIConfigurator's H100 rows that CI validates against.

    python benchmarks/sample_measured.py  # needs the `measured` extra; writes profiles/measured/samples/

Per fused-MoE shape: ``PER_SHAPE`` rows spread over routings, token counts, TP and EP (a seeded draw within
each (routing, TP/EP) stratum); every DeepEP LL row of two shapes; DeepEP normal rows at 8 and 24 SMs of four
shapes; NCCL all-to-all on 2/4/8 GPUs. Each record keeps its table, row index and the table's provenance.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from moesim.aiconfigurator import read_table

PER_SHAPE = 24
OUT = Path(__file__).resolve().parent.parent / "profiles" / "measured" / "samples" / "h100_sxm_sample.jsonl"


def main() -> None:
    import aiconfigurator_core

    data = Path(aiconfigurator_core.__file__).parent / "systems" / "data" / "h100_sxm"
    rng = np.random.default_rng(0)
    out: list[dict] = []

    def keep(table, recs):
        for r in recs:
            out.append({**r, "provenance": table.provenance})

    moe = read_table(data / "moe/vllm/0.24.0/moe_perf.parquet")
    shapes: dict[tuple, list[dict]] = {}
    for r in moe.records:
        shapes.setdefault((r["hidden"], r["intermediate"], r["num_experts"], r["top_k"]), []).append(r)
    for _shape, recs in sorted(shapes.items()):
        strata: dict[tuple, list[dict]] = {}
        for r in recs:
            strata.setdefault((r["distribution"], r["tp"] > 1, r["ep"] > 1), []).append(r)
        keys = sorted(strata)
        per = max(1, PER_SHAPE // len(keys))
        for k in keys:
            pick = rng.choice(len(strata[k]), size=min(per, len(strata[k])), replace=False)
            keep(moe, [strata[k][i] for i in sorted(pick)])
    ll = read_table(data / "comm/sglang/0.5.12/wideep_deepep_ll_perf.parquet")
    ll_shapes = sorted({(r["hidden"], r["top_k"], r["num_experts"]) for r in ll.records})
    keep(ll, [r for r in ll.records if (r["hidden"], r["top_k"], r["num_experts"]) in ll_shapes[::4]])
    normal = read_table(data / "comm/sglang/0.5.12/wideep_deepep_normal_perf.parquet")
    n_shapes = sorted({(r["hidden"], r["top_k"], r["num_experts"]) for r in normal.records})
    chosen = set(n_shapes[:: max(1, len(n_shapes) // 3)])
    keep(normal, [r for r in normal.records if (r["hidden"], r["top_k"], r["num_experts"]) in chosen
                  and r["num_sms"] in (8, 24)])  # fmt: skip
    nccl = read_table(data / "comm/nccl/2.29.2/nccl_perf.parquet")
    keep(nccl, [r for r in nccl.records if r["op"] == "alltoall" and r["dtype"] == "half"])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in out), encoding="utf-8")
    os.replace(tmp, OUT)
    kinds: dict[str, int] = {}
    for r in out:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    print(f"wrote {OUT} ({len(out)} records: {kinds})")


if __name__ == "__main__":
    main()

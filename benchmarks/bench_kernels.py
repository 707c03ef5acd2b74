"""Benchmark the Triton fused-MoE kernel on the GPU against vLLM's published H100 timings and the roofline.

    PYTHONPATH=. python benchmarks/bench_kernels.py --device-runs [--out DIR] [--quick]

For Mixtral-8x7B at TP2 (E=8, N=7168, K=4096, top-2) and Qwen3-30B-A3B at TP2 (E=128, N=384, K=2048, top-8),
bf16, across M in {1, 16, 64, 256, 1024, 4096} (plus 1536 for Mixtral, where vLLM publishes a number), it
times: our kernel with vLLM's shipped config for the shape (``E=..,N=..,device_name=<this GPU>.json``, nearest
M), our kernel with ``kernels.configs.default_config``, and the torch reference (loop over experts, bf16).

Method: CUDA graphs of R launches, each on its own routing (uniform random top-k, softmax of random logits as
weights, seeded), replayed ``repeats`` times; the median per call in microseconds. The torch reference has host
syncs (a graph cannot capture it) and is timed eagerly with CUDA events. Before timing, each shape is checked
against a float32 torch reference on the GPU; a config whose relative error exceeds 2e-2 is not timed.

Roofline: the two ceilings are measured at start on this GPU (a 1 GiB device-to-device copy, read + write bytes;
an 8192^3 bf16 matmul), and each kernel's time is set beside max(FLOPs / peak, bytes / bandwidth) with FLOPs =
6*M*k*N*K and bytes = weights of the experts hit + activations (kernels.fused_moe.moe_bytes).

Output: a rich table and JSON lines (schema 1, docs/ARCHITECTURE.md "Measured profiles") written to
``profiles/measured/<device_name>/bench_kernels.jsonl`` (or ``--out DIR``), rewritten atomically after each
shape so a cut-off run keeps what it measured. Exit 2 without CUDA.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHAPES = {
    "mixtral_tp2": {
        "E": 8,
        "N": 7168,
        "K": 4096,
        "top_k": 2,
        "Ms": [1, 16, 64, 256, 1024, 1536, 4096],
        "published": "vllm_fused_moe_h100_mixtral_tp2",
    },
    "qwen3_30b_a3b_tp2": {
        "E": 128,
        "N": 384,
        "K": 2048,
        "top_k": 8,
        "Ms": [1, 16, 64, 256, 1024, 4096],
        "published": None,
    },
}
KERNEL_DTYPE = "bfloat16"  # fp16 in the CPU dry run: the interpreter's bf16 tl.dot is wrong
DEV = "cuda"  # "cpu" only for --cpu-dry-run (the interpreter, tiny shapes, wall-clock timing)
CHECK_TOL = 2e-2  # bf16 relative error bound (8 mantissa bits, K up to 7168 terms accumulated in fp32)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def published_latencies(key: str | None) -> dict[int, float]:
    """{M: us} from profiles/reference/published_numbers.yaml (moe_kernels.<key>.latency_us), {} if absent."""
    if key is None:
        return {}
    candidates = [REPO / "profiles" / "reference" / "published_numbers.yaml"]
    for path in candidates:
        if not path.is_file():
            continue
        text = path.read_text()
        try:
            import yaml

            entry = yaml.safe_load(text)["moe_kernels"][key]
            return {int(m): float(v) for m, v in entry["latency_us"].items()}
        except ImportError:
            # no PyYAML on the device host: read the one flow mapping we need
            m = re.search(rf"{key}:.*?latency_us:\s*\{{([^}}]*)\}}", text, re.DOTALL)
            if m:
                pairs = re.findall(r'"?(\d+)"?\s*:\s*([\d.]+)', m.group(1))
                return {int(a): float(b) for a, b in pairs}
    return {}


def empty_cache() -> None:
    import torch

    if DEV == "cuda":
        torch.cuda.empty_cache()


def measure_ceilings(torch, time_cuda_graph, small: bool = False) -> tuple[float, float]:
    """(copy GB/s counting read+write, bf16 matmul TFLOP/s) measured on this GPU."""
    n = 1 << (20 if small else 29)  # 1 GiB of bf16 (far above the 50 MB L2)
    src = torch.empty(n, dtype=torch.bfloat16, device=DEV).normal_()
    dst = torch.empty_like(src)
    us = time_cuda_graph(lambda: dst.copy_(src), warmup=3, repeats=10, launches=5)
    gbs = 2 * src.numel() * 2 / (us * 1e-6) / 1e9
    s = 256 if small else 8192
    a = torch.randn(s, s, dtype=torch.bfloat16, device=DEV)
    b = torch.randn(s, s, dtype=torch.bfloat16, device=DEV)
    c = torch.empty(s, s, dtype=torch.bfloat16, device=DEV)
    us = time_cuda_graph(lambda: torch.matmul(a, b, out=c), warmup=3, repeats=10, launches=5)
    tflops = 2 * s**3 / (us * 1e-6) / 1e12
    return gbs, tflops


def make_routings(torch, M: int, E: int, top_k: int, count: int, seed: int):
    """``count`` routings: uniform random top-k experts per token, softmax(random logits) weights."""
    gen = torch.Generator(device=DEV).manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.rand(M, E, device=DEV, generator=gen).topk(top_k, dim=1).indices.to(torch.int32)
        w = torch.softmax(torch.randn(M, top_k, device=DEV, generator=gen), dim=1)
        out.append((ids, w))
    return out


def write_jsonl(path: Path, records: list[dict]) -> None:
    from moesim.fileio import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def print_plan(shapes: dict) -> None:
    print("bench_kernels: would run (pass --device-runs on a CUDA machine):")
    for name, s in shapes.items():
        print(
            f"  {name}: E={s['E']} N={s['N']} K={s['K']} top-{s['top_k']} bf16, M in {s['Ms']}: "
            "vLLM shipped config, default config, torch reference"
        )


def run(args: argparse.Namespace, dry: bool = False) -> int:
    import torch

    if not dry and not torch.cuda.is_available():
        print(
            "bench_kernels: --device-runs needs a CUDA GPU and none is visible (torch.cuda.is_available() is False)",
            file=sys.stderr,
        )
        return 2
    from kernels import configs, fused_moe, reference_moe
    from kernels.align import moe_align_block_size
    from kernels.fused_moe import moe_bytes, moe_flops
    from kernels.timing import time_cuda_events, time_cuda_graph, versions

    t_start = time.time()
    dev_name = "DRY_RUN_CPU" if dry else configs.device_name()
    ver = versions()
    if configs.reference_dir() is None:
        log(
            "WARNING: no folder of vLLM configs found (profiles/vllm_configs or MOESIM_VLLM_CONFIG_DIR): "
            "the vLLM-config rows will be missing"
        )
    log(
        f"device {'none (dry run)' if dry else torch.cuda.get_device_name()} ({dev_name}), "
        f"driver {ver['driver']}, CUDA {ver['cuda']}, "
        f"torch {ver['torch']}, triton {ver['triton']}; vLLM configs from {configs.reference_dir()}"
    )
    out_dir = Path(args.out) if args.out else REPO / "profiles" / "measured" / dev_name
    out_path = out_dir / "bench_kernels.jsonl"
    base = {
        "schema": 1,
        "device_name": dev_name,
        **ver,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "dtype": {"bfloat16": "bf16", "float16": "fp16"}[KERNEL_DTYPE],
    }
    records: list[dict] = []

    bw_gbs, peak_tflops = measure_ceilings(torch, time_cuda_graph, small=dry)
    empty_cache()
    log(f"ceilings: copy {bw_gbs:.0f} GB/s (read+write), bf16 matmul 8192^3 {peak_tflops:.0f} TFLOP/s")
    records.append(
        {
            **base,
            "kind": "copy",
            "nbytes": 2 * (1 << 30),
            "gb_s": bw_gbs,
            "repeats": 10,
            "median_us": 2 * (1 << 30) / (bw_gbs * 1e9) * 1e6,
            "config": {},
        }
    )
    records.append(
        {
            **base,
            "kind": "matmul",
            "M": 8192,
            "N": 8192,
            "K": 8192,
            "tflops": peak_tflops,
            "repeats": 10,
            "median_us": 2 * 8192**3 / (peak_tflops * 1e12) * 1e6,
            "config": {},
        }
    )
    write_jsonl(out_path, records)

    rows = []
    shapes = {k: v for k, v in SHAPES.items() if k in args.shapes}
    for name, s in shapes.items():
        E, N, K, top_k = s["E"], s["N"], s["K"], s["top_k"]
        Ms = s["Ms"][:3] if args.quick else s["Ms"]
        published = published_latencies(s["published"])
        shipped = configs.shipped_configs(E, N, dev_name)
        if dry and E == 8:  # exercise the shipped-config path with the real Mixtral file
            shipped = configs.shipped_configs(8, 7168, "NVIDIA_H100_80GB_HBM3")
        shipped_label = configs.config_file_name(E, N, dev_name) if shipped else None
        if shipped is None:
            log(
                f"{name}: no shipped vLLM file {configs.config_file_name(E, N, dev_name)} for this device; "
                "timing the default config only"
            )
        log(
            f"{name}: E={E} N={N} K={K} top-{top_k}: allocating {KERNEL_DTYPE} weights "
            f"({(3 * E * N * K * 2) / 2**30:.2f} GiB)"
        )
        gen = torch.Generator(device=DEV).manual_seed(1234)
        w1 = torch.randn(E, 2 * N, K, device=DEV, generator=gen, dtype=getattr(torch, KERNEL_DTYPE)) / K**0.5
        w2 = torch.randn(E, K, N, device=DEV, generator=gen, dtype=getattr(torch, KERNEL_DTYPE)) / N**0.5

        # --- correctness gate: bf16 kernel vs float32 reference, both configs, odd M --------------------------
        align_method = None
        wrong: set[str] = set()
        w1f, w2f = w1.float(), w2.float()
        for m_chk in (1, 333):
            h = torch.randn(m_chk, K, device=DEV, generator=gen).to(getattr(torch, KERNEL_DTYPE))
            ((ids, w),) = make_routings(torch, m_chk, E, top_k, 1, seed=99 + m_chk)
            for bm in (16, 64):
                a = moe_align_block_size(ids, bm, E, method="triton")
                b = moe_align_block_size(ids, bm, E, method="torch")
                if not all(torch.equal(x, y) for x, y in zip(a, b)):
                    log(
                        f"{name}: WARNING Triton align differs from torch align (M={m_chk}, B={bm}); "
                        "using the torch align for this shape"
                    )
                    align_method = "torch"
            ref = reference_moe(h.float(), w1f, w2f, w, ids)
            cands = [("default", configs.default_config(m_chk, E, N, K, top_k))]
            if shipped:
                cands.append(("vllm", configs.pick_config(shipped, m_chk)))
            for label, cfg in cands:
                out = fused_moe(h, w1, w2, w, ids, config=cfg, align_method=align_method)
                err = float((out.float() - ref).norm() / ref.norm())
                ok = err < CHECK_TOL and bool(torch.isfinite(out).all())
                log(f"{name}: check M={m_chk} {label} config {cfg}: rel_err {err:.2e} {'OK' if ok else 'WRONG'}")
                if not ok:
                    wrong.add(label)
        w1f = w2f = ref = None  # free the fp32 copies before timing
        empty_cache()

        for M in Ms:
            R = args.launches
            routings = make_routings(torch, M, E, top_k, R, seed=M * 7919 + E)
            h = torch.randn(M, K, device=DEV, generator=gen).to(getattr(torch, KERNEL_DTYPE))
            hit = sum(int(torch.unique(ids).numel()) for ids, _ in routings) / R
            tpe = torch.bincount(routings[0][0].reshape(-1).long(), minlength=E).tolist()
            flops = moe_flops(M, N, K, top_k)
            nbytes = moe_bytes(M, N, K, top_k, experts_hit=round(hit))
            roof_us = max(flops / (peak_tflops * 1e12), nbytes / (bw_gbs * 1e9)) * 1e6
            impls = []
            if shipped and "vllm" not in wrong:
                impls.append(("ours+vllm_cfg", f"vllm:{shipped_label}", configs.pick_config(shipped, M)))
            if "default" not in wrong:
                impls.append(("ours+default", "default", configs.default_config(M, E, N, K, top_k)))
            impls.append(("torch_ref", "torch", None))
            # the align step alone (Triton vs torch), at the row block of the first kernel config
            bm = impls[0][2]["BLOCK_SIZE_M"] if impls[0][2] else 64
            for method in ("triton", "torch"):
                if method == "triton" and align_method == "torch":
                    continue
                cyc_a = itertools.cycle(routings)
                us_a = time_cuda_graph(
                    lambda cyc_a=cyc_a, method=method, bm=bm, E=E: moe_align_block_size(
                        next(cyc_a)[0], bm, E, method=method
                    ),
                    warmup=3,
                    repeats=args.repeats,
                    launches=R,
                )
                records.append(
                    {
                        **base,
                        "kind": "align",
                        "impl": method,
                        "E": E,
                        "M": M,
                        "top_k": top_k,
                        "routing": "uniform",
                        "config": {"BLOCK_SIZE_M": bm},
                        "median_us": us_a,
                        "repeats": args.repeats,
                        "launches_per_graph": R,
                    }
                )
                log(f"{name} M={M:5d} align[{method}] B={bm}: {us_a:.1f} us")
            for impl, source, cfg in impls:
                cyc = itertools.cycle(routings)
                if cfg is not None:

                    def fn(cfg=cfg, cyc=cyc, h=h, w1=w1, w2=w2, am=align_method):
                        ids, w = next(cyc)
                        return fused_moe(h, w1, w2, w, ids, config=cfg, align_method=am)

                    try:
                        us = time_cuda_graph(fn, warmup=3, repeats=args.repeats, launches=R)
                    except Exception as exc:  # noqa: BLE001 - a config that fails to compile/launch is reported
                        log(f"{name} M={M} {impl}: FAILED {type(exc).__name__}: {str(exc)[:200]}")
                        continue
                    reps = args.repeats
                else:

                    def fn(cyc=cyc, h=h, w1=w1, w2=w2):
                        ids, w = next(cyc)
                        return reference_moe(h, w1, w2, w, ids)

                    reps = max(3, args.repeats // 3)
                    us = time_cuda_events(fn, warmup=1, repeats=reps)
                tflops = flops / (us * 1e-6) / 1e12
                gbs = nbytes / (us * 1e-6) / 1e9
                pub = published.get(M)
                rows.append((name, M, impl, us, tflops, gbs, roof_us / us, pub, cfg))
                records.append(
                    {
                        **base,
                        "kind": "fused_moe",
                        "impl": impl,
                        "config_source": source,
                        "E": E,
                        "N": N,
                        "K": K,
                        "M": M,
                        "top_k": top_k,
                        "routing": "uniform",
                        "config": cfg or {},
                        "median_us": us,
                        "repeats": reps,
                        "launches_per_graph": R,
                        "timing": "cuda_graph" if cfg is not None else "cuda_events",
                        "tflops": tflops,
                        "gb_s": gbs,
                        "roofline_us": roof_us,
                        "experts_hit_mean": hit,
                        "tokens_per_expert": tpe,
                        "published_vllm_us": pub,
                    }
                )
                log(
                    f"{name} M={M:5d} {impl:14s} {us:10.1f} us  {tflops:7.1f} TFLOP/s  {gbs:7.0f} GB/s  "
                    f"roofline {roof_us:8.1f} us" + (f"  vLLM published {pub:g} us" if pub else "")
                )
            write_jsonl(out_path, records)
        w1 = w2 = h = routings = None
        empty_cache()

    print_table(rows, dev_name, bw_gbs, peak_tflops)
    for n, m, impl, us, _, _, _, pub, _ in rows:
        if pub and impl.startswith("ours"):
            print(
                f"{n} M={m}: {impl} {us:.0f} us vs vLLM published {pub:g} us (H100, its own kernel): {pub / us:.2f}x",
                flush=True,
            )
    log(f"wrote {len(records)} records to {out_path}; total {time.time() - t_start:.0f} s")
    return 0


def dry_run(args: argparse.Namespace) -> int:
    """Exercise every code path of ``run`` on the CPU (Triton interpreter, tiny shapes, perf_counter timing), so a
    Python error never costs a GPU session. Numbers from it mean nothing."""
    global DEV, KERNEL_DTYPE
    import statistics

    os.environ.setdefault("TRITON_INTERPRET", "1")
    DEV = "cpu"
    KERNEL_DTYPE = "float16"
    from kernels import timing

    def fake(fn, warmup=1, repeats=3, launches=1):
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(launches):
                fn()
            samples.append((time.perf_counter() - t0) * 1e6 / launches)
        return statistics.median(samples)

    timing.time_cuda_graph = fake
    timing.time_cuda_events = lambda fn, warmup=1, repeats=3: fake(fn, warmup, repeats)
    SHAPES.clear()
    SHAPES.update(
        {
            "tiny_e8": {
                "E": 8,
                "N": 7168 // 112,
                "K": 64,
                "top_k": 2,
                "Ms": [1, 16],
                "published": "vllm_fused_moe_h100_mixtral_tp2",
            },
            "tiny_e128": {"E": 128, "N": 32, "K": 32, "top_k": 8, "Ms": [3], "published": None},
        }
    )
    args.shapes = list(SHAPES)
    args.launches, args.repeats = 2, 2
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="bench_kernels_dry_")
    return run(args, dry=True)


def print_table(rows, dev_name: str, bw_gbs: float, peak_tflops: float) -> None:
    title = (
        f"fused MoE {KERNEL_DTYPE} on {dev_name} (ceilings measured: {bw_gbs:.0f} GB/s copy, "
        f"{peak_tflops:.0f} TFLOP/s matmul)"
    )
    header = ["shape", "M", "impl", "median us", "TFLOP/s", "GB/s", "% roofline", "vLLM published us"]
    body = [
        [n, str(m), i, f"{us:.1f}", f"{tf:.1f}", f"{gb:.0f}", f"{100 * frac:.0f}%", f"{pub:g}" if pub else ""]
        for n, m, i, us, tf, gb, frac, pub, _ in rows
    ]
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for h in header:
            table.add_column(h, justify="left" if h in ("shape", "impl") else "right")
        for r in body:
            table.add_row(*r)
        Console(width=140).print(table)
    except ImportError:
        print(title)
        print(" | ".join(header))
        for r in body:
            print(" | ".join(r))
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="example: PYTHONPATH=. python benchmarks/bench_kernels.py --device-runs",
    )
    p.add_argument("--device-runs", action="store_true", help="run on the GPU (otherwise print the plan)")
    p.add_argument("--out", default=None, help="output folder (default profiles/measured/<device_name>/)")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--repeats", type=int, default=15, help="graph replays per measurement (median)")
    p.add_argument("--launches", type=int, default=8, help="launches (distinct routings) per CUDA graph")
    p.add_argument("--quick", action="store_true", help="first three batch sizes only")
    p.add_argument(
        "--cpu-dry-run",
        action="store_true",
        help="developers: run every code path on the CPU with tiny shapes (no meaningful numbers)",
    )
    args = p.parse_args(argv)
    if args.cpu_dry_run:
        return dry_run(args)
    if not args.device_runs:
        print_plan({k: v for k, v in SHAPES.items() if k in args.shapes})
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

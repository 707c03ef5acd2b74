"""``python -m kernels.selfcheck``: a one-minute GPU smoke test of the kernels package.

Prints the versions (torch, triton, CUDA, driver), the device, then the relative error of ``fused_moe`` against
a float32 torch reference for bf16 and fp16 on a small Mixtral-like layer, checks that the Triton align matches
the torch align, and that a CUDA graph of the kernel replays to the same result. Exit 0 when all pass, 1 when
one fails, 2 without CUDA.
"""

from __future__ import annotations

import sys


def _rel(out, ref) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def main() -> int:
    import torch
    import triton

    from kernels import configs, fused_moe, moe_align_block_size, reference_moe

    print(f"torch {torch.__version__}  triton {triton.__version__}  cuda {torch.version.cuda}", flush=True)
    if not torch.cuda.is_available():
        print("kernels.selfcheck: no CUDA device visible; nothing to check (CPU tests: pytest tests/kernels)")
        return 2
    print(
        f"device {torch.cuda.get_device_name()} -> config name {configs.device_name()}; "
        f"shipped vLLM configs at {configs.reference_dir()}",
        flush=True,
    )
    ok = True
    gen = torch.Generator(device="cuda").manual_seed(0)
    dev = "cuda"
    E, N, K, k = 8, 512, 1024, 2
    for dtype, tol in ((torch.bfloat16, 2e-2), (torch.float16, 5e-3)):
        for M in (1, 100, 1000):
            h = torch.randn(M, K, device=dev, generator=gen).to(dtype)
            w1 = (torch.randn(E, 2 * N, K, device=dev, generator=gen) / K**0.5).to(dtype)
            w2 = (torch.randn(E, K, N, device=dev, generator=gen) / N**0.5).to(dtype)
            ids = torch.rand(M, E, device=dev, generator=gen).topk(k, dim=1).indices.to(torch.int32)
            w = torch.softmax(torch.randn(M, k, device=dev, generator=gen), dim=1)
            a = moe_align_block_size(ids, 16, E, method="triton")
            b = moe_align_block_size(ids, 16, E, method="torch")
            align_ok = all(torch.equal(x, y) for x, y in zip(a, b))
            ref = reference_moe(h.float(), w1.float(), w2.float(), w, ids)
            for label, cfg in (
                ("default", configs.default_config(M, E, N, K, k)),
                (
                    "vllm E=8,N=7168",
                    configs.pick_config(
                        configs.shipped_configs(8, 7168, "NVIDIA_H100_80GB_HBM3")
                        or {1: configs.default_config(M, E, N, K, k)},
                        M,
                    ),
                ),
            ):
                out = fused_moe(h, w1, w2, w, ids, config=cfg)
                torch.cuda.synchronize()
                err = _rel(out, ref)
                good = err < tol and bool(torch.isfinite(out).all()) and align_ok
                ok &= good
                print(
                    f"{dtype!s:15s} M={M:5d} {label:16s} rel_err={err:.2e} (tol {tol:g}) "
                    f"align_triton==torch={align_ok} {'OK' if good else 'FAIL'}",
                    flush=True,
                )
    # CUDA graph capture of the whole call (no host sync inside)
    from kernels.timing import time_cuda_graph

    M = 256
    h = torch.randn(M, K, device=dev, generator=gen).to(torch.bfloat16)
    w1 = (torch.randn(E, 2 * N, K, device=dev, generator=gen) / K**0.5).to(torch.bfloat16)
    w2 = (torch.randn(E, K, N, device=dev, generator=gen) / N**0.5).to(torch.bfloat16)
    ids = torch.rand(M, E, device=dev, generator=gen).topk(k, dim=1).indices.to(torch.int32)
    w = torch.softmax(torch.randn(M, k, device=dev, generator=gen), dim=1)
    eager = fused_moe(h, w1, w2, w, ids)
    holder = {}

    def call() -> None:
        holder["out"] = fused_moe(h, w1, w2, w, ids)

    us = time_cuda_graph(call, warmup=2, repeats=5, launches=1)
    torch.cuda.synchronize()
    same = _rel(holder["out"], eager) < 1e-6
    ok &= same
    print(f"cuda graph: replay matches eager={same}; {us:.1f} us/call (E={E} N={N} K={K} M={M} bf16)", flush=True)
    print("selfcheck:", "PASS" if ok else "FAIL", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

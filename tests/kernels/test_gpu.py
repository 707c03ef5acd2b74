"""GPU tests (marker ``gpu``; skipped without CUDA): bf16 and fp16 fused_moe against a float64 reference.

python -m pytest tests/kernels/test_gpu.py -m gpu -q
"""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
        reason="needs a CUDA GPU (native Triton, not the interpreter)",
    ),
]

# bf16 keeps 8 mantissa bits (unit roundoff 2^-9 ~ 2e-3): inputs, act and outputs are each rounded once, so a
# relative error of a few 1e-3 is expected; fp16 has 11 bits (~5e-4 per rounding).
TOL = {torch.bfloat16: 1.5e-2, torch.float16: 3e-3}


def _case(M, E, N, K, k, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    h = torch.randn(M, K, device="cuda", generator=g).to(dtype)
    w1 = (torch.randn(E, 2 * N, K, device="cuda", generator=g) / K**0.5).to(dtype)
    w2 = (torch.randn(E, K, N, device="cuda", generator=g) / N**0.5).to(dtype)
    ids = torch.rand(M, E, device="cuda", generator=g).topk(k, dim=1).indices.to(torch.int32)
    w = torch.softmax(torch.randn(M, k, device="cuda", generator=g), dim=1)
    return h, w1, w2, w, ids


def _rel(out, ref):
    return float((out.double() - ref).norm() / ref.norm().clamp_min(1e-300))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(
    "M,E,N,K,k",
    [
        (1, 8, 256, 512, 2),
        (333, 8, 384, 1024, 2),
        (1000, 64, 128, 256, 8),
        (77, 256, 64, 128, 8),
        (2048, 1, 96, 160, 1),
    ],
)
def test_fused_moe_gpu_matches_float64(dtype, M, E, N, K, k):
    from kernels import configs, fused_moe, reference_moe

    h, w1, w2, w, ids = _case(M, E, N, K, k, dtype, seed=M * 31 + E)
    ref = reference_moe(h.double(), w1.double(), w2.double(), w.double(), ids)
    cfgs = [
        configs.default_config(M, E, N, K, k),
        {
            "BLOCK_SIZE_M": 64,
            "BLOCK_SIZE_N": 128,
            "BLOCK_SIZE_K": 64,
            "GROUP_SIZE_M": 8,
            "num_warps": 4,
            "num_stages": 3,
        },
    ]
    for cfg in cfgs:
        out = fused_moe(h, w1, w2, w, ids, config=cfg)
        torch.cuda.synchronize()
        assert torch.isfinite(out).all()
        assert _rel(out, ref) < TOL[dtype], cfg


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_expert_map_and_capacity_gpu(dtype):
    from kernels import fused_moe, reference_moe

    M, E, N, K, k = 300, 16, 128, 256, 4
    h, w1, w2, w, ids = _case(M, E, N, K, k, dtype, seed=5)
    emap = torch.full((E,), -1, dtype=torch.int32, device="cuda")
    held = torch.tensor([0, 3, 4, 9, 15], device="cuda")
    emap[held] = torch.arange(held.numel(), dtype=torch.int32, device="cuda")
    w1l, w2l = w1[held].contiguous(), w2[held].contiguous()
    ref = reference_moe(h.double(), w1l.double(), w2l.double(), w.double(), ids, expert_map=emap)
    out = fused_moe(h, w1l, w2l, w, ids, expert_map=emap)
    assert _rel(out, ref) < TOL[dtype]
    for policy in ("probs", "position", "reroute"):
        egpu = torch.arange(E, device="cuda") // 4 if policy == "reroute" else None
        kw = {"capacity": 40, "drop_policy": policy, "expert_gpu": egpu}
        ref = reference_moe(h.double(), w1.double(), w2.double(), w.double(), ids, **kw)
        out = fused_moe(h, w1, w2, w, ids, **kw)
        assert _rel(out, ref) < TOL[dtype], policy


def test_align_triton_matches_torch_gpu():
    from kernels.align import moe_align_block_size

    g = torch.Generator(device="cuda").manual_seed(3)
    for M, E, k, B in [(1, 8, 2, 16), (4096, 128, 8, 64), (1536, 8, 2, 128), (999, 256, 8, 16), (5, 1, 1, 32)]:
        ids = torch.rand(M, E, device="cuda", generator=g).topk(k, dim=1).indices.to(torch.int32)
        a = moe_align_block_size(ids, B, E, method="triton")
        b = moe_align_block_size(ids, B, E, method="torch")
        assert all(torch.equal(x, y) for x, y in zip(a, b)), (M, E, k, B)


def test_shipped_configs_compile_and_run_gpu():
    """The largest-M config of every shipped H100/H200 file (the largest tiles, so the most shared memory:
    13 distinct ones) compiles and is correct on a small bf16 shape (all 233 distinct ones would take minutes;
    the small-M ones of the benchmark shapes run in benchmarks/bench_kernels.py and kernels.selfcheck)."""
    from kernels import configs, fused_moe, reference_moe

    folder = configs.reference_dir()
    if folder is None:
        pytest.skip("no vLLM config folder (profiles/vllm_configs or MOESIM_VLLM_CONFIG_DIR)")
    distinct = {tuple(sorted(f[m].items())) for f in configs.load_configs(folder).values() for m in (max(f),)}
    M, E, N, K, k = 200, 8, 256, 512, 2
    h, w1, w2, w, ids = _case(M, E, N, K, k, torch.bfloat16, seed=11)
    ref = reference_moe(h.double(), w1.double(), w2.double(), w.double(), ids)
    for items in sorted(distinct):
        cfg = dict(items)
        out = fused_moe(h, w1, w2, w, ids, config=cfg)
        assert _rel(out, ref) < TOL[torch.bfloat16], cfg


def test_cuda_graph_capture_matches_eager():
    from kernels import fused_moe

    h, w1, w2, w, ids = _case(256, 8, 256, 512, 2, torch.bfloat16, seed=2)
    eager = fused_moe(h, w1, w2, w, ids)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fused_moe(h, w1, w2, w, ids)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fused_moe(h, w1, w2, w, ids)
    # the graph must read the new inputs, not a baked-in routing: roll tokens, routing and weights together
    for t in (h, ids, w):
        t.copy_(torch.roll(t, 1, dims=0))
    graph.replay()
    torch.cuda.synchronize()
    assert _rel(out, torch.roll(eager, 1, dims=0).double()) < 1e-3

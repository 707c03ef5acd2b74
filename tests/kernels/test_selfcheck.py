"""kernels.selfcheck: the relative-error helper by hand, the no-CUDA path (versions line, message, exit 2, in process
and as ``python -m kernels.selfcheck``), and on a GPU (marker ``gpu``) PASS, and FAIL when the kernel is wrong."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton

import kernels
from kernels import selfcheck

ROOT = Path(__file__).resolve().parents[2]
needs_gpu = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
        reason="needs a CUDA GPU (native Triton)",
    ),
]


def test_rel_by_hand() -> None:
    ref = torch.tensor([3.0, 4.0])  # norm 5
    assert selfcheck._rel(ref.clone(), ref) == 0.0
    assert selfcheck._rel(torch.zeros(2), ref) == pytest.approx(1.0)
    assert selfcheck._rel(torch.tensor([3.0, 1.0]), ref) == pytest.approx(3.0 / 5.0)  # |(0, -3)| / 5
    assert selfcheck._rel(torch.tensor([6.0, 8.0], dtype=torch.float16), ref) == pytest.approx(1.0)
    assert isinstance(selfcheck._rel(ref, ref), float)


def test_rel_of_a_zero_reference_is_clamped_not_nan() -> None:
    zero = torch.zeros(3)
    assert selfcheck._rel(zero, zero) == 0.0
    # ||(1e-30, 0, 0)|| / clamp(0, 1e-30) = 1
    assert selfcheck._rel(torch.tensor([1e-30, 0.0, 0.0], dtype=torch.float64), zero) == pytest.approx(1.0)


def test_main_without_cuda_prints_versions_and_returns_2(monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert selfcheck.main() == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"torch {torch.__version__}  triton {triton.__version__}  cuda {torch.version.cuda}"
    assert lines[1] == ("kernels.selfcheck: no CUDA device visible; nothing to check (CPU tests: pytest tests/kernels)")
    assert len(lines) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_module_entry_point_exits_2_without_cuda() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kernels.selfcheck"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.startswith(f"torch {torch.__version__}  triton {triton.__version__}")
    assert "no CUDA device visible" in proc.stdout


def _gpu_test(fn):
    for mark in needs_gpu:
        fn = mark(fn)
    return fn


@_gpu_test
def test_passes_on_a_gpu(capsys) -> None:
    assert selfcheck.main() == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("selfcheck: PASS")
    assert out.count(" OK") == 12 and "FAIL" not in out  # 2 dtypes x 3 M x 2 configs
    assert "cuda graph: replay matches eager=True" in out


@_gpu_test
def test_fails_when_the_kernel_is_wrong(monkeypatch, capsys) -> None:
    real = kernels.fused_moe
    monkeypatch.setattr(kernels, "fused_moe", lambda *a, **kw: 1.1 * real(*a, **kw))  # 10% off
    assert selfcheck.main() == 1
    out = capsys.readouterr().out
    assert out.rstrip().endswith("selfcheck: FAIL") and out.count(" FAIL") >= 12

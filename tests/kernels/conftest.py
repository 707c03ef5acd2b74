"""Kernel tests run the Triton kernels in the interpreter on the CPU (TRITON_INTERPRET=1, set here before anything
imports triton) and natively on a CUDA GPU when one is visible."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"


@pytest.fixture
def device() -> str:
    return DEVICE

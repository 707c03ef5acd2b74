"""What the kernel is timed on: the backend's availability, the device's name, its shared-memory limit, and
the GPUs visible to worker processes."""

from __future__ import annotations

import os

from moesim.errors import HardwareError
from tuner.autotune import space
from tuner.autotune.kernel.spec import KernelTuneSpec


def check_backend(backend: str) -> None:
    """HardwareError unless the backend (a ``KernelTuneSpec.backend``) can run here: CUDA present, or the Triton
    interpreter requested (which sets ``TRITON_INTERPRET=1``, before triton is first imported)."""
    if backend == "interpret":
        # Must be set before triton is first imported in this process.
        os.environ["TRITON_INTERPRET"] = "1"
        return
    try:
        import torch
    except ImportError as exc:
        raise HardwareError("autotune kernel: torch is not installed (pip install 'moesim[kernels]')") from exc
    if not torch.cuda.is_available():
        raise HardwareError(
            "autotune kernel: no CUDA GPU visible (torch.cuda.is_available() is False); timing needs a GPU. "
            "Use --backend interpret for a functional run of the loop on tiny shapes (not for timing)"
        )


def device_label(backend: str) -> str:
    """The device name used in study names and output files (vLLM spelling, spaces as underscores). The
    interpreter runs on the CPU: ``cpu``, the name :func:`kernels.configs.device_name` (and vLLM) looks up there."""
    if backend == "interpret":
        from moesim.vllm_configs import CPU_DEVICE_NAME  # not kernels: triton must not load before TRITON_INTERPRET

        return CPU_DEVICE_NAME
    from kernels.configs import device_name

    return device_name()


def smem_limit(spec: KernelTuneSpec) -> tuple[float, str]:
    """The per-block shared-memory limit (KB) to filter configs with, and where it came from: the ``gpu``
    profile, else the CUDA device's profile or its own properties, else the default profile."""
    if spec.gpu:
        return space.smem_limit_kb_for(spec.gpu)
    if spec.backend == "cuda":
        import torch

        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        slug = space.gpu_slug_for_device(props.name)
        if slug:
            try:
                return space.smem_limit_kb_for(slug)
            except Exception:  # a malformed or half-written profile must not block tuning
                pass
        return space.smem_limit_kb_for(None, props)
    return space.smem_limit_kb_for(None)


def visible_gpus() -> list[str]:
    """GPU ids from CUDA_VISIBLE_DEVICES, else 0..count-1 from torch (no CUDA init if the variable is set)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []

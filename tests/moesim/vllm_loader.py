"""vLLM's own fused-MoE config functions, run on a CPU from the installed wheel (the README's test command
installs ``vllm==0.33.0`` with ``--no-deps``).

``vllm/model_executor/layers/fused_moe/fused_moe.py`` does not import here: it pulls in vLLM's compiled ops and
dependency tree (psutil, zmq, ...). The functions that choose a config need none of that, so their definitions
are compiled from that file of the wheel (vLLM's text, not a copy) and run in a namespace that binds the names
they use to vLLM's own modules: ``vllm.envs``, ``get_device_name_as_file_name`` (``vllm/utils/platform_utils.py``),
``next_power_of_2`` and ``vllm.platforms.current_platform``. Two stand-ins: ``logger`` (vLLM's ``info_once(...,
scope="global")`` asks ``vllm.distributed`` for the rank, which needs psutil) records the messages instead; and the
package ``vllm.model_executor.layers.fused_moe`` (its ``__init__`` imports every MoE backend), which
``try_get_optimal_moe_config`` imports ``get_config`` from, is a module holding that ``__init__``'s own
``get_config`` and ``_config``, in ``sys.modules`` only while the functions run.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata
import json
import os
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

VLLM_VERSION = "0.33.0"
FUSED_MOE = "vllm/model_executor/layers/fused_moe/fused_moe.py"
PACKAGE = "vllm.model_executor.layers.fused_moe"
FUNCTIONS = (
    "get_config_file_name",
    "get_moe_configs",
    "should_moe_wna16_use_cuda",
    "get_default_config",
    "try_get_optimal_moe_config",
)


def _exec_top_level(path: Path, names: tuple[str, ...], namespace: dict[str, Any]) -> None:
    """Run the top-level ``def``s and assignments of ``path`` named in ``names`` in ``namespace`` (decorators
    included: ``get_moe_configs`` keeps its ``functools.lru_cache``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    wanted = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            wanted.append(node)
        elif isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id in names for t in targets):
                wanted.append(node)
    found = {n.name if isinstance(n, ast.FunctionDef) else "" for n in wanted}
    missing = [n for n in names if not n.startswith("_") and n not in found]
    if missing:
        raise AssertionError(f"{path}: no top-level {', '.join(missing)}")
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(path), "exec"), namespace)


class _Log:
    """Stands in for vLLM's logger: keeps ``(level, message)``; the config choice never reads it."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def _keep(self, level: str, msg: str, *args: Any, **_: Any) -> None:
        self.lines.append((level, msg % args if args else msg))

    def info_once(self, msg: str, *args: Any, **kw: Any) -> None:
        self._keep("info", msg, *args, **kw)

    def warning_once(self, msg: str, *args: Any, **kw: Any) -> None:
        self._keep("warning", msg, *args, **kw)


class Vllm:
    """vLLM's config functions, with the device name under test as ``current_platform``'s."""

    def __init__(self, root: Path) -> None:
        import vllm.envs as envs
        import vllm.platforms as platforms
        from vllm.platforms.interface import Platform, PlatformEnum
        from vllm.utils import platform_utils
        from vllm.utils.math_utils import next_power_of_2

        self.root = root
        self.configs_dir = root / "vllm/model_executor/layers/fused_moe/configs"
        self._platforms, self._platform_utils = platforms, platform_utils
        self._platform_base, self._enum = Platform, PlatformEnum
        path = root / FUSED_MOE
        self.ns: dict[str, Any] = {
            "__name__": "vllm.model_executor.layers.fused_moe.fused_moe",
            "__file__": str(path),  # get_moe_configs finds the wheel's configs/ folder next to it
            "Any": Any,
            "functools": __import__("functools"),
            "json": json,
            "os": os,
            "envs": envs,
            "logger": _Log(),
            "get_device_name_as_file_name": platform_utils.get_device_name_as_file_name,
            "next_power_of_2": next_power_of_2,
            "current_platform": None,
        }
        _exec_top_level(path, FUNCTIONS, self.ns)
        self.package = types.ModuleType(PACKAGE)
        _exec_top_level(root / "vllm/model_executor/layers/fused_moe/__init__.py", ("_config", "get_config"),
                        self.package.__dict__)  # fmt: skip
        for name in FUNCTIONS:
            setattr(self, name, self.ns[name])

    def cuda_platform(self, device: str) -> Any:
        """A CUDA platform whose device 0 is called ``device``."""
        base, enum = self._platform_base, self._enum

        class Named(base):  # type: ignore[misc, valid-type]
            _enum = enum.CUDA
            device_type = "cuda"

            @classmethod
            def get_device_name(cls, device_id: int = 0) -> str:
                return device

        return Named()

    def cpu_platform(self) -> Any:
        """vLLM's own ``CpuPlatform`` (``vllm/platforms/cpu.py`` imports psutil, which it does not call for the
        device name: a blank module stands in while it imports, if psutil is not installed)."""
        blank = None
        try:
            import psutil  # noqa: F401
        except ImportError:
            blank = sys.modules["psutil"] = types.ModuleType("psutil")
        try:
            from vllm.platforms.cpu import CpuPlatform
        except ImportError as exc:
            pytest.skip(f"vllm.platforms.cpu does not import here: {exc}")
        finally:
            if blank is not None and sys.modules.get("psutil") is blank:
                del sys.modules["psutil"]
        return CpuPlatform()

    @contextlib.contextmanager
    def on(self, platform: Any, tuned_folder: str | os.PathLike | None = None) -> Iterator[Vllm]:
        """vLLM as it runs on ``platform`` with ``VLLM_TUNED_CONFIG_FOLDER=tuned_folder``; caches cleared."""
        saved_env = {k: os.environ.get(k) for k in ("VLLM_TUNED_CONFIG_FOLDER", "VLLM_BATCH_INVARIANT")}
        saved_platform = self._platforms._current_platform
        saved_package = sys.modules.get(PACKAGE)
        os.environ.pop("VLLM_BATCH_INVARIANT", None)
        if tuned_folder is None:
            os.environ.pop("VLLM_TUNED_CONFIG_FOLDER", None)
        else:
            os.environ["VLLM_TUNED_CONFIG_FOLDER"] = str(tuned_folder)
        self._platforms._current_platform = platform  # what `from vllm.platforms import current_platform` gets
        self.ns["current_platform"] = platform  # fused_moe.py's own module-level binding
        if saved_package is None:
            sys.modules[PACKAGE] = self.package
        self._clear()
        try:
            yield self
        finally:
            self._clear()
            self._platforms._current_platform = saved_platform
            if saved_package is None:
                sys.modules.pop(PACKAGE, None)
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def _clear(self) -> None:
        self._platform_utils.get_device_name_as_file_name.cache_clear()
        self.ns["get_moe_configs"].cache_clear()

    def device_file_name(self) -> str:
        """``get_device_name_as_file_name()`` of the current platform (vLLM's ``re.sub(r"[\\s/]+", "_", ...)``)."""
        self._platform_utils.get_device_name_as_file_name.cache_clear()
        return self._platform_utils.get_device_name_as_file_name()


def load() -> Vllm:
    """The installed vLLM's functions; the test skips, saying why, when vLLM (``VLLM_VERSION``) is not here."""
    try:
        dist = importlib.metadata.distribution("vllm")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"vllm is not installed (README: pip install --no-deps vllm=={VLLM_VERSION})")
    if dist.version != VLLM_VERSION:
        pytest.skip(f"vllm {dist.version} is installed; these checks are of {VLLM_VERSION}")
    pytest.importorskip("torch", reason="vLLM's platform modules import torch (the kernels extra)")
    env = dict(os.environ)
    try:
        return Vllm(Path(str(dist.locate_file(""))))
    finally:  # vllm/env_override.py sets TORCHINDUCTOR_COMPILE_THREADS and others on import: not for the suite
        for key in set(os.environ) - set(env):
            del os.environ[key]
        os.environ.update(env)


def picks(fn: Callable[[int], dict[str, Any]], ms: Iterable[int]) -> list[tuple[tuple[str, type, Any], ...]]:
    """``fn(M)`` for each M as ``((key, type, value), ...)`` in the config's order: 256 and "256" (and 1 and 1.0)
    differ, and it is cheap enough for every M of many files."""
    return [tuple((k, type(v), v) for k, v in fn(m).items()) for m in ms]

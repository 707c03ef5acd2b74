"""Where spec files live: the shipped ``profiles/`` folders, slug-or-path resolution and the one YAML read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from moesim.errors import SpecError
from moesim.fileio import read_yaml

__all__ = [
    "list_clusters",
    "list_gpus",
    "list_models",
    "profiles_dir",
    "read_spec_yaml",
    "resolve",
    "sglang_configs_dir",
    "vllm_configs_dir",
]


def vllm_configs_dir() -> Path | None:
    """The folder of vLLM's tuned fused-MoE config files: ``$MOESIM_VLLM_CONFIG_DIR`` when set, else the copy
    shipped in ``profiles/vllm_configs/``; None when neither is a folder."""
    return _config_dir("MOESIM_VLLM_CONFIG_DIR", "vllm_configs")


def sglang_configs_dir() -> Path | None:
    """The folder of SGLang's tuned fused-MoE config files (``triton_<version>/`` sub-folders):
    ``$MOESIM_SGLANG_CONFIG_DIR`` when set, else the copy shipped in ``profiles/sglang_configs/``; None when
    neither is a folder."""
    return _config_dir("MOESIM_SGLANG_CONFIG_DIR", "sglang_configs")


def _config_dir(env_var: str, shipped: str) -> Path | None:
    """``$env_var`` when set, else ``profiles/<shipped>/``: the first that is a folder, or None."""
    env = os.environ.get(env_var)
    for d in ([Path(env)] if env else []) + [profiles_dir() / shipped]:
        if d.is_dir():
            return d
    return None


def profiles_dir() -> Path:
    """The shipped ``profiles/`` directory (package data of the installed ``profiles`` package)."""
    import profiles

    return Path(profiles.__file__).parent


def _list(kind: str) -> list[str]:
    return sorted(p.stem for p in (profiles_dir() / kind).glob("*.yaml"))


def list_models() -> list[str]:
    """Slugs of the shipped models."""
    return _list("models")


def list_gpus() -> list[str]:
    """Slugs of the shipped GPUs."""
    return _list("gpus")


def list_clusters() -> list[str]:
    """Slugs of the shipped clusters."""
    return _list("clusters")


def _is_file(path: Path, directory: bool = False) -> bool:
    """``path.is_file()`` (``is_dir()`` with ``directory``), False where the name cannot be a file (``OSError``:
    longer than the system's 255-byte file name limit; ``ValueError``: a NUL byte)."""
    try:
        return path.is_dir() if directory else path.is_file()
    except (OSError, ValueError):
        return False


def resolve(kind: str, name_or_path: str | Path, base: Path | None = None) -> Path:
    """A shipped slug or a YAML path -> the file. ``base`` resolves relative paths named inside another file."""
    text = str(name_or_path)
    path = Path(text)
    shown = text if text.isprintable() else repr(text)  # a name with a newline must not split the message
    looks_like_path = path.suffix in (".yaml", ".yml") or "/" in text or "\\" in text
    if looks_like_path:
        for candidate in ([base / path] if base is not None and not path.is_absolute() else []) + [path]:
            if _is_file(candidate):
                return candidate
            if _is_file(candidate, directory=True):
                raise SpecError(f"{shown}: {kind[:-1]}: is a directory, not a YAML file")
        raise SpecError(f"{shown}: {kind[:-1]}: no such file")
    shipped = profiles_dir() / kind / f"{text}.yaml"
    if _is_file(shipped):
        return shipped
    if _is_file(path):  # a file without a .yaml suffix in the working directory
        return path
    known = ", ".join(_list(kind)) or "none"
    raise SpecError(f"{shown}: {kind[:-1]}: unknown slug (known: {known})")


def read_spec_yaml(path: Path) -> dict[str, Any]:
    """The top-level mapping of a spec file, read by :func:`moesim.fileio.read_yaml` (shipped files are trusted
    to be small)."""
    shipped = Path(path).resolve().is_relative_to(profiles_dir().resolve())
    return read_yaml(path, shipped=shipped)  # type: ignore[return-value]  # mapping=True checks the top level

"""File input and output: one reader for every text input, atomic output, and output paths checked before work.

Input: :func:`read_text` reads a text file for any loader (specs, placements, scenarios, calibrations, JSON
traces, engine files) and turns every way it can fail (missing, a directory, unreadable, larger than
:data:`MAX_TEXT_BYTES`, not UTF-8) into one ``SpecError`` line naming the file; :func:`read_yaml` adds YAML
parsing (``yaml.safe_load``) with the line of a syntax error.

Output: write to a temp file in the destination directory, give it the permissions ``open()`` would
(``mkstemp`` makes 0600), then ``os.replace`` it over the target. A crash or a bad input part-way leaves no
partial file. :func:`check_outputs` refuses, before any work, an output path that is a directory or that is
also an input or another output of the same command.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = [
    "MAX_TEXT_BYTES",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_outputs",
    "read_text",
    "read_yaml",
]

# Largest text input read (bytes). An assumption, not a measured limit: the largest text file moesim reads in
# practice is a placement of DeepSeek-V3 on 1024 GPUs with replicas (a few MB); 64 MB leaves a wide margin and
# keeps a mistaken path (a checkpoint, a dump) from being read into memory whole.
MAX_TEXT_BYTES = 64 * 1024 * 1024


def _error(source: str, field: str, problem: str) -> Exception:
    from moesim.errors import field_error

    return field_error(source, field, problem)


def read_text(
    path: str | os.PathLike, source: str | None = None, field: str = "file", max_bytes: int = MAX_TEXT_BYTES
) -> str:
    """The UTF-8 text of ``path``; ``SpecError`` ``SOURCE: FIELD: PROBLEM`` when it is missing, a directory,
    unreadable, larger than ``max_bytes`` or not UTF-8 (with the offset of the first bad byte)."""
    p = Path(path)
    src = str(path) if source is None else source
    try:
        if p.is_dir():
            raise _error(src, field, "is a directory, not a file")
        size = p.stat().st_size
        if size > max_bytes:
            limit = f"{max_bytes // (1024 * 1024)} MB"
            raise _error(src, field, f"{size:,} bytes, more than the {limit} read for a text input")
        data = p.read_bytes()
    except FileNotFoundError:
        raise _error(src, field, "no such file") from None
    except OSError as exc:
        raise _error(src, field, f"cannot read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _error(src, field, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def read_yaml(path: str | os.PathLike, source: str | None = None, mapping: bool = True) -> object:
    """``yaml.safe_load`` of :func:`read_text`; a syntax error names its line. ``mapping``: the top level must
    be a mapping."""
    import yaml

    src = str(path) if source is None else source
    text = read_text(path, src)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "yaml"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise _error(src, where, f"malformed YAML: {problem}") from None
    except RecursionError:
        raise _error(src, "yaml", "nested too deeply") from None
    if mapping and not isinstance(data, dict):
        raise _error(src, "(top level)", f"expected a mapping, got {type(data).__name__}")
    return data


def check_outputs(
    outputs: dict[str, str | os.PathLike | None], inputs: dict[str, str | os.PathLike | None] | None = None
) -> None:
    """Refuse, before any work, an output that is a directory, or that resolves to an input or to another
    output. ``outputs`` and ``inputs`` map the option that names a path (``-o``, ``--trace``) to the path (None:
    not given). ``SpecError`` ``PATH: OPTION: PROBLEM``."""
    seen: dict[Path, str] = {}
    for flag, path in (inputs or {}).items():
        if path is not None and Path(path).exists():
            seen.setdefault(Path(path).resolve(), flag)
    outs: dict[Path, str] = {}
    for flag, path in outputs.items():
        if path is None:
            continue
        p = Path(path)
        if p.is_dir():
            raise _error(str(path), flag, "is a directory; give a file name")
        real = p.resolve()
        if real in seen:
            raise _error(str(path), flag, f"is also the input of {seen[real]}; refusing to overwrite an input")
        if real in outs:
            raise _error(str(path), flag, f"is also the output of {outs[real]}; give each output its own file")
        outs[real] = flag


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(fh)`` on a binary temp file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))

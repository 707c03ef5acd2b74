"""File input and output: one reader for every text input, atomic output, and output paths checked before work.

Input: :func:`read_text` reads a text file for any loader (specs, placements, scenarios, calibrations, JSON
traces, engine files) and turns every way it can fail (missing, a directory, unreadable, larger than
:data:`MAX_TEXT_BYTES`, not UTF-8) into one ``SpecError`` line naming the file; :func:`read_yaml` adds YAML
parsing (``yaml.safe_load``) with the line of a syntax error, :func:`parse_json` the same for JSON text.

Output: write to a temp file in the destination directory, give it the permissions ``open()`` would
(``mkstemp`` makes 0600), then ``os.replace`` it over the target. A crash or a bad input part-way leaves no
partial file; the temp file a SIGKILL leaves is named for its process and swept by the next write there.
:func:`check_outputs` refuses, before any work, an output path that is a directory or that is also an input or
another output of the same command.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = [
    "MAX_TEXT_BYTES",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "OutputSet",
    "check_outputs",
    "parse_json",
    "read_text",
    "read_yaml",
    "scratch_dir",
]

# Largest text input read (bytes). A limit, not a measured need: a DeepSeek-V3 placement for 64 GPUs (+64 slots)
# is 0.25 MB (measured), so even 1024 GPUs with 2 slots each stay near 2 MB; 64 MB keeps a mistaken path (a
# checkpoint, a dump) from being read into memory whole.
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


# Deepest flow nesting (``[[[...`` or ``{a: {b: ...``) read from a user's YAML. A limit, not a need: the deepest
# shipped file nests 5 levels (a placement: layers, gpus, slots, [expert, share]). Without it a line of a thousand
# ``[`` costs the pure-Python scanner about 1 s (it keeps one possible simple key per open level and rescans them
# all for every token, up to 1024 characters ahead) before the composer runs out of stack.
MAX_YAML_FLOW_DEPTH = 64


@functools.cache
def _user_yaml_loader() -> type:
    """``yaml.SafeLoader`` refusing flow nesting beyond :data:`MAX_YAML_FLOW_DEPTH` (a scanner error, reported
    with its line like any other); yaml is imported on first use, not with this module."""
    import yaml

    class DepthLimitedSafeLoader(yaml.SafeLoader):
        def fetch_flow_collection_start(self, TokenClass: type) -> None:  # noqa: N803 - PyYAML's name
            if self.flow_level >= MAX_YAML_FLOW_DEPTH:
                problem = f"nested more than {MAX_YAML_FLOW_DEPTH} levels deep"
                raise yaml.scanner.ScannerError(None, None, problem, self.get_mark())
            super().fetch_flow_collection_start(TokenClass)

    return DepthLimitedSafeLoader


def read_yaml(
    path: str | os.PathLike, source: str | None = None, mapping: bool = True, shipped: bool = False
) -> object:
    """``yaml.safe_load`` of :func:`read_text`; a syntax error names its line. ``mapping``: the top level must
    be a mapping. ``shipped``: a file moesim ships (its profiles), parsed by libyaml where PyYAML has it (8x
    faster, the same objects for every shipped file); never for a user's file, as libyaml crashes the process
    on deeply nested input where the pure-Python parser raises (and refuses flow nesting beyond
    :data:`MAX_YAML_FLOW_DEPTH`)."""
    import yaml

    src = str(path) if source is None else source
    text = read_text(path, src)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader) if shipped else _user_yaml_loader()
    try:
        data = yaml.load(text, Loader=loader)  # a safe loader either way
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


def parse_json(text: str, source: str, field: str = "json") -> object:
    """``json.loads(text)``; ``SpecError`` ``SOURCE: FIELD: bad JSON at line L column C: PROBLEM`` on a syntax
    error, and ``SOURCE: FIELD: nested too deeply`` where the C decoder hits Python's recursion limit (a file of
    a few thousand ``[`` raises ``RecursionError``, not ``JSONDecodeError``)."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _error(source, field, f"bad JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise _error(source, field, "nested too deeply") from None


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
    """Call ``write(fh)`` on a binary temp file beside ``path``, then rename it to ``path``.

    The temp file is ``.moesim-stage-PID-NAME.XXXXXXXX.tmp``: one that a SIGKILL left behind is removed by the next
    write in that folder (or the next :class:`OutputSet` there), as a killed run's staging folder is."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale_stages(path.parent)
    # the name cut to 100 characters: the temp name stays within the 255 a file name may have
    fd, tmp = tempfile.mkstemp(prefix=f"{STAGE_PREFIX}{os.getpid()}-{path.name[:100]}.", suffix=".tmp", dir=path.parent)
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


STAGE_PREFIX = ".moesim-stage-"


def _sweep_stale_stages(folder: Path) -> None:
    """Remove the staging folders and temp files that killed runs left in ``folder`` (their pid, in the name, is
    gone)."""
    import shutil

    for stage in folder.glob(f"{STAGE_PREFIX}*"):
        pid = stage.name[len(STAGE_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its run is still going
        except ProcessLookupError:
            if stage.is_dir() and not stage.is_symlink():
                shutil.rmtree(stage, ignore_errors=True)
            else:  # an atomic_write temp file
                try:
                    stage.unlink()
                except OSError:
                    pass
        except PermissionError:
            continue


def _exchange(a: Path, b: Path) -> bool:
    """Swap paths ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is not
    available (another OS, an old libc, a file system without it)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2  # <fcntl.h>, <linux/fs.h>
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


# Most entries an existing output folder may hold for the one-step swap: a report folder holds tens (whatif: 4
# files and a plot folder of up to 10); past this it is likely not an output folder at all.
SWAP_MAX_ENTRIES = 10_000


def _swap_in_merged(staged: Path, target: Path) -> bool:
    """Make ``staged`` the merge of the existing folder ``target`` and the new files (the new ones win), then swap
    the two in one rename: a kill at any moment leaves either the old folder or the merged one, never a mix (the
    file-by-file merge it replaces could leave the new results.json beside the old report). The old files are
    hard-linked, not copied. False, with ``target`` untouched, where a link or the swap is not possible, and for a
    folder that a swap would change for others: a symlink or mount point, the working directory or one above it,
    or one of more than :data:`SWAP_MAX_ENTRIES` entries (a mistaken ``-o .``), which keep the file-by-file merge."""
    import itertools
    import shutil

    if target.is_symlink() or os.path.ismount(target):
        return False
    cwd, real = Path.cwd().resolve(), target.resolve()
    if cwd == real or real in cwd.parents:
        return False
    old = list(itertools.islice(target.rglob("*"), SWAP_MAX_ENTRIES + 1))
    if len(old) > SWAP_MAX_ENTRIES:
        return False
    try:
        for item in old:
            dest = staged / item.relative_to(target)
            if item.is_dir() and not item.is_symlink():
                if not dest.exists():
                    dest.mkdir(parents=True)
                    shutil.copymode(item, dest)
            elif not dest.exists() and not dest.is_symlink():
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.link(item, dest, follow_symlinks=False)
        shutil.copymode(target, staged)
    except OSError:
        return False
    return _exchange(staged, target)


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A private folder for the temp files a solver writes (PuLP's model and solution files, CBC's log), made in
    the system temp folder and named for this process like a staging folder. ``TMPDIR`` and ``tempfile.tempdir``
    point into it while the block runs; it is removed when the block ends, and the one a SIGKILL leaves (with
    files that nothing else would ever remove) is swept by the next run."""
    import shutil

    base = Path(tempfile.gettempdir())
    _sweep_stale_stages(base)
    folder = Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{os.getpid()}-scratch-", dir=base))
    old_env, old_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = str(folder), str(folder)
    try:
        yield folder
    finally:
        if old_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_env
        tempfile.tempdir = old_tempdir
        shutil.rmtree(folder, ignore_errors=True)


class OutputSet:
    """A command's outputs, written whole or not at all.

    ``staged(target)`` gives a path inside a hidden staging folder beside ``target``; the command writes there.
    Leaving the ``with`` block without an error renames every staged file (and folder) onto its target; an error,
    Ctrl-C or SIGTERM removes the staging folders instead, so a failed run leaves none of its outputs. A run
    killed with SIGKILL leaves only a staging folder, which the next run in that folder removes.

    A staged folder over an existing one (``whatif -o`` run again) is merged in the stage and swapped in with one
    rename (Linux ``renameat2``; elsewhere file by file). Separate files are renamed one after another: a SIGKILL
    in the microseconds between two renames can still leave the first without the second.
    """

    def __init__(self) -> None:
        self._stages: dict[Path, Path] = {}  # target folder -> its staging folder
        self._moves: list[tuple[Path, Path]] = []
        self._old_term: object = None

    def staged(self, target: str | os.PathLike) -> Path:
        target = Path(target)
        folder = target.parent
        if folder not in self._stages:
            folder.mkdir(parents=True, exist_ok=True)
            _sweep_stale_stages(folder)
            self._stages[folder] = Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{os.getpid()}-", dir=folder))
        path = self._stages[folder] / target.name
        self._moves.append((path, target))
        return path

    def __enter__(self) -> OutputSet:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():

            def on_term(signum: int, frame: object) -> None:
                raise KeyboardInterrupt  # unwinds through __exit__, which removes the staging folders

            self._old_term = signal.signal(signal.SIGTERM, on_term)
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        import shutil
        import signal

        try:
            if exc_type is None:
                for staged, target in self._moves:
                    if not staged.exists():
                        continue  # a writer that decided not to write (e.g. nothing to say)
                    if staged.is_dir() and target.is_dir():
                        if _swap_in_merged(staged, target):
                            continue  # the old folder, now at ``staged``, goes with the stage
                        for item in staged.rglob("*"):  # merge a staged folder into an existing one, file by file
                            if item.is_file():
                                dest = target / item.relative_to(staged)
                                dest.parent.mkdir(parents=True, exist_ok=True)
                                os.replace(item, dest)
                    else:
                        if staged.is_file():
                            os.chmod(staged, _default_mode())
                        os.replace(staged, target)
        finally:
            for stage in self._stages.values():
                shutil.rmtree(stage, ignore_errors=True)
            if self._old_term is not None:
                signal.signal(signal.SIGTERM, self._old_term)  # type: ignore[arg-type]

"""moesim.traces.formats: format detection by content, and the errors of files no format reads."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from moesim.errors import TraceError
from moesim.traces.formats import load_trace
from moesim.traces.native import save_trace
from moesim.traces.trace import RoutingTrace


def random_ids(T: int, L: int, E: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((T, L, E)), axis=2)[:, :, :k].astype(np.int32)


# ------------------------------------------------------------------ detection and errors
def test_detect_by_content_not_suffix(tmp_path: Path) -> None:
    t = RoutingTrace.from_topk_ids(random_ids(5, 2, 4, 2), 4)
    save_trace(t, tmp_path / "a.npz")
    shutil.copy(tmp_path / "a.npz", tmp_path / "renamed.bin")
    assert load_trace(tmp_path / "renamed.bin") == t
    save_trace(t, tmp_path / "a.json")
    shutil.copy(tmp_path / "a.json", tmp_path / "noext")
    assert load_trace(tmp_path / "noext") == t


@pytest.mark.parametrize(
    "content, match",
    [
        (b"hello world", "format: not recognised; looked for native .npz"),
        (b'{"x": 1}', "format: JSON is neither a moesim trace"),
        (b"{not json", "json: bad JSON at line 1 column 2"),
        (b"[" * 100_000, "json: nested too deeply"),  # RecursionError in the C decoder (fuzz, issue 15)
        (b"[1, 2]", "json: top level is not an object"),
    ],
)
def test_unknown_formats(tmp_path: Path, content: bytes, match: str) -> None:
    p = tmp_path / "mystery.dat"
    p.write_bytes(content)
    with pytest.raises(TraceError, match=f"mystery.dat: {match}"):
        load_trace(p)


def test_other_zip_and_missing(tmp_path: Path) -> None:
    p = tmp_path / "x.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(TraceError, match="x.zip: format: zip archive that is neither"):
        load_trace(p)
    np.savez(tmp_path / "plain.npz", counts=np.zeros((2, 2)))
    with pytest.raises(TraceError, match="plain.npz: meta: missing"):
        load_trace(tmp_path / "plain.npz")
    with pytest.raises(TraceError, match="nope.npz: file: does not exist"):
        load_trace(tmp_path / "nope.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TraceError, match="empty: format: directory holds no .npy"):
        load_trace(tmp_path / "empty")


def _zip_with(tmp_path: Path, name: str, patch) -> Path:
    p = tmp_path / "x.pt"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr(name, b"x")
    p.write_bytes(patch(p.read_bytes()))
    return p


def test_damaged_zip_directory(tmp_path: Path) -> None:
    """zipfile raised UnicodeDecodeError (a UTF-8-flagged name that is not UTF-8) or NotImplementedError (a made-up
    'version needed to extract') while the format was being detected."""
    central = b"PK\x01\x02"
    bad_name = _zip_with(tmp_path, "archive/ü.pkl", lambda d: d.replace("ü".encode(), b"\xff\xfe"))
    version = _zip_with(
        tmp_path, "archive/data.pkl", lambda d: d[: d.index(central) + 6] + b"\xff\x00" + d[d.index(central) + 8 :]
    )
    for p in (bad_name, version):
        with pytest.raises(TraceError, match="x.pt: format: looks like a zip archive but cannot be opened"):
            load_trace(p)

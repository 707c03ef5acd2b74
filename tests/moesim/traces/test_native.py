"""moesim.traces.native: the native .npz / JSON layout on disk, its round trip, and one-line errors for bad files.

test_trace.py already round-trips random traces through ``load_trace`` (both suffixes, with and without
``topk_ids``), checks atomicity of one write, bad ``meta`` entries and corrupt archives; test_formats_olmoe.py a
JSON version too new. This module checks what those leave: the layout written (entries, dtypes, the uint8 ids
boundary at 256 experts), the readers called directly (``load_native_npz``, ``trace_from_native``,
``read_json_document``), empty arrays in JSON, and every metadata field's error, ``ORIGIN: FIELD: PROBLEM``.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from moesim.errors import TraceError
from moesim.traces.native import (
    NATIVE_FORMAT,
    NATIVE_VERSION,
    load_native_npz,
    read_json_document,
    save_trace,
    trace_from_native,
)
from moesim.traces.trace import RoutingTrace

REPO = Path(__file__).resolve().parents[3]
OLMOE_C4 = REPO / "profiles" / "traces" / "olmoe_c4.npz"


def random_ids(T: int, L: int, E: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((T, L, E)), axis=2)[:, :, :k].astype(np.int32)


def small_trace(keep_ids: bool = True) -> RoutingTrace:
    """5 tokens, 10 experts, top-3, model layers 2 and 4."""
    ids = random_ids(5, 2, 10, 3)
    return RoutingTrace.from_topk_ids(ids, 10, layers=(2, 4), model="m", source="unit", keep_topk_ids=keep_ids)


def native_doc() -> dict:
    """The JSON document ``save_trace`` writes for :func:`small_trace`, parsed."""
    t = small_trace()
    return {
        "format": NATIVE_FORMAT,
        "version": NATIVE_VERSION,
        "model": "m",
        "num_experts": 10,
        "top_k": 3,
        "layers": [2, 4],
        "num_tokens": 5,
        "source": "unit",
        "counts": t.counts.tolist(),
        "transitions": t.transitions.tolist(),
        "topk_ids": t.topk_ids.tolist(),
    }


# ------------------------------------------------------------------ what is written
def test_npz_layout(tmp_path: Path) -> None:
    """A compressed archive of meta (JSON bytes, without the arrays or the origin) and the three arrays."""
    t = small_trace()
    save_trace(t, tmp_path / "t.npz")
    with np.load(tmp_path / "t.npz") as z:
        assert sorted(z.files) == ["counts", "meta", "topk_ids", "transitions"]
        meta = json.loads(z["meta"].tobytes().decode())
        assert z["meta"].dtype == np.uint8
        assert meta == {k: v for k, v in native_doc().items() if k not in ("counts", "transitions", "topk_ids")}
        assert z["counts"].dtype == np.int64 and np.array_equal(z["counts"], t.counts)
        assert z["topk_ids"].dtype == np.uint8 and np.array_equal(z["topk_ids"], t.topk_ids)
        assert np.array_equal(z["transitions"], t.transitions)
    with zipfile.ZipFile(tmp_path / "t.npz") as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_DEFLATED}


def test_npz_without_optional_arrays(tmp_path: Path) -> None:
    t = RoutingTrace(model="", num_experts=3, top_k=1, layers=(0,), counts=np.array([[1, 0, 1]]), num_tokens=2)
    save_trace(t, tmp_path / "t.npz")
    with np.load(tmp_path / "t.npz") as z:
        assert sorted(z.files) == ["counts", "meta"]
    back = load_native_npz(tmp_path / "t.npz")
    assert back == t and back.transitions is None and back.topk_ids is None


def test_json_layout_and_suffix(tmp_path: Path) -> None:
    """``.json`` (any case) is one JSON object with the same keys, absent arrays as null; other suffixes get .npz."""
    save_trace(small_trace(), tmp_path / "t.JSON")
    assert json.loads((tmp_path / "t.JSON").read_text()) == native_doc()
    save_trace(small_trace(keep_ids=False), tmp_path / "n.json")
    assert json.loads((tmp_path / "n.json").read_text())["topk_ids"] is None
    save_trace(small_trace(), tmp_path / "t.trace")
    assert (tmp_path / "t.trace").read_bytes()[:2] == b"PK"  # a zip archive
    assert load_native_npz(tmp_path / "t.trace") == small_trace()


@pytest.mark.parametrize("E, dtype", [(256, np.uint8), (257, np.int32)])
def test_ids_stored_as_uint8_up_to_256_experts(tmp_path: Path, E: int, dtype: type) -> None:
    """Ids fit a byte up to E = 256 (largest id 255, present here); above that they keep int32 and still read back."""
    ids = random_ids(4, 2, E, 8, seed=E)
    ids[0, 0, 0] = E - 1 if (ids[0, 0] != E - 1).all() else ids[0, 0, 0]
    t = RoutingTrace.from_topk_ids(ids, E)
    save_trace(t, tmp_path / "t.npz")
    with np.load(tmp_path / "t.npz") as z:
        assert z["topk_ids"].dtype == dtype
    back = load_native_npz(tmp_path / "t.npz")
    assert back == t and back.topk_ids.dtype == np.int32 and int(back.topk_ids.max()) == E - 1


def test_overwrite_replaces_the_file(tmp_path: Path) -> None:
    p = tmp_path / "t.npz"
    save_trace(small_trace(), p)
    other = RoutingTrace.from_topk_ids(random_ids(3, 1, 4, 2, seed=9), 4)
    save_trace(other, p)
    assert load_native_npz(p) == other
    assert [q.name for q in tmp_path.iterdir()] == ["t.npz"]


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    """Renaming onto a directory fails: the error surfaces and the temp file beside it is removed."""
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(OSError):
        save_trace(small_trace(), tmp_path / "d.npz")
    assert [q.name for q in tmp_path.iterdir()] == ["d.npz"]
    assert not any((tmp_path / "d.npz").iterdir())


# ------------------------------------------------------------------ reading back
def test_load_native_npz_directly(tmp_path: Path) -> None:
    """The reader records the path as origin (not data: equality ignores it) and keeps the embedded source."""
    save_trace(small_trace(), tmp_path / "t.npz")
    back = load_native_npz(tmp_path / "t.npz")
    assert back == small_trace()
    assert back.origin == str(tmp_path / "t.npz") and back.source == "unit" and back.layers == (2, 4)


def test_shipped_trace_reads() -> None:
    t = load_native_npz(OLMOE_C4)
    assert (t.model, t.num_experts, t.top_k, t.layers, t.num_tokens) == ("olmoe-1b-7b", 64, 8, (0, 7, 15), 208896)
    assert np.array_equal(t.counts.sum(axis=1), np.full(3, 208896 * 8))
    assert t.transitions.shape == (2, 64, 64)


def test_json_empty_arrays_keep_their_shape(tmp_path: Path) -> None:
    """JSON writes an empty array as ``[]``, losing its trailing dims: zero tokens (topk_ids [0, L, k]) and one
    layer (transitions [0, E, E]) are reshaped on reading."""
    t = RoutingTrace.from_topk_ids(np.zeros((0, 1, 2), dtype=np.int32), 4)
    save_trace(t, tmp_path / "t.json")
    doc = read_json_document(tmp_path / "t.json")
    assert doc["topk_ids"] == [] and doc["transitions"] == []
    back = trace_from_native(doc, "t.json")
    assert back.topk_ids.shape == (0, 1, 2) and back.transitions.shape == (0, 4, 4)
    assert back == t


def test_version_defaults_to_1_and_optional_fields() -> None:
    doc = native_doc()
    for key in ("version", "model", "source"):
        del doc[key]
    t = trace_from_native(doc, "o.json")
    assert t.model == "" and t.source == "" and t.origin == "o.json"
    doc.update(transitions=None, topk_ids=None)
    t = trace_from_native(doc, "o.json")
    assert t.transitions is None and t.topk_ids is None and np.array_equal(t.counts, small_trace().counts)


def test_read_json_document_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{\n"a": }')
    with pytest.raises(TraceError, match=r"^.*bad\.json: json: bad JSON at line 2 column 6"):
        read_json_document(tmp_path / "bad.json")
    with pytest.raises(TraceError, match=r"^.*nope\.json: file: "):
        read_json_document(tmp_path / "nope.json")
    (tmp_path / "ok.json").write_text("[1, 2]")
    assert read_json_document(tmp_path / "ok.json") == [1, 2]  # the shape is the caller's to check


# ------------------------------------------------------------------ bad documents: ORIGIN: FIELD: PROBLEM
BAD_FIELDS = [
    ({"format": None}, "format", "expected 'moesim-trace', got None"),
    ({"format": "moesim-plan"}, "format", "expected 'moesim-trace', got 'moesim-plan'"),
    ({"version": 0}, "version", "must be >= 1, got 0"),
    ({"version": "1"}, "version", "expected an integer, got '1'"),
    ({"version": NATIVE_VERSION + 1}, "version", f"file is version {NATIVE_VERSION + 1}, this moesim reads <= 1"),
    ({"num_experts": None}, "num_experts", "missing"),
    ({"num_experts": True}, "num_experts", "expected an integer, got True"),
    ({"num_experts": 9000}, "num_experts", "must be <= 8,192 (moesim's limit), got 9,000"),
    ({"top_k": 11}, "top_k", "must be <= 10 (moesim's limit), got 11"),
    ({"top_k": 0}, "top_k", "must be >= 1, got 0"),
    ({"num_tokens": -1}, "num_tokens", "must be >= 0, got -1"),
    ({"num_tokens": 6}, "counts", "layer 2 sums to 15, expected num_tokens*top_k = 6*3 = 18"),
    ({"layers": [2, 1024]}, "layers", "entries must be <= 1,023, got 1,024"),
    ({"layers": [-1, 4]}, "layers", "entries must be >= 0, got -1"),
    ({"layers": [[2, 4]]}, "layers", "expected 1 dimensions, got shape (1, 2)"),
    ({"layers": [4, 4]}, "layers", "must be distinct non-negative indices, got [4, 4]"),
    ({"layers": [2, 4, 6]}, "counts", "shape (2, 10), expected [L=3, E=10]"),
    ({"counts": None}, "counts", "missing"),
    ({"counts": "many"}, "counts", "expected an array of numbers, got str"),
    ({"counts": [[1.5] * 10, [1.5] * 10]}, "counts", "entries must be whole numbers"),
    ({"counts": [[-1] * 10] * 2}, "counts", "entries must be >= 0, got -1"),
    ({"transitions": [[[-1]]]}, "transitions", "entries must be >= 0, got -1"),
    ({"transitions": [[[0] * 10] * 10]}, "transitions", "rows of pair 0 do not sum to the counts of layer 2"),
    ({"topk_ids": [[[0, 1, 2]]]}, "topk_ids", "shape (1, 1, 3), expected [T=5, L=2, k=3]"),
    ({"topk_ids": [[[0, 1, -1]]]}, "topk_ids", "entries must be >= 0, got -1"),
]


@pytest.mark.parametrize("change, field, problem", BAD_FIELDS)
def test_bad_json_fields(tmp_path: Path, change: dict, field: str, problem: str) -> None:
    """Each bad field, in a native JSON file read through its reader: one line, the file, the field, the problem."""
    doc = {**native_doc(), **change}
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(TraceError) as exc:
        trace_from_native(read_json_document(p), str(p))
    assert str(exc.value) == f"{p}: {field}: {problem}"


@pytest.mark.parametrize(
    "meta_change, arrays, field, problem",
    [
        ({"format": "other"}, None, "format", "expected 'moesim-trace', got 'other'"),
        ({"version": 2}, None, "version", "file is version 2, this moesim reads <= 1"),
        ({"top_k": 2}, None, "counts", "layer 2 sums to 15, expected num_tokens*top_k = 5*2 = 10"),
        ({}, {"counts": np.full((2, 10), 1.5)}, "counts", "entries must be whole numbers"),
        ({}, {"counts": None}, "counts", "missing"),
        ({}, {"topk_ids": np.zeros((5, 2, 3))}, "topk_ids", "a token picks the same expert twice in one layer"),
        ({}, {"topk_ids": np.full((5, 2, 3), 200, dtype=np.uint8)}, "topk_ids", "ids must be in [0, 10), got"),
        ({}, {"transitions": np.zeros((1, 10, 10), dtype=np.int64)}, "transitions", "rows of pair 0 do not sum"),
    ],
)
def test_bad_npz_fields(tmp_path: Path, meta_change: dict, arrays: dict | None, field: str, problem: str) -> None:
    """A native .npz with one bad metadata field or array: one line naming the file and the field."""
    t = small_trace()
    meta = {k: v for k, v in native_doc().items() if k not in ("counts", "transitions", "topk_ids")}
    meta.update(meta_change)
    entries: dict[str, np.ndarray | None] = {
        "counts": t.counts,
        "transitions": t.transitions,
        "topk_ids": t.topk_ids.astype(np.uint8),
    }
    entries.update(arrays or {})
    p = tmp_path / "bad.npz"
    np.savez(
        p,
        meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        **{k: v for k, v in entries.items() if v is not None},
    )
    with pytest.raises(TraceError) as exc:
        load_native_npz(p)
    msg = str(exc.value)
    assert msg.startswith(f"{p}: {field}: {problem}"), msg
    assert "\n" not in msg


def test_missing_npz_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.npz"
    with pytest.raises(TraceError) as exc:
        load_native_npz(p)
    assert str(exc.value).startswith(f"{p}: npz: cannot read: ") and "No such file" in str(exc.value)

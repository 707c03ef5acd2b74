"""moesim.traces.trace and .native: the RoutingTrace contract, derivations, validation and the native round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.errors import SpecError, TraceError
from moesim.specs import ModelSpec
from moesim.traces.formats import load_trace
from moesim.traces.native import save_trace
from moesim.traces.trace import RoutingTrace, counts_from_topk, top_successor_share, transitions_from_topk


@st.composite
def topk_arrays(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    """Random topk_ids [T, L, k] with k distinct experts per token and layer."""
    E = draw(st.integers(1, 12))
    k = draw(st.integers(1, E))
    T = draw(st.integers(0, 40))
    L = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    ids = np.argsort(rng.random((T, L, E)), axis=2)[:, :, :k].astype(np.int32)
    return ids, E


@settings(max_examples=60, deadline=None)
@given(topk_arrays())
def test_counts_from_topk_equal_bincount(arg: tuple[np.ndarray, int]) -> None:
    ids, E = arg
    counts = counts_from_topk(ids, E)
    for layer in range(ids.shape[1]):
        assert np.array_equal(counts[layer], np.bincount(ids[:, layer].ravel(), minlength=E))
    assert (counts.sum(axis=1) == ids.shape[0] * ids.shape[2]).all()


@settings(max_examples=60, deadline=None)
@given(topk_arrays())
def test_transitions_rows_and_columns(arg: tuple[np.ndarray, int]) -> None:
    ids, E = arg
    counts = counts_from_topk(ids, E)
    tr = transitions_from_topk(ids, E)
    assert tr.shape == (ids.shape[1] - 1, E, E)
    assert np.array_equal(tr.sum(axis=2), counts[:-1])  # rows sum to the earlier layer's counts
    assert np.array_equal(tr.sum(axis=1), counts[1:])  # rank pairing: columns to the later layer's


def test_transitions_by_hand() -> None:
    # token 0: layer0 (0, 1) -> layer1 (2, 0); token 1: layer0 (1, 2) -> layer1 (2, 1)
    ids = np.array([[[0, 1], [2, 0]], [[1, 2], [2, 1]]])
    tr = transitions_from_topk(ids, 3)
    want = np.zeros((1, 3, 3), dtype=np.int64)
    want[0, 0, 2] = 1  # token 0 rank 0
    want[0, 1, 0] = 1  # token 0 rank 1
    want[0, 1, 2] = 1  # token 1 rank 0
    want[0, 2, 1] = 1  # token 1 rank 1
    assert np.array_equal(tr, want)


@settings(max_examples=40, deadline=None)
@given(topk_arrays(), st.booleans(), st.sampled_from([".npz", ".json"]))
def test_native_round_trip(
    tmp_path_factory: pytest.TempPathFactory, arg: tuple[np.ndarray, int], keep: bool, suffix: str
) -> None:
    ids, E = arg
    layers = tuple(range(3, 3 + 2 * ids.shape[1], 2))
    trace = RoutingTrace.from_topk_ids(ids, E, layers=layers, model="x-model", source="unit test", keep_topk_ids=keep)
    path = tmp_path_factory.mktemp("rt") / f"t{suffix}"
    save_trace(trace, path)
    back = load_trace(path)
    assert back == trace
    assert back.layers == layers and back.model == "x-model" and back.source == "unit test"
    assert (back.topk_ids is not None) == keep
    assert back.counts.dtype == np.int64


def test_round_trip_without_transitions(tmp_path: Path) -> None:
    trace = RoutingTrace(
        model="",
        num_experts=4,
        top_k=2,
        layers=(5,),
        counts=np.array([[3, 1, 0, 2]]),
        num_tokens=3,
        transitions=None,
        topk_ids=None,
        source="",
    )
    save_trace(trace, tmp_path / "a.npz")
    assert load_trace(tmp_path / "a.npz") == trace
    # the write is atomic: no temp files left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz"]


def _trace(**kw: object) -> RoutingTrace:
    args: dict[str, object] = {
        "model": "m",
        "num_experts": 4,
        "top_k": 2,
        "layers": (0, 1),
        "counts": np.array([[2, 1, 1, 0], [1, 1, 1, 1]]),
        "num_tokens": 2,
        "transitions": None,
        "topk_ids": None,
        "source": "f.npz",
    }
    args.update(kw)
    return RoutingTrace(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"counts": np.array([[2, 1, 1, 0]])}, "counts"),  # shape
        ({"counts": np.array([[2, 1, 1, 1], [1, 1, 1, 1]])}, "counts"),  # sum != T*k
        ({"counts": np.array([[3, 1, 1, -1], [1, 1, 1, 1]])}, "counts"),  # negative
        ({"top_k": 5}, "top_k"),
        ({"num_experts": 0}, "num_experts"),
        ({"layers": (0, 0)}, "layers"),
        ({"layers": ()}, "layers"),
        ({"transitions": np.zeros((1, 4, 4), dtype=int)}, "transitions"),  # rows disagree with counts
        ({"transitions": np.zeros((2, 4, 4), dtype=int)}, "transitions"),  # shape
        ({"topk_ids": np.array([[[0, 0], [0, 1]], [[1, 2], [2, 3]]])}, "topk_ids"),  # duplicate expert
        ({"topk_ids": np.array([[[0, 4], [0, 1]], [[1, 2], [2, 3]]])}, "topk_ids"),  # out of range
        ({"topk_ids": np.array([[[0, 1], [0, 1]], [[1, 2], [2, 3]]])}, "counts"),  # disagree with counts
    ],
)
def test_validation_names_file_and_field(kw: dict[str, object], field: str) -> None:
    with pytest.raises(TraceError) as exc:
        _trace(**kw)
    msg = str(exc.value)
    assert msg.startswith(f"f.npz: {field}: "), msg
    assert "\n" not in msg
    assert isinstance(exc.value, SpecError)


def test_valid_trace_with_everything() -> None:
    ids = np.array([[[0, 1], [0, 1]], [[0, 2], [2, 3]]])
    t = _trace(counts=counts_from_topk(ids, 4), topk_ids=ids, transitions=transitions_from_topk(ids, 4))
    assert t.topk_ids.dtype == np.int32 and t.num_layers == 2 and t.layer_index(1) == 1
    with pytest.raises(TraceError, match="layers: layer 9 not recorded"):
        t.layer_index(9)
    with pytest.raises(ValueError):
        t.counts[0, 0] = 5  # arrays are frozen with the dataclass


def test_load_stats_by_hand() -> None:
    t = _trace()
    st_ = t.load_stats()
    assert st_["max"].tolist() == [2, 1] and st_["mean"].tolist() == [1.0, 1.0]
    assert st_["max_over_mean"].tolist() == [2.0, 1.0]
    assert st_["cv"][0] == pytest.approx(np.std([2, 1, 1, 0])) and st_["cv"][1] == 0


def test_top_successor_share_by_hand() -> None:
    # 10 experts; expert 0 sends 6 tokens to 0..8 (one each, 2 to expert 0... see below) and 4 to 9
    tr = np.zeros((1, 10, 10), dtype=np.int64)
    tr[0, 0, :] = [2, 1, 1, 1, 1, 1, 1, 1, 1, 0]  # 10 tokens, top-8 successors hold 9
    tr[0, 1, 3] = 10  # all on one successor
    share, ind = top_successor_share(tr, 8)
    assert share[0] == pytest.approx(19 / 20)
    col = tr[0].sum(axis=0)  # [2, 1, 1, 11, 1, 1, 1, 1, 1, 0]
    assert ind[0] == pytest.approx(np.sort(col)[::-1][:8].sum() / 20)
    assert top_successor_share(np.zeros((0, 3, 3), dtype=int))[0].shape == (0,)


def _olmoe_counts_trace() -> RoutingTrace:
    """Counts only, OLMoE's shape (64 experts, top-8) in the shipped traces' layers 0, 7, 15."""
    return RoutingTrace(
        model="olmoe-1b-7b",
        num_experts=64,
        top_k=8,
        layers=(0, 7, 15),
        counts=np.full((3, 64), 8),
        num_tokens=64,
        source="x",
    )


def test_check_model_messages(make_model) -> None:
    t = _olmoe_counts_trace()
    with pytest.raises(TraceError) as exc:
        t.check_model(make_model(256, 8, tuple(range(3, 61)), 61, "deepseek-v3"), "olmoe_c4.npz")
    assert str(exc.value) == "olmoe_c4.npz: num_experts: trace has 64 experts but model deepseek-v3 has 256"
    with pytest.raises(TraceError, match=r"^o: top_k: trace has top_k 8 but model q has 4$"):
        t.check_model(make_model(64, 4, tuple(range(16)), 16, "q"), "o")
    with pytest.raises(TraceError, match=r"^o: layers: trace layers \[0\] are not MoE layers of model d"):
        t.check_model(make_model(64, 8, tuple(range(1, 16)), 16, "d"), "o")
    t.check_model(make_model(64, 8, tuple(range(16)), 16, "olmoe-1b-7b"), "o")  # fits


def test_check_model_with_real_spec(deepseek_v3: ModelSpec, olmoe: ModelSpec) -> None:
    t = _olmoe_counts_trace()
    t.check_model(olmoe, "x")
    with pytest.raises(TraceError, match="num_experts: trace has 64 experts but model deepseek-v3 has 256"):
        t.check_model(deepseek_v3, "x")


# ------------------------------------------------------------------ found by benchmarks/bench_fuzz.py (issue 15)
def _npz(tmp_path: Path, meta: object = None, **arrays: np.ndarray) -> Path:
    """A native .npz whose meta is ``meta`` as JSON (or raw bytes / an array), beside ``arrays``."""
    if isinstance(meta, np.ndarray):
        arrays["meta"] = meta
    else:
        raw = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
        arrays["meta"] = np.frombuffer(raw, dtype=np.uint8)
    path = tmp_path / "t.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "meta, match",
    [
        (float("nan"), "meta: expected a JSON object, got float"),  # AttributeError: .get on a float
        ([1, 2], "meta: expected a JSON object, got list"),
        (b"[" * 100_000, "meta: nested too deeply"),  # RecursionError from json.loads
        (b"{x", "meta: bad JSON at line 1 column 2"),
        (b"\xff\xfe", "npz: cannot read: 'utf-8' codec can't decode"),
        (np.zeros(3, dtype=np.int64), "meta: expected the uint8 bytes of a JSON object, got int64"),
    ],
)
def test_npz_meta_not_an_object(tmp_path: Path, meta: object, match: str) -> None:
    with pytest.raises(TraceError, match=f"t.npz: {match}"):
        load_trace(_npz(tmp_path, meta, counts=np.zeros((1, 2), dtype=np.int64)))


def _corrupt(path: Path, offset: int, new: bytes) -> Path:
    data = bytearray(path.read_bytes())
    data[offset : offset + len(new)] = new
    path.write_bytes(bytes(data))
    return path


def test_npz_corrupt_member(tmp_path: Path) -> None:
    """A damaged archive raised zipfile.BadZipFile, zlib.error or NotImplementedError from inside np.load."""
    import zipfile

    save_trace(_trace(), tmp_path / "t.npz")  # compressed
    with zipfile.ZipFile(tmp_path / "t.npz") as z:
        info = {i.filename: i for i in z.infolist()}
    good = (tmp_path / "t.npz").read_bytes()
    counts = info["counts.npy"]
    name_len, extra_len = np.frombuffer(good[counts.header_offset + 26 : counts.header_offset + 30], "<u2")
    data_at = counts.header_offset + 30 + int(name_len) + int(extra_len)  # the member's deflate stream
    entry = b"PK\x01\x02"  # a central directory entry; its name starts 46 bytes in
    central = next(
        i
        for i in range(len(good))
        if good[i : i + 4] == entry and good[i + 46 : i + 46 + len(counts.filename)] == counts.filename.encode()
    )
    cases = [
        (counts.header_offset, b"XX"),  # local header magic: BadZipFile "Bad magic number for file header"
        (data_at, b"\xff\xff\xff\xff"),  # deflate stream: zlib.error, or BadZipFile "Bad CRC-32"
        (central + 10, b"\x63"),  # compression method 99 (central directory): NotImplementedError
    ]
    for offset, new in cases:
        (tmp_path / "t.npz").write_bytes(good)
        with pytest.raises(TraceError, match=r"t\.npz: npz: cannot read: "):
            load_trace(_corrupt(tmp_path / "t.npz", offset, new))

"""moesim.traces.formats.vllm: vLLM routed_experts .npy files and directories."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moesim.errors import TraceError
from moesim.traces.formats import load_trace
from moesim.traces.trace import counts_from_topk, transitions_from_topk


# ------------------------------------------------------------------ vLLM routed_experts
def test_vllm_npy_file_and_directory(tmp_path: Path, make_model, random_ids) -> None:
    a, b = random_ids(30, 4, 16, 2, 1), random_ids(12, 4, 16, 2, 2)
    np.save(tmp_path / "req_000.npy", a)
    np.save(tmp_path / "req_001.npy", b)
    one = load_trace(tmp_path / "req_000.npy")
    assert one.topk_ids.shape == (30, 4, 2) and np.array_equal(one.topk_ids, a)
    assert one.num_experts == int(a.max()) + 1  # without a model, E = max id + 1
    m = make_model(16, 2, (1, 2, 3, 4), 5)
    both = load_trace(tmp_path, model=m)
    ids = np.concatenate([a, b])
    assert both.num_tokens == 42 and both.layers == (1, 2, 3, 4) and both.model == "m"
    assert np.array_equal(both.counts, counts_from_topk(ids, 16))
    assert np.array_equal(both.transitions, transitions_from_topk(ids, 16))


def test_vllm_all_layers_drops_dense(tmp_path: Path, make_model, random_ids) -> None:
    ids = random_ids(10, 5, 8, 2)
    ids[:, 0] = 0  # a dense layer would not route; the importer drops it by the model's MoE layers
    np.save(tmp_path / "r.npy", ids)
    t = load_trace(tmp_path / "r.npy", model=make_model(8, 2, (1, 2, 3, 4), 5))
    assert t.layers == (1, 2, 3, 4) and np.array_equal(t.topk_ids, ids[:, 1:])
    with pytest.raises(TraceError, match="num_layers: file has 5 layers"):
        load_trace(tmp_path / "r.npy", model=make_model(8, 2, (1, 2), 3))


def test_vllm_all_hidden_layers_without_model(tmp_path: Path, random_ids) -> None:
    """vllm/model_executor/layers/fused_moe/routed_experts_capturer.py sizes its int32 buffer by num_hidden_layers
    and fills it with zeros, so dense layers (DeepSeek's first_k_dense_replace) come back as all-zero rows."""
    ids = random_ids(12, 4, 8, 2, 9)
    ids[:, 0] = 0
    np.save(tmp_path / "r.npy", ids)
    t = load_trace(tmp_path / "r.npy")
    assert t.layers == (1, 2, 3) and np.array_equal(t.topk_ids, ids[:, 1:])
    assert t.counts.sum(axis=1).tolist() == [24, 24, 24]
    one = np.zeros((5, 3, 1), dtype=np.int16)  # top-1 (int16 as vLLM 0.21 returns it): zeros may be real routing
    np.save(tmp_path / "k1.npy", one)
    assert load_trace(tmp_path / "k1.npy").layers == (0, 1, 2)


def test_vllm_bad_arrays(tmp_path: Path, make_model, random_ids) -> None:
    np.save(tmp_path / "f.npy", np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(TraceError, match=r"f.npy: routed_experts: expected an int array"):
        load_trace(tmp_path / "f.npy")
    ids = random_ids(4, 2, 8, 2)
    np.save(tmp_path / "g.npy", ids)
    with pytest.raises(TraceError, match="num_experts: trace has expert id 7 but model m has 4 experts"):
        load_trace(tmp_path / "g.npy", model=make_model(4, 2, (0, 1), 2))
    d = tmp_path / "d"
    d.mkdir()
    np.save(d / "a.npy", random_ids(4, 2, 8, 2))
    np.save(d / "b.npy", random_ids(4, 3, 8, 2))
    with pytest.raises(TraceError, match="requests disagree"):
        load_trace(d)


# ------------------------------------------------------------------ found by benchmarks/bench_fuzz.py (issue 15)
def _npy(tmp_path: Path, arr: np.ndarray) -> Path:
    p = tmp_path / "routed_experts.npy"
    np.save(p, arr)
    return p


@pytest.mark.parametrize(
    "ids, match",
    [
        # E = max id + 1 without a model: a corrupt id asked for [L, 2**40] counts (MemoryError) or more than numpy's
        # largest dimension (ValueError)
        (np.array([[[0, 2**40]]]), r"routed_experts: expert id 1099511627776, more than moesim's limit of 8192"),
        (np.zeros((1, 1025, 1), dtype=np.int32), "routed_experts: 1025 layers, more than moesim's limit of 1024"),
        # 8 layer pairs of 8192 x 8192 transitions: 4 GiB of counts from a few bytes
        (np.full((1, 9, 1), 8191), "routed_experts: 9 layers of 8192 experts need 536,870,912 transition counts"),
    ],
)
def test_npy_sizes_from_ids_are_bounded(tmp_path: Path, ids: np.ndarray, match: str) -> None:
    with pytest.raises(TraceError, match=f"routed_experts.npy: {match}"):
        load_trace(_npy(tmp_path, ids))


def test_npy_unsigned_ids(tmp_path: Path, random_ids) -> None:
    """uint64 ids: np.bincount cannot cast them (TypeError); now counted as int32 once their range is checked."""
    ids = random_ids(6, 2, 4, 2)
    assert load_trace(_npy(tmp_path, ids.astype(np.uint64))) == load_trace(_npy(tmp_path, ids))
    assert load_trace(_npy(tmp_path, np.zeros((0, 2, 1), dtype=np.uint64))).num_tokens == 0
    with pytest.raises(TraceError, match="top_k: must be in"):  # no ids: E = 1 < k
        load_trace(_npy(tmp_path, np.zeros((0, 2, 2), dtype=np.uint64)))


def test_npy_truncated_header(tmp_path: Path) -> None:
    """A header length cut short made numpy's header parser raise tokenize.TokenError."""
    p = _npy(tmp_path, np.zeros((2, 2, 2), dtype=np.int32))
    data = bytearray(p.read_bytes())
    data[8] = 20  # header length: stops inside the header's dict
    p.write_bytes(bytes(data))
    with pytest.raises(TraceError, match="routed_experts.npy: npy: cannot read: "):
        load_trace(p)

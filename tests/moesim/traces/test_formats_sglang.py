"""moesim.traces.formats.sglang: SGLang expert-distribution dumps (real torch.save files)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from moesim.errors import TraceError
from moesim.traces.formats import detect_format, load_trace
from moesim.traces.trace import counts_from_topk, transitions_from_topk


# ------------------------------------------------------------------ SGLang dumps (real torch.save files)
def _torch():
    return pytest.importorskip("torch", reason="writing SGLang .pt dumps needs torch (the kernels extra)")


def test_sglang_stat(tmp_path: Path, make_model, random_ids) -> None:
    """stat mode: {"rank", "logical_count": int32 [steps, num_layers, E], "average_utilization_rate_over_window"}."""
    torch = _torch()
    rng = np.random.default_rng(0)
    L_model, E, k, steps = 6, 16, 4, 5
    ids = random_ids(100, L_model - 1, E, k)
    per_step = np.zeros((steps, L_model, E), dtype=np.int64)
    chunks = np.array_split(np.arange(100), steps)
    for s, c in enumerate(chunks):  # counts per forward pass, as SGLang buffers them
        per_step[s, 1:] = counts_from_topk(ids[c], E)
    per_step[:, 0] = 0  # layer 0 dense: SGLang keeps a zero row
    path = tmp_path / "expert_distribution_recorder_1700000000.0.pt"
    torch.save(
        {
            "rank": 0,
            "logical_count": torch.from_numpy(per_step).to(torch.int32),
            "average_utilization_rate_over_window": None,
        },
        path,
    )
    assert detect_format(path) == "pt"
    with pytest.raises(TraceError, match="top_k: SGLang stat dumps do not record top-k"):
        load_trace(path)
    m = make_model(E, k, tuple(range(1, L_model)), L_model)
    t = load_trace(path, model=m)
    assert t.layers == (1, 2, 3, 4, 5) and t.num_tokens == 100 and t.transitions is None
    assert np.array_equal(t.counts, counts_from_topk(ids, E))
    t2 = load_trace(path, top_k=k)  # no model: zero (dense) layers dropped
    assert t2.layers == (1, 2, 3, 4, 5) and np.array_equal(t2.counts, t.counts)
    del rng


def test_sglang_per_token(tmp_path: Path, make_model, random_ids) -> None:
    """per_token mode: records with topk_ids_of_layer int32 [num_layers, tokens, 8] of physical ids (-1 unused)
    and last_physical_to_logical_map [num_layers, num_physical]."""
    torch = _torch()
    L_model, E, k, P = 4, 8, 2, 10  # 10 physical slots: experts 0 and 1 have a redundant replica
    moe = (1, 2, 3)
    ids = random_ids(50, 3, E, k, 3)  # logical
    p2l = np.tile(np.r_[np.arange(E), 0, 1], (L_model, 1))  # slots 8, 9 are replicas of 0, 1
    rng = np.random.default_rng(4)
    phys = ids.copy()
    use_replica = (ids < 2) & (rng.random(ids.shape) < 0.5)
    phys[use_replica] += 8
    records = []
    for s, c in enumerate(np.array_split(np.arange(50), 3)):
        buf = -np.ones((L_model, len(c), 8), dtype=np.int32)  # SGLang's _TOP_K_NUM = 8 columns
        buf[1:, :, :k] = phys[c].transpose(1, 0, 2)
        records.append(
            {
                "forward_pass_id": s,
                "rank": 0,
                "gatherer_key": "primary",
                "input_ids": list(range(len(c))),
                "positions": list(range(len(c))),
                "extend_seq_lens": [len(c)],
                "forward_mode": 1,
                "topk_ids_of_layer": torch.from_numpy(buf),
                "misc_objects": [],
                "global_physical_count": torch.zeros((L_model, P), dtype=torch.int32),
            }
        )
    path = tmp_path / "expert_distribution_recorder_1_0.pt"
    torch.save({"records": records, "last_physical_to_logical_map": torch.from_numpy(p2l)}, path)
    t = load_trace(path)  # no model: dense layer and unused columns found from the -1s
    assert t.layers == moe and t.top_k == k and t.num_tokens == 50
    assert np.array_equal(t.topk_ids, ids)
    t2 = load_trace(path, model=make_model(E, k, moe, L_model))
    assert np.array_equal(t2.counts, counts_from_topk(ids, E))
    assert np.array_equal(t2.transitions, transitions_from_topk(ids, E))


def test_sglang_per_pass_counts(tmp_path: Path, make_model, random_ids) -> None:
    torch = _torch()
    L_model, E, k = 3, 8, 2
    p2l = np.tile(np.arange(E), (L_model, 1))
    ids = random_ids(40, L_model, E, k)
    gpc = counts_from_topk(ids, E)
    path = tmp_path / "per_pass.pt"
    torch.save(
        {
            "records": [{"forward_pass_id": 0, "rank": 0, "global_physical_count": torch.from_numpy(gpc)}],
            "last_physical_to_logical_map": torch.from_numpy(p2l),
        },
        path,
    )
    t = load_trace(path, model=make_model(E, k, (0, 1, 2), L_model))
    assert np.array_equal(t.counts, gpc) and t.num_tokens == 40


class NotAllowed:
    """A pickled class instance: weights_only=True must refuse it."""

    def __init__(self) -> None:
        self.x = 1


def test_sglang_unknown_and_unsafe(tmp_path: Path) -> None:
    torch = _torch()
    p = tmp_path / "other.pt"
    torch.save({"something": torch.zeros(3)}, p)
    with pytest.raises(TraceError, match=r"other.pt: format: torch file holds \['something'\]; looked for SGLang"):
        load_trace(p)
    q = tmp_path / "unsafe.pt"
    torch.save({"logical_count": NotAllowed()}, q)
    with pytest.raises(TraceError, match=r"unsafe.pt: pt: torch.load\(weights_only=True\) failed"):
        load_trace(q)


def _per_token_dump(torch, phys: np.ndarray, p2l: np.ndarray, rank: int, first_pass: int = 0) -> dict:
    """A per_token dump as _DetailAccumulator.dump writes it (python/sglang/srt/eplb/expert_distribution.py):
    phys [T, L_model - 1, k] physical ids for MoE layers 1.., layer 0 dense (-1), decode passes (extend_seq_lens
    None), one record per pass."""
    L_model = p2l.shape[0]
    records = []
    for s, c in enumerate(np.array_split(np.arange(len(phys)), 2)):
        buf = -np.ones((L_model, len(c), 8), dtype=np.int32)
        buf[1:, :, : phys.shape[2]] = phys[c].transpose(1, 0, 2)
        records.append(
            {
                "forward_pass_id": first_pass + s,
                "rank": rank,
                "gatherer_key": "primary",
                "input_ids": list(range(len(c))),
                "positions": list(range(len(c))),
                "extend_seq_lens": None,
                "forward_mode": 2,
                "topk_ids_of_layer": torch.from_numpy(buf),
                "misc_objects": [{"layer_id": 1, "num_tokens_per_rank": [len(c), 0]}],
                "global_physical_count": torch.zeros((L_model, p2l.shape[1]), dtype=torch.int32),
            }
        )
    return {"records": records, "last_physical_to_logical_map": torch.from_numpy(p2l)}


def test_sglang_dump_directory_per_rank(tmp_path: Path, make_model, random_ids) -> None:
    """per_token mode writes expert_distribution_recorder_{time}_{rank}.pt per rank into one directory. Tensor
    parallel ranks record the same passes (counted once with dedup_ranks); data-parallel ranks record different
    tokens, and each file maps physical ids with its own last_physical_to_logical_map."""
    torch = _torch()
    L_model, E, k = 3, 8, 2
    m = make_model(E, k, (1, 2), L_model)
    a, b = random_ids(20, 2, E, k, 5), random_ids(30, 2, E, k, 6)  # logical ids of rank 0 and rank 1
    p2l_0 = np.tile(np.r_[np.arange(E), 0, 1], (L_model, 1))  # slots 8, 9 replicate experts 0, 1
    p2l_1 = np.tile(np.r_[np.arange(E)[::-1], 7, 6], (L_model, 1))  # another map: slot s holds expert 7 - s
    phys_a = np.where(a < 2, a + 8, a)  # rank 0 sends experts 0, 1 to their replicas
    phys_b = 7 - b  # rank 1: logical e sits in slot 7 - e under p2l_1
    tp = tmp_path / "tp"
    tp.mkdir()
    for rank in (0, 1):  # TP: both ranks dump the same passes
        torch.save(_per_token_dump(torch, phys_a, p2l_0, rank), tp / f"expert_distribution_recorder_1.5_{rank}.pt")
    t = load_trace(tp, model=m, dedup_ranks=True)
    assert t.num_tokens == 20 and np.array_equal(t.topk_ids, a)
    kept = load_trace(tp, model=m)  # by default every rank's pass counts: same distribution, twice the tokens
    assert kept.num_tokens == 40 and np.array_equal(kept.counts, 2 * t.counts)
    dp = tmp_path / "dp"
    dp.mkdir()
    torch.save(_per_token_dump(torch, phys_a, p2l_0, 0), dp / "expert_distribution_recorder_1.5_0.pt")
    torch.save(_per_token_dump(torch, phys_b, p2l_1, 1), dp / "expert_distribution_recorder_1.5_1.pt")
    t = load_trace(dp, model=m)
    assert t.num_tokens == 50 and t.layers == (1, 2)
    assert np.array_equal(t.topk_ids, np.concatenate([a, b]))
    assert detect_format(dp) == "pt-dir"


def test_sglang_stat_directory_sums_dumps(tmp_path: Path, make_model, random_ids) -> None:
    """stat mode: rank 0 writes expert_distribution_recorder_{time}.pt per dump; several dumps are summed."""
    torch = _torch()
    E, k = 8, 2
    ids = random_ids(60, 2, E, k, 7)
    for i, c in enumerate(np.array_split(np.arange(60), 2)):
        lc = np.zeros((4, 3, E), dtype=np.int32)  # circular buffer of 4 steps; dense layer 0 stays zero
        lc[0, 1:] = counts_from_topk(ids[c], E)
        torch.save(
            {"rank": 0, "logical_count": torch.from_numpy(lc), "average_utilization_rate_over_window": 0.9},
            tmp_path / f"expert_distribution_recorder_17000000{i}.25.pt",
        )
    t = load_trace(tmp_path, model=make_model(E, k, (1, 2), 3))
    assert t.num_tokens == 60 and np.array_equal(t.counts, counts_from_topk(ids, E))
    assert load_trace(tmp_path, top_k=k).layers == (1, 2)


def test_sglang_directory_mixed_modes_and_suffixes(tmp_path: Path, random_ids) -> None:
    torch = _torch()
    torch.save({"rank": 0, "logical_count": torch.zeros((1, 2, 4), dtype=torch.int32)}, tmp_path / "a.pt")
    torch.save(
        {"records": [], "last_physical_to_logical_map": torch.zeros((2, 4), dtype=torch.int64)}, tmp_path / "b.pt"
    )
    with pytest.raises(TraceError, match="format: mixes SGLang stat dumps"):
        load_trace(tmp_path)
    np.save(tmp_path / "c.npy", random_ids(3, 2, 4, 2))
    with pytest.raises(TraceError, match="format: directory holds both .npy and .pt"):
        load_trace(tmp_path)


def test_sglang_per_pass_top_k_from_caller(tmp_path: Path, random_ids) -> None:
    torch = _torch()
    E, k = 8, 2
    gpc = counts_from_topk(random_ids(40, 3, E, k), E)
    torch.save(
        {
            "records": [
                {
                    "forward_pass_id": 0,
                    "rank": 0,
                    "gatherer_key": "primary",
                    "global_physical_count": torch.from_numpy(gpc),
                }
            ],
            "last_physical_to_logical_map": torch.from_numpy(np.tile(np.arange(E), (3, 1))),
        },
        tmp_path / "per_pass.pt",
    )
    t = load_trace(tmp_path / "per_pass.pt", top_k=k)
    assert t.num_tokens == 40 and t.layers == (0, 1, 2)


def test_pt_without_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = _torch()
    p = tmp_path / "stat.pt"
    torch.save({"logical_count": torch.zeros((1, 2, 4), dtype=torch.int32)}, p)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(TraceError, match=r"stat.pt: format: .*pip install 'moesim\[kernels\]'"):
        load_trace(p)


def test_sglang_damaged_dumps(tmp_path: Path) -> None:
    torch = _torch()
    cases = [
        # mixed key types: sorted() raised TypeError while naming the keys
        ({1: 0, "a": 0, None: 0}, r"format: torch file holds \['1', 'None', 'a'\]"),
        # a ragged logical_count: np.asarray raised ValueError
        ({"logical_count": [[1, 2], [3]]}, "logical_count: not a rectangular numeric array"),
        # per_pass: a map of another shape (IndexError / ValueError in np.add.at), an empty one (max of nothing),
        # one naming 2**40 experts (MemoryError)
        (
            {
                "records": [{"global_physical_count": torch.zeros((2, 4), dtype=torch.int32)}],
                "last_physical_to_logical_map": torch.zeros((2, 3), dtype=torch.int64),
            },
            r"global_physical_count: shape \(2, 4\), but the last_physical_to_logical_map is \(2, 3\)",
        ),
        (
            {
                "records": [{"global_physical_count": torch.zeros((0, 4), dtype=torch.int32)}],
                "last_physical_to_logical_map": torch.zeros((0, 4), dtype=torch.int64),
            },
            "logical_count: no layer",
        ),
        (
            {
                "records": [{"global_physical_count": torch.zeros((1, 2), dtype=torch.int32)}],
                "last_physical_to_logical_map": torch.tensor([[0, 2**40]]),
            },
            "last_physical_to_logical_map: logical expert 1099511627776, beyond the 8192 of moesim's limit",
        ),
    ]
    for i, (obj, match) in enumerate(cases):
        p = tmp_path / f"d{i}.pt"
        torch.save(obj, p)
        with pytest.raises(TraceError, match=f"d{i}.pt: {match}"):
            load_trace(p, top_k=1)  # per_pass counts do not record top-k either


def test_sglang_records_with_odd_ids(tmp_path: Path, random_ids) -> None:
    """A list as forward_pass_id or gatherer_key made the dedup key unhashable (TypeError); records whose
    topk_ids_of_layer disagree on columns failed in np.concatenate (ValueError)."""
    torch = _torch()
    ids = random_ids(4, 2, 4, 2)
    buf = -np.ones((3, 4, 8), dtype=np.int32)
    buf[1:, :, :2] = ids.transpose(1, 0, 2)
    rec = {"forward_pass_id": [0, 1], "gatherer_key": [[1]], "topk_ids_of_layer": torch.from_numpy(buf)}
    torch.save({"records": [rec]}, tmp_path / "a.pt")
    assert np.array_equal(load_trace(tmp_path / "a.pt").topk_ids, ids)
    other = dict(rec, topk_ids_of_layer=torch.from_numpy(buf[:, :, :7].copy()))
    torch.save({"records": [rec, other]}, tmp_path / "b.pt")
    with pytest.raises(TraceError, match="b.pt: topk_ids_of_layer: records disagree on the number of layers or of"):
        load_trace(tmp_path / "b.pt")


def test_sglang_large_ids_not_wrapped(tmp_path: Path) -> None:
    """ids were cast to int32 before their range was checked: 2**32 + 3 read as expert 3."""
    torch = _torch()
    buf = np.zeros((1, 2, 1), dtype=np.int64)
    buf[0, 1, 0] = 2**32 + 3
    torch.save({"records": [{"topk_ids_of_layer": torch.from_numpy(buf)}]}, tmp_path / "w.pt")
    with pytest.raises(TraceError, match="w.pt: routed_experts: expert id 4294967299, more than moesim's limit"):
        load_trace(tmp_path / "w.pt")


def test_torch_load_failure_is_one_quiet_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch raised an exception without a message (IndexError in the message's first line), and warned on stderr
    about the pickle protocol of a damaged file before failing."""
    import warnings

    torch = _torch()

    def failing_load(*args: object, **kwargs: object) -> None:
        warnings.warn("Detected pickle protocol 213 in the checkpoint", UserWarning, stacklevel=1)
        raise RuntimeError("")

    p = tmp_path / "x.pt"
    torch.save({"logical_count": torch.zeros(1)}, p)
    monkeypatch.setattr(torch, "load", failing_load)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TraceError, match=r"x.pt: pt: torch.load\(weights_only=True\) failed: RuntimeError$"):
            load_trace(p)

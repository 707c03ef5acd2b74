"""moesim.trace_import: format detection and the SGLang, vLLM, OLMoE-analysis and native importers."""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from moesim.errors import TraceError
from moesim.trace import RoutingTrace, counts_from_topk, load_trace, save_trace, transitions_from_topk
from moesim.trace_import import convert_olmoe_analysis, detect_format

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "profiles" / "traces"
SHARED = REPO.parent / "shared" / "data" / "routing" / "olmoe_analysis"
DOMAINS = ("arxiv", "book", "c4", "github", "wikipedia")


def model(E: int, k: int, moe: tuple[int, ...], num_layers: int, slug: str = "m") -> SimpleNamespace:
    return SimpleNamespace(slug=slug, num_experts=E, top_k=k, moe_layers=moe, num_layers=num_layers)


def random_ids(T: int, L: int, E: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((T, L, E)), axis=2)[:, :, :k].astype(np.int32)


# ------------------------------------------------------------------ OLMoE analysis JSON (real data)
def _raw_dirs() -> list[Path]:
    dirs = [SHIPPED]
    if SHARED.is_dir():
        dirs.append(SHARED)
    return dirs


@pytest.mark.parametrize("stem", [f"olmoe_{d}" for d in DOMAINS] + [f"mistral_{d}" for d in DOMAINS])
def test_olmoe_json_matches_raw(stem: str) -> None:
    for d in _raw_dirs():
        raw = json.loads((d / f"{stem}.json").read_text())
        t = load_trace(d / f"{stem}.json")
        assert t.layers == (0, 7, 15)
        assert t.num_tokens == 208896
        assert np.array_equal(t.counts, np.array(raw["expert_counts"]))
        assert np.array_equal(t.transitions, np.array(raw["expert_counts_crosslayer"]["counts"]))
        assert t.model == ("olmoe-1b-7b" if stem.startswith("olmoe") else "mixtral-8x7b")
        assert (t.num_experts, t.top_k) == ((64, 8) if stem.startswith("olmoe") else (8, 2))
        assert "357454f" in t.source and "Apache-2.0" in t.source
        # the shipped native trace is exactly this conversion
        native = load_trace(SHIPPED / f"{stem.replace('mistral', 'mixtral')}.npz")
        assert native == t


def test_shared_copy_present_or_skip() -> None:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (only in the development checkout); shipped copies are tested above")
    for f in SHARED.glob("*.json"):
        assert (SHIPPED / f.name).read_bytes() == f.read_bytes(), f"{f.name}: shipped copy differs"


def test_regenerate_shipped_traces(tmp_path: Path) -> None:
    written = convert_olmoe_analysis(SHIPPED, tmp_path)
    assert len(written) == 10
    for p in written:
        assert load_trace(p) == load_trace(SHIPPED / p.name)
    assert (tmp_path / "mistral_c4.json").exists() and (tmp_path / "mixtral_c4.npz").exists()


def test_olmoe_json_bad_fields(tmp_path: Path) -> None:
    raw = json.loads((SHIPPED / "olmoe_c4.json").read_text())
    raw["expert_counts"][0][0] += 1
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(raw))
    with pytest.raises(TraceError, match=r"bad.json: expert_counts: row sums"):
        load_trace(p)
    raw = json.loads((SHIPPED / "olmoe_c4.json").read_text())
    del raw["top_k"]
    p.write_text(json.dumps(raw))
    with pytest.raises(TraceError, match=r"bad.json: top_k: missing"):
        load_trace(p)


def test_olmoe_with_model_check() -> None:
    t = load_trace(SHIPPED / "olmoe_c4.npz", model=model(64, 8, tuple(range(16)), 16, "olmoe-1b-7b"))
    assert t.model == "olmoe-1b-7b"
    with pytest.raises(TraceError, match="olmoe_c4.npz: num_experts: trace has 64 experts but model deepseek-v3 "
                                         "has 256"):
        load_trace(SHIPPED / "olmoe_c4.npz", model=model(256, 8, tuple(range(3, 61)), 61, "deepseek-v3"))


# ------------------------------------------------------------------ vLLM routed_experts
def test_vllm_npy_file_and_directory(tmp_path: Path) -> None:
    a, b = random_ids(30, 4, 16, 2, 1), random_ids(12, 4, 16, 2, 2)
    np.save(tmp_path / "req_000.npy", a)
    np.save(tmp_path / "req_001.npy", b)
    one = load_trace(tmp_path / "req_000.npy")
    assert one.topk_ids.shape == (30, 4, 2) and np.array_equal(one.topk_ids, a)
    assert one.num_experts == int(a.max()) + 1  # without a model, E = max id + 1
    m = model(16, 2, (1, 2, 3, 4), 5)
    both = load_trace(tmp_path, model=m)
    ids = np.concatenate([a, b])
    assert both.num_tokens == 42 and both.layers == (1, 2, 3, 4) and both.model == "m"
    assert np.array_equal(both.counts, counts_from_topk(ids, 16))
    assert np.array_equal(both.transitions, transitions_from_topk(ids, 16))


def test_vllm_all_layers_drops_dense(tmp_path: Path) -> None:
    ids = random_ids(10, 5, 8, 2)
    ids[:, 0] = 0  # a dense layer would not route; the importer drops it by the model's MoE layers
    np.save(tmp_path / "r.npy", ids)
    t = load_trace(tmp_path / "r.npy", model=model(8, 2, (1, 2, 3, 4), 5))
    assert t.layers == (1, 2, 3, 4) and np.array_equal(t.topk_ids, ids[:, 1:])
    with pytest.raises(TraceError, match="num_layers: file has 5 layers"):
        load_trace(tmp_path / "r.npy", model=model(8, 2, (1, 2), 3))


def test_vllm_all_hidden_layers_without_model(tmp_path: Path) -> None:
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


def test_vllm_bad_arrays(tmp_path: Path) -> None:
    np.save(tmp_path / "f.npy", np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(TraceError, match=r"f.npy: routed_experts: expected an int array"):
        load_trace(tmp_path / "f.npy")
    ids = random_ids(4, 2, 8, 2)
    np.save(tmp_path / "g.npy", ids)
    with pytest.raises(TraceError, match="num_experts: trace has expert id 7 but model m has 4 experts"):
        load_trace(tmp_path / "g.npy", model=model(4, 2, (0, 1), 2))
    d = tmp_path / "d"
    d.mkdir()
    np.save(d / "a.npy", random_ids(4, 2, 8, 2))
    np.save(d / "b.npy", random_ids(4, 3, 8, 2))
    with pytest.raises(TraceError, match="requests disagree"):
        load_trace(d)


# ------------------------------------------------------------------ SGLang dumps (real torch.save files)
def _torch():
    return pytest.importorskip("torch", reason="writing SGLang .pt dumps needs torch (the kernels extra)")


def test_sglang_stat(tmp_path: Path) -> None:
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
    torch.save({"rank": 0, "logical_count": torch.from_numpy(per_step).to(torch.int32),
                "average_utilization_rate_over_window": None}, path)
    assert detect_format(path) == "pt"
    with pytest.raises(TraceError, match="top_k: SGLang stat dumps do not record top-k"):
        load_trace(path)
    m = model(E, k, tuple(range(1, L_model)), L_model)
    t = load_trace(path, model=m)
    assert t.layers == (1, 2, 3, 4, 5) and t.num_tokens == 100 and t.transitions is None
    assert np.array_equal(t.counts, counts_from_topk(ids, E))
    from moesim.trace_import import import_trace

    t2 = import_trace(path, top_k=k)  # no model: zero (dense) layers dropped
    assert t2.layers == (1, 2, 3, 4, 5) and np.array_equal(t2.counts, t.counts)
    del rng


def test_sglang_per_token(tmp_path: Path) -> None:
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
        records.append({"forward_pass_id": s, "rank": 0, "gatherer_key": "primary",
                        "input_ids": list(range(len(c))), "positions": list(range(len(c))),
                        "extend_seq_lens": [len(c)], "forward_mode": 1,
                        "topk_ids_of_layer": torch.from_numpy(buf), "misc_objects": [],
                        "global_physical_count": torch.zeros((L_model, P), dtype=torch.int32)})
    path = tmp_path / "expert_distribution_recorder_1_0.pt"
    torch.save({"records": records, "last_physical_to_logical_map": torch.from_numpy(p2l)}, path)
    t = load_trace(path)  # no model: dense layer and unused columns found from the -1s
    assert t.layers == moe and t.top_k == k and t.num_tokens == 50
    assert np.array_equal(t.topk_ids, ids)
    t2 = load_trace(path, model=model(E, k, moe, L_model))
    assert np.array_equal(t2.counts, counts_from_topk(ids, E))
    assert np.array_equal(t2.transitions, transitions_from_topk(ids, E))


def test_sglang_per_pass_counts(tmp_path: Path) -> None:
    torch = _torch()
    L_model, E, k = 3, 8, 2
    p2l = np.tile(np.arange(E), (L_model, 1))
    ids = random_ids(40, L_model, E, k)
    gpc = counts_from_topk(ids, E)
    path = tmp_path / "per_pass.pt"
    torch.save({"records": [{"forward_pass_id": 0, "rank": 0, "global_physical_count": torch.from_numpy(gpc)}],
                "last_physical_to_logical_map": torch.from_numpy(p2l)}, path)
    t = load_trace(path, model=model(E, k, (0, 1, 2), L_model))
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
        buf[1:, :, :phys.shape[2]] = phys[c].transpose(1, 0, 2)
        records.append({"forward_pass_id": first_pass + s, "rank": rank, "gatherer_key": "primary",
                        "input_ids": list(range(len(c))), "positions": list(range(len(c))), "extend_seq_lens": None,
                        "forward_mode": 2, "topk_ids_of_layer": torch.from_numpy(buf),
                        "misc_objects": [{"layer_id": 1, "num_tokens_per_rank": [len(c), 0]}],
                        "global_physical_count": torch.zeros((L_model, p2l.shape[1]), dtype=torch.int32)})
    return {"records": records, "last_physical_to_logical_map": torch.from_numpy(p2l)}


def test_sglang_dump_directory_per_rank(tmp_path: Path) -> None:
    """per_token mode writes expert_distribution_recorder_{time}_{rank}.pt per rank into one directory. Tensor
    parallel ranks record the same passes (counted once with dedup_ranks); data-parallel ranks record different
    tokens, and each file maps physical ids with its own last_physical_to_logical_map."""
    torch = _torch()
    L_model, E, k = 3, 8, 2
    m = model(E, k, (1, 2), L_model)
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


def test_sglang_stat_directory_sums_dumps(tmp_path: Path) -> None:
    """stat mode: rank 0 writes expert_distribution_recorder_{time}.pt per dump; several dumps are summed."""
    torch = _torch()
    E, k = 8, 2
    ids = random_ids(60, 2, E, k, 7)
    for i, c in enumerate(np.array_split(np.arange(60), 2)):
        lc = np.zeros((4, 3, E), dtype=np.int32)  # circular buffer of 4 steps; dense layer 0 stays zero
        lc[0, 1:] = counts_from_topk(ids[c], E)
        torch.save({"rank": 0, "logical_count": torch.from_numpy(lc), "average_utilization_rate_over_window": 0.9},
                   tmp_path / f"expert_distribution_recorder_17000000{i}.25.pt")
    t = load_trace(tmp_path, model=model(E, k, (1, 2), 3))
    assert t.num_tokens == 60 and np.array_equal(t.counts, counts_from_topk(ids, E))
    from moesim.trace_import import import_trace

    assert import_trace(tmp_path, top_k=k).layers == (1, 2)


def test_sglang_directory_mixed_modes_and_suffixes(tmp_path: Path) -> None:
    torch = _torch()
    torch.save({"rank": 0, "logical_count": torch.zeros((1, 2, 4), dtype=torch.int32)}, tmp_path / "a.pt")
    torch.save({"records": [], "last_physical_to_logical_map": torch.zeros((2, 4), dtype=torch.int64)},
               tmp_path / "b.pt")
    with pytest.raises(TraceError, match="format: mixes SGLang stat dumps"):
        load_trace(tmp_path)
    np.save(tmp_path / "c.npy", random_ids(3, 2, 4, 2))
    with pytest.raises(TraceError, match="format: directory holds both .npy and .pt"):
        load_trace(tmp_path)


def test_sglang_per_pass_top_k_from_caller(tmp_path: Path) -> None:
    torch = _torch()
    E, k = 8, 2
    gpc = counts_from_topk(random_ids(40, 3, E, k), E)
    torch.save({"records": [{"forward_pass_id": 0, "rank": 0, "gatherer_key": "primary",
                             "global_physical_count": torch.from_numpy(gpc)}],
                "last_physical_to_logical_map": torch.from_numpy(np.tile(np.arange(E), (3, 1)))},
               tmp_path / "per_pass.pt")
    from moesim.trace_import import import_trace

    t = import_trace(tmp_path / "per_pass.pt", top_k=k)
    assert t.num_tokens == 40 and t.layers == (0, 1, 2)


def test_pt_without_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = _torch()
    p = tmp_path / "stat.pt"
    torch.save({"logical_count": torch.zeros((1, 2, 4), dtype=torch.int32)}, p)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(TraceError, match=r"stat.pt: format: .*pip install 'moesim\[kernels\]'"):
        load_trace(p)


# ------------------------------------------------------------------ detection and errors
def test_detect_by_content_not_suffix(tmp_path: Path) -> None:
    t = RoutingTrace.from_topk_ids(random_ids(5, 2, 4, 2), 4)
    save_trace(t, tmp_path / "a.npz")
    shutil.copy(tmp_path / "a.npz", tmp_path / "renamed.bin")
    assert load_trace(tmp_path / "renamed.bin") == t
    save_trace(t, tmp_path / "a.json")
    shutil.copy(tmp_path / "a.json", tmp_path / "noext")
    assert load_trace(tmp_path / "noext") == t


@pytest.mark.parametrize("content, match", [
    (b"hello world", "format: not recognised; looked for native .npz"),
    (b"{\"x\": 1}", "format: JSON is neither a moesim trace"),
    (b"{not json", "json: bad JSON at line 1 column 2"),
    (b"[" * 100_000, "json: nested too deeply"),  # RecursionError in the C decoder (fuzz, issue 15)
    (b"[1, 2]", "json: top level is not an object"),
])
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


def test_native_json_wrong_version(tmp_path: Path) -> None:
    p = tmp_path / "t.json"
    save_trace(RoutingTrace.from_topk_ids(random_ids(3, 1, 4, 2), 4), p)
    doc = json.loads(p.read_text())
    doc["version"] = 99
    p.write_text(json.dumps(doc))
    with pytest.raises(TraceError, match="t.json: version: file is version 99"):
        load_trace(p)


# ------------------------------------------------------------------ found by benchmarks/bench_fuzz.py (issue 15)
def _npy(tmp_path: Path, arr: np.ndarray) -> Path:
    p = tmp_path / "routed_experts.npy"
    np.save(p, arr)
    return p


@pytest.mark.parametrize("ids, match", [
    # E = max id + 1 without a model: a corrupt id asked for [L, 2**40] counts (MemoryError) or more than numpy's
    # largest dimension (ValueError)
    (np.array([[[0, 2**40]]]), r"routed_experts: expert id 1099511627776, more than moesim's limit of 8192"),
    (np.zeros((1, 1025, 1), dtype=np.int32), "routed_experts: 1025 layers, more than moesim's limit of 1024"),
    # 8 layer pairs of 8192 x 8192 transitions: 4 GiB of counts from a few bytes
    (np.full((1, 9, 1), 8191), "routed_experts: 9 layers of 8192 experts need 536,870,912 transition counts"),
])
def test_npy_sizes_from_ids_are_bounded(tmp_path: Path, ids: np.ndarray, match: str) -> None:
    with pytest.raises(TraceError, match=f"routed_experts.npy: {match}"):
        load_trace(_npy(tmp_path, ids))


def test_npy_unsigned_ids(tmp_path: Path) -> None:
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
    version = _zip_with(tmp_path, "archive/data.pkl",
                        lambda d: d[:d.index(central) + 6] + b"\xff\x00" + d[d.index(central) + 8:])
    for p in (bad_name, version):
        with pytest.raises(TraceError, match="x.pt: format: looks like a zip archive but cannot be opened"):
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
        ({"records": [{"global_physical_count": torch.zeros((2, 4), dtype=torch.int32)}],
          "last_physical_to_logical_map": torch.zeros((2, 3), dtype=torch.int64)},
         r"global_physical_count: shape \(2, 4\), but the last_physical_to_logical_map is \(2, 3\)"),
        ({"records": [{"global_physical_count": torch.zeros((0, 4), dtype=torch.int32)}],
          "last_physical_to_logical_map": torch.zeros((0, 4), dtype=torch.int64)}, "logical_count: no layer"),
        ({"records": [{"global_physical_count": torch.zeros((1, 2), dtype=torch.int32)}],
          "last_physical_to_logical_map": torch.tensor([[0, 2**40]])},
         "last_physical_to_logical_map: logical expert 1099511627776, beyond the 8192 of moesim's limit"),
    ]
    from moesim.trace_import import import_trace

    for i, (obj, match) in enumerate(cases):
        p = tmp_path / f"d{i}.pt"
        torch.save(obj, p)
        with pytest.raises(TraceError, match=f"d{i}.pt: {match}"):
            import_trace(p, top_k=1)  # per_pass counts do not record top-k either


def test_sglang_records_with_odd_ids(tmp_path: Path) -> None:
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

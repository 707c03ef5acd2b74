"""The fuzz's inputs (issue 15): valid seed files of every loader's kind, and the seeded mutations of them that
``benchmarks/bench_fuzz.py`` loads and classifies.

Seeds: the shipped model, GPU, cluster and scenario YAMLs, the shipped calibrations, a small placement, small
native traces (``.npz`` and JSON), a shipped OLMoE routing-analysis JSON, a vLLM ``routed_experts`` ``.npy`` and
(with torch) SGLang dumps. A mutation replaces 1-3 values of a seed's parsed tree or corrupts its bytes; the same
``random.Random`` state gives the same mutated file.
"""

from __future__ import annotations

import io
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

KINDS = (
    "model",
    "gpu",
    "cluster",
    "placement",
    "scenario",
    "calibration",
    "trace_npz",
    "trace_json",
    "olmoe_json",
    "trace_npy",
    "sglang_stat",
    "sglang_tokens",
    "sglang_passes",
)  # sglang_*: with torch
ARRAY_KEYS = ("counts", "transitions", "topk_ids")  # the arrays of a native .npz trace
DEEP = "__moesim_fuzz_deep__"  # placeholder replaced by deep nesting in the serialised text


# --------------------------------------------------------------------------------------------- seeds
@dataclass
class Seed:
    kind: str
    name: str
    suffix: str
    tree: Any  # the parsed document (dict for YAML/JSON; dict of meta + arrays for .npz; an array for .npy)
    data: bytes  # the file as written


def seed_files(workdir: Path) -> list[Seed]:
    """The valid files mutations start from (every one loads cleanly)."""
    import yaml

    from moesim.placement import contiguous, save_placement
    from moesim.traces.native import save_trace
    from moesim.traces.trace import RoutingTrace

    seeds: list[Seed] = []
    prof = ROOT / "profiles"
    for kind, folder in (("model", "models"), ("gpu", "gpus"), ("cluster", "clusters"), ("scenario", "scenarios")):
        for p in sorted((prof / folder).glob("*.yaml")):
            data = p.read_bytes()
            seeds.append(Seed(kind, p.name, ".yaml", yaml.safe_load(data), data))
    for p in sorted(prof.glob("measured/*/calibration.json")):
        data = p.read_bytes()
        seeds.append(Seed("calibration", f"{p.parent.name}.json", ".json", json.loads(data), data))
    p = prof / "traces" / "mistral_c4.json"
    seeds.append(Seed("olmoe_json", p.name, ".json", json.loads(p.read_bytes()), p.read_bytes()))

    workdir.mkdir(parents=True, exist_ok=True)
    pl = contiguous(num_experts=8, num_gpus=4, num_layers=2).with_meta(
        model="mixtral-8x7b", cluster="dgx-h100", method="contiguous", layers=[0, 1]
    )
    save_placement(pl, workdir / "seed_placement.yaml")
    data = (workdir / "seed_placement.yaml").read_bytes()
    seeds.append(Seed("placement", "seed_placement.yaml", ".yaml", yaml.safe_load(data), data))

    rng = np.random.default_rng(0)
    ids = np.stack([np.stack([rng.choice(8, 2, replace=False) for _ in range(3)]) for _ in range(12)])
    full = RoutingTrace.from_topk_ids(ids, 8, layers=(0, 7, 15), model="mixtral-8x7b", source="fuzz seed")
    for name, tr in (("ids", full), ("counts", full.without_topk_ids())):
        for suffix in (".npz", ".json"):
            path = workdir / f"seed_trace_{name}{suffix}"
            save_trace(tr, path)
            data = path.read_bytes()
            if suffix == ".json":
                seeds.append(Seed("trace_json", path.name, suffix, json.loads(data), data))
            else:
                with np.load(path, allow_pickle=False) as z:
                    tree = json.loads(bytes(z["meta"]).decode())
                    tree.update({k: z[k] for k in ARRAY_KEYS if k in z.files})
                seeds.append(Seed("trace_npz", path.name, suffix, tree, data))
    buf = io.BytesIO()
    np.save(buf, ids.astype(np.int32))
    seeds.append(Seed("trace_npy", "routed_experts.npy", ".npy", ids.astype(np.int32), buf.getvalue()))
    seeds += _sglang_seeds(ids, full)
    return seeds


def _sglang_seeds(ids: np.ndarray, trace: Any) -> list[Seed]:
    """An SGLang stat, per_token and per_pass dump of ``ids`` [T=12, L=3, k=2] (E=8), as SGLang's recorder writes
    them (see tests/moesim/traces/test_formats_sglang.py); none without torch."""
    try:
        import torch  # noqa: F401 - imported here once, so that its 1 s import is not charged to one load
    except ImportError:
        return []
    lc = np.zeros((2, 4, 8), dtype=np.int32)  # 2 steps, layer 0 dense (zero row)
    lc[0, 1:], lc[1, 1:] = trace.counts // 2, trace.counts - trace.counts // 2
    stat = {"rank": 0, "logical_count": lc, "average_utilization_rate_over_window": None}
    p2l = np.tile(np.r_[np.arange(8), 0, 1], (4, 1))  # slots 8, 9 replicate experts 0, 1
    records = []
    for s, c in enumerate(np.array_split(np.arange(len(ids)), 2)):
        topk = -np.ones((4, len(c), 8), dtype=np.int32)  # SGLang's 8 columns, -1 unused
        topk[1:, :, :2] = ids[c].transpose(1, 0, 2)
        records.append(
            {
                "forward_pass_id": s,
                "rank": 0,
                "gatherer_key": "primary",
                "input_ids": list(range(len(c))),
                "extend_seq_lens": [len(c)],
                "forward_mode": 1,
                "topk_ids_of_layer": topk,
            }
        )
    tokens = {"records": records, "last_physical_to_logical_map": p2l}
    gpc = np.zeros((4, 10), dtype=np.int32)  # per_pass: physical counts, replicas taking half of experts 0, 1
    gpc[1:, :8] = trace.counts
    gpc[1:, 8:] = trace.counts[:, :2] // 2
    gpc[1:, :2] -= trace.counts[:, :2] // 2
    passes = {
        "records": [{"forward_pass_id": 0, "rank": 0, "global_physical_count": gpc}],
        "last_physical_to_logical_map": p2l,
    }
    out = []
    for kind, tree in (("sglang_stat", stat), ("sglang_tokens", tokens), ("sglang_passes", passes)):
        seed = Seed(kind, f"{kind}.pt", ".pt", tree, b"")
        seed.data = _serialise(random.Random(0), seed, tree, [])
        out.append(seed)
    return out


# --------------------------------------------------------------------------------------------- mutations
def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every node's path (keys and list indices) in ``tree``, the root included; arrays are leaves."""
    out = [prefix]
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _paths(v, (*prefix, i))
    return out


def _get(tree: Any, path: tuple) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def _bad_value(rng: random.Random, old: Any) -> Any:
    """A value of the wrong type, size or sign for ``old``'s slot."""
    choices: list[Any] = [
        "oops",
        "",
        "12",
        [1, 2],
        [],
        {"a": 1},
        {},
        True,
        False,
        None,
        10**30,
        2**63,
        -(2**63) - 1,
        2**64,
        -1,
        0,
        1,
        1024,  # moesim's limits (specs.MAX_LAYERS, MAX_EXPERTS, MAX_GPUS, MAX_WIDTH) and int32's edge
        8192,
        2**17,
        2**20,
        2**31,
        2**32 + 3,
        math.inf,
        -math.inf,
        math.nan,
        1e308,
        -1e308,
        -0.0,
        5e-324,
        0.5,
        "x" * 100_000,
        "ünïcødé \u202e 😀",
        "\x00\x1b[31m\n",
        "\ud800",
        DEEP,
        [[1, 2], [3]],
        [None],
        ["a", "b"],
        [math.nan],
        [10**30],
    ]
    if isinstance(old, int) and not isinstance(old, bool):
        choices += [old + 1, old - 1, old * 1000, -old, float(old), old + 0.5]
    if isinstance(old, float) and math.isfinite(old):
        choices += [old * 1e6, -old, int(old)]
    if isinstance(old, list) and old:
        choices += [old[:-1], old + old[-1:], old[::-1], [old], old * 50]
    return rng.choice(choices)


def _bad_array(rng: random.Random, a: np.ndarray) -> Any:
    """An array of the wrong dtype, shape or values for ``a``'s slot (or a generic bad value)."""
    ops: list[Callable[[], Any]] = [
        lambda: a.astype(np.float64) + 0.5,
        lambda: np.where(a >= 0, np.nan, 0.0),
        lambda: a.astype(bool),
        lambda: a.astype(str),
        lambda: a.astype(np.complex128),
        lambda: a.astype(np.float16),
        lambda: -a - 1,
        lambda: a.astype(np.int64) + 2**40,
        lambda: a.astype(np.uint64) + np.uint64(2**63),
        lambda: a.reshape(-1),
        lambda: a[:0],
        lambda: a[..., :-1] if a.ndim else a,
        lambda: np.expand_dims(a, 0),
        lambda: a.T,
        lambda: np.array(7),
        lambda: np.array([1, 2], dtype=object),
        lambda: a.astype(np.int8),
        lambda: np.full(a.shape, np.iinfo(np.int64).max),
    ]
    if rng.random() < 0.2:
        return _bad_value(rng, a.tolist())
    try:
        return rng.choice(ops)()
    except (TypeError, ValueError, IndexError, OverflowError):  # an op that does not apply to a mutated array
        return _bad_value(rng, None)


def _mutate_tree(rng: random.Random, tree: Any, notes: list[str]) -> Any:
    """Replace, delete or add at 1-3 nodes of a deep copy of ``tree``; ``notes`` records what was done."""
    import copy

    tree = copy.deepcopy(tree)
    for _ in range(rng.randint(1, 3)):
        paths = _paths(tree)
        path = rng.choice(paths) if rng.random() > 0.03 else ()
        node = _get(tree, path)
        parent = _get(tree, path[:-1]) if path else None
        r = rng.random()
        if isinstance(node, dict) and r < 0.25:
            key = rng.choice(["unknown_field", 1, True, None, "x" * 300, "ü"]) if rng.random() < 0.5 else "extra"
            node[key] = _bad_value(rng, None)
            notes.append(f"add key {key!r} at {list(path)}")
        elif path and isinstance(parent, dict) and r < 0.4:
            del parent[path[-1]]
            notes.append(f"delete {list(path)}")
        elif path and isinstance(parent, list) and r < 0.4:
            del parent[path[-1]]
            notes.append(f"delete {list(path)}")
        else:
            new = _bad_array(rng, node) if isinstance(node, np.ndarray) else _bad_value(rng, node)
            short = repr(new) if len(repr(new)) < 60 else f"{type(new).__name__} of {len(repr(new))} chars"
            notes.append(f"set {list(path)} = {short}")
            if path:
                parent[path[-1]] = new
            else:
                tree = new
    return tree


def _deep(rng: random.Random, flow: bool) -> str:
    depth = rng.choice([64, 5_000, 200_000])
    return ("[" * depth + "]" * depth) if flow or rng.random() < 0.5 else ("{a: " * depth + "1" + "}" * depth)


def _serialise(rng: random.Random, seed: Seed, tree: Any, notes: list[str]) -> bytes:
    """``tree`` written in ``seed``'s format; ``DEEP`` placeholders become deep nesting, and sometimes a
    top-level key is written twice."""
    import yaml

    if seed.suffix == ".yaml":
        try:
            text = yaml.safe_dump(tree, allow_unicode=True, sort_keys=False, width=4096)
        except yaml.YAMLError:  # a lone surrogate: write it escaped instead
            text = yaml.safe_dump(tree, allow_unicode=False, sort_keys=False, width=4096)
        text = text.replace(DEEP, _deep(rng, flow=False))
        if isinstance(tree, dict) and tree and rng.random() < 0.1:
            key = rng.choice([k for k in tree if isinstance(k, str)] or ["x"])
            text += f"{key}: {yaml.safe_dump(_bad_value(rng, None), default_flow_style=True).splitlines()[0]}\n"
            notes.append(f"duplicate key {key!r}")
        return text.encode("utf-8", "surrogatepass")
    if seed.suffix == ".json":
        text = json.dumps(tree).replace(f'"{DEEP}"', _deep(rng, flow=True))
        if isinstance(tree, dict) and tree and text.endswith("}") and rng.random() < 0.1:
            key = rng.choice(list(tree))
            text = f"{text[:-1]}, {json.dumps(str(key))}: {json.dumps(_bad_value(rng, None))}}}"
            notes.append(f"duplicate key {key!r}")
        return text.encode("utf-8", "surrogatepass")
    buf = io.BytesIO()
    if seed.suffix == ".pt":
        import torch

        torch.save(_torchable(tree, rng), buf)
        return buf.getvalue()
    if seed.suffix == ".npy":
        np.save(buf, tree if isinstance(tree, np.ndarray) else np.asarray(_plain(tree), dtype=object))
        return buf.getvalue()
    # .npz: meta (JSON bytes) plus the arrays; a non-array value of an array key goes into meta
    arrays: dict[str, np.ndarray] = {}
    meta: Any = tree
    if isinstance(tree, dict):
        meta = {k: v for k, v in tree.items() if k not in ARRAY_KEYS or not isinstance(v, np.ndarray)}
        arrays = {k: v for k, v in tree.items() if k in ARRAY_KEYS and isinstance(v, np.ndarray)}
        for k in [k for k in meta if k in ARRAY_KEYS and rng.random() < 0.5]:
            try:
                arrays[k] = np.asarray(meta.pop(k))
            except ValueError:
                pass  # ragged: stays in meta
    text = json.dumps(_plain(meta)).replace(f'"{DEEP}"', _deep(rng, flow=True))
    arrays["meta"] = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _torchable(x: Any, rng: random.Random) -> Any:
    """``x`` with arrays as tensors (what SGLang saves); an array torch cannot hold stays a numpy array, which
    ``torch.load(weights_only=True)`` refuses; ``DEEP`` becomes 200 nested lists (pickle recurses too)."""
    import torch

    if isinstance(x, np.ndarray):
        try:
            return torch.from_numpy(np.ascontiguousarray(x))
        except TypeError:
            return x
    if isinstance(x, dict):
        return {k: _torchable(v, rng) for k, v in x.items()}
    if isinstance(x, list):
        return [_torchable(v, rng) for v in x]
    if x == DEEP:
        deep: list = []
        for _ in range(200):
            deep = [deep]
        return deep
    return x


def _plain(x: Any) -> Any:
    """JSON-able copy (arrays become lists)."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_plain(v) for v in x]
    return x


def _corrupt_bytes(rng: random.Random, data: bytes, notes: list[str]) -> bytes:
    b = bytearray(data)
    op = rng.choice(["truncate", "flip", "random", "non-utf8", "empty", "insert"])
    notes.append(f"bytes: {op}")
    if op == "truncate":
        return bytes(b[: rng.randrange(len(b))])
    if op == "flip":
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if op == "random":
        return rng.randbytes(rng.randint(1, 4096))
    if op == "non-utf8":
        i = rng.randrange(len(b))
        return bytes(b[:i]) + rng.choice([b"\xff\xfe", b"\xc3", b"\x80", b"\xed\xa0\x80"]) + bytes(b[i:])
    if op == "empty":
        return b""
    i = rng.randrange(len(b))
    return (
        bytes(b[:i]) + rng.choice([b"\x00", b"\t", b"&a *a ", b"!!python/object:os.system ", b"{", b"]"]) + bytes(b[i:])
    )


def mutate(rng: random.Random, seed: Seed) -> tuple[bytes, list[str]]:
    """One mutated file from ``seed``: its bytes and what was done to it."""
    notes: list[str] = []
    if rng.random() < 0.2:
        return _corrupt_bytes(rng, seed.data, notes), notes
    return _serialise(rng, seed, _mutate_tree(rng, seed.tree, notes), notes), notes

"""Fuzz of every input loader (issue 15): bad input is one ``MoesimError`` line naming the file, never a crash.

Run (CPU only; about 2 minutes on 2 cores for the default 10,000 files):

    python benchmarks/bench_fuzz.py                          # 10,000 mutated files, seed 0
    python benchmarks/bench_fuzz.py --count 2000 --seed 7    # fewer files, another seed
    python benchmarks/bench_fuzz.py --keep out/fuzz          # reproducers of each failure class kept there
    python benchmarks/bench_fuzz.py --json out/fuzz.json     # also write every finding

Seeds: the shipped model, GPU, cluster and scenario YAMLs, the shipped calibrations, a small placement written
by ``moesim.placement.save_placement``, small native traces (``.npz`` and JSON) written by
``moesim.trace.save_trace``, a shipped OLMoE routing-analysis JSON and a vLLM ``routed_experts`` ``.npy``.

Each mutated file is a seed with 1-3 values of its parsed tree replaced (wrong type, huge, negative or zero
integers, non-finite floats, long strings, deep nesting, unicode, a deleted key, an extra or duplicate key; for
arrays also wrong dtypes, shapes and values), or its bytes corrupted (truncated, random bytes, non-UTF-8). It
is loaded in-process through the public loader and counted as accepted, a ``MoesimError`` (good when its message
is one line naming the file), a non-moesim exception (a bug: its type, message, the innermost frame and a
reproducer file), or slow (a loader taking more than ``--slow-s`` on a file of at most a few MB).

Exit status 1 when any non-moesim exception, hang or slow load was found. The mutation strategy
(:func:`seed_files`, :func:`mutate`, :func:`run_case`) is imported by ``tests/moesim/test_fuzz.py`` for the
CI-budget run.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moesim.errors import MoesimError  # noqa: E402

# Generous per-file limits. A mutated file is at most a few MB (long strings are 100,000 characters, deep
# nesting at most 200,000 brackets), so a loader needing over 1 s is a finding; 10 s aborts a hang.
SLOW_S = 1.0
HANG_S = 10.0
# Address-space cap for the bench process (GiB): a loader that sizes an allocation from a field (a huge
# num_gpus) shows up as a MemoryError instead of swapping the machine. numpy and the loaders need < 1 GiB.
MAX_MEMORY_GB = 6.0

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
FAILURES = ("bug", "warning", "slow", "hang")
DEEP = "__moesim_fuzz_deep__"  # placeholder replaced by deep nesting in the serialised text


# --------------------------------------------------------------------------------------------- seeds
@dataclass
class Seed:
    kind: str
    name: str
    suffix: str
    tree: Any  # the parsed document (dict for YAML/JSON; dict of meta + arrays for .npz; an array for .npy)
    data: bytes  # the file as written


def _loaders() -> dict[str, Callable[[Path], Any]]:
    from moesim.calibration import load_calibration
    from moesim.placement import load_placement
    from moesim.scenario import load_scenarios
    from moesim.specs import load_cluster, load_gpu, load_model
    from moesim.trace import load_trace
    from moesim.trace_import import import_trace

    return {
        "model": load_model,
        "gpu": load_gpu,
        "cluster": load_cluster,
        "placement": load_placement,
        "scenario": load_scenarios,
        "calibration": load_calibration,
        "trace_npz": load_trace,
        "trace_json": load_trace,
        "olmoe_json": load_trace,
        "trace_npy": load_trace,
        # a stat dump does not record top-k (the CLI takes it from --model); the seeds' is 2
        "sglang_stat": lambda p: import_trace(p, top_k=2),
        "sglang_tokens": load_trace,
        "sglang_passes": lambda p: import_trace(p, top_k=2),
    }


def seed_files(workdir: Path) -> list[Seed]:
    """The valid files mutations start from (every one loads cleanly)."""
    import yaml

    from moesim.placement import contiguous, save_placement
    from moesim.trace import RoutingTrace, save_trace

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
    them (see tests/moesim/test_trace_import.py); none without torch."""
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


# --------------------------------------------------------------------------------------------- running
@dataclass
class Outcome:
    kind: str
    status: str  # accepted | moesim | bug | warning | slow | hang
    seconds: float
    message: str = ""
    exc_type: str = ""
    where: str = ""  # the innermost frame of a bug, ``file:line``
    bad_message: bool = False  # a MoesimError whose message spans lines or does not name the file


class _Hang(BaseException):
    pass


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Hang


def _innermost(tb: Any) -> str:
    frames = traceback.extract_tb(tb)
    ours = [f for f in frames if str(ROOT) in f.filename] or frames
    f = ours[-1]
    return f"{Path(f.filename).relative_to(ROOT) if str(ROOT) in f.filename else f.filename}:{f.lineno}"


def run_case(
    kind: str, path: Path, loader: Callable[[Path], Any], hang_s: float = HANG_S, slow_s: float = SLOW_S
) -> Outcome:
    """Load ``path`` with ``loader`` and classify what happened."""
    use_alarm = hang_s > 0 and hasattr(signal, "setitimer")
    old = signal.signal(signal.SIGALRM, _on_alarm) if use_alarm else None
    prev_timer = (0.0, 0.0)  # a timer already running (pytest-timeout's) is put back afterwards
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if use_alarm:
                prev_timer = signal.setitimer(signal.ITIMER_REAL, hang_s)
            try:
                loader(path)
            finally:
                if use_alarm:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            out = Outcome(kind, "accepted", 0.0)
        except _Hang:
            out = Outcome(kind, "hang", 0.0, f"no answer within {hang_s:g} s", "Hang")
        except MoesimError as exc:
            msg = str(exc)
            out = Outcome(
                kind,
                "moesim",
                0.0,
                msg,
                type(exc).__name__,
                bad_message="\n" in msg or "\r" in msg or str(path) not in msg,
            )
        except Exception as exc:  # noqa: BLE001 - any other exception escaping a loader is the finding
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            out = Outcome(kind, "bug", 0.0, first, type(exc).__name__, _innermost(exc.__traceback__))
        finally:
            if use_alarm:
                signal.signal(signal.SIGALRM, old)
                if prev_timer[0] > 0:
                    left = max(prev_timer[0] - (time.perf_counter() - t0), 1e-3)
                    signal.setitimer(signal.ITIMER_REAL, left, prev_timer[1])
    out.seconds = time.perf_counter() - t0
    if out.status in ("accepted", "moesim") and caught:
        # a warning on stderr breaks the one-line promise, and often marks a silently wrong value
        w = caught[0]
        where = Path(w.filename).relative_to(ROOT) if str(ROOT) in w.filename else w.filename
        out.status, out.exc_type, out.where = "warning", w.category.__name__, f"{where}:{w.lineno}"
        out.message = str(w.message)[:200]
    if out.status in ("accepted", "moesim") and out.seconds > slow_s:
        out.status, out.where = "slow", f"{out.seconds:.2f} s"
    return out


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    classes: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)  # (kind, type, where)
    bad_messages: list[tuple[str, str]] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return sum(o.status in FAILURES for o in self.outcomes)


def fuzz(
    count: int,
    seed: int,
    workdir: Path,
    keep: Path | None = None,
    kinds: tuple[str, ...] = KINDS,
    hang_s: float = HANG_S,
    slow_s: float = SLOW_S,
) -> Report:
    """Load ``count`` mutated files, spread evenly over ``kinds`` and round-robin over each kind's seeds."""
    rng = random.Random(seed)
    seeds = [s for s in seed_files(workdir / "seeds") if s.kind in kinds]
    by_kind = defaultdict(list)
    for s in seeds:
        by_kind[s.kind].append(s)
    order = [k for k in kinds if by_kind[k]]
    loaders = _loaders()
    report = Report()
    for i in range(count):
        kind = order[i % len(order)]
        s = by_kind[kind][(i // len(order)) % len(by_kind[kind])]
        data, notes = mutate(rng, s)
        case_dir = workdir / "cases"
        case_dir.mkdir(parents=True, exist_ok=True)
        path = case_dir / f"{kind}-{Path(s.name).stem}{s.suffix}"
        path.write_bytes(data)
        out = run_case(kind, path, loaders[kind], hang_s, slow_s)
        report.outcomes.append(out)
        if out.status == "moesim" and out.bad_message and len(report.bad_messages) < 50:
            report.bad_messages.append((kind, out.message[:300]))
        if out.status in FAILURES:
            key = (kind, out.exc_type or out.status, out.where if out.status in ("bug", "warning") else "")
            cls = report.classes.setdefault(
                key, {"count": 0, "message": out.message, "seed": s.name, "mutations": notes, "case": i, "file": ""}
            )
            cls["count"] += 1
            if keep is not None and not cls["file"]:
                keep.mkdir(parents=True, exist_ok=True)
                dest = keep / f"{kind}-{out.exc_type or out.status}-{i}{s.suffix}"
                dest.write_bytes(data)
                cls["file"] = str(dest)
    return report


def table(report: Report) -> str:
    rows = defaultdict(Counter)
    for o in report.outcomes:
        rows[o.kind]["files"] += 1
        rows[o.kind][o.status] += 1
        rows[o.kind]["bad_message"] += o.bad_message
    cols = ("files", "accepted", "moesim", "bug", "warning", "slow", "hang", "bad_message")
    heads = ("kind", "files", "accepted", "moesim errors", "non-moesim", "warnings", "slow", "hang", "bad messages")
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    total: Counter = Counter()
    for kind, c in rows.items():
        total.update(c)
        lines.append(f"| {kind} | " + " | ".join(f"{c[k]:,}" for k in cols) + " |")
    lines.append("| **all** | " + " | ".join(f"{total[k]:,}" for k in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=10_000, help="mutated files to load (default 10000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="folder for one reproducer per failure class")
    ap.add_argument("--json", type=Path, default=None, help="write the findings as JSON")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {', '.join(KINDS)}")
    ap.add_argument("--slow-s", type=float, default=SLOW_S, help="a load slower than this is a finding")
    ap.add_argument("--max-memory-gb", type=float, default=MAX_MEMORY_GB, help="address-space cap (0: none)")
    args = ap.parse_args(argv)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        ap.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    if args.max_memory_gb > 0:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (int(args.max_memory_gb * 2**30), hard))
    warnings.simplefilter("ignore")  # the mutations themselves cast arrays carelessly; loaders' warnings are recorded
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="moesim-fuzz-") as tmp:
        report = fuzz(args.count, args.seed, Path(tmp), args.keep, kinds, slow_s=args.slow_s)
    wall = time.perf_counter() - t0
    print(
        f"fuzz: {args.count:,} mutated files, seed {args.seed}, {wall:.1f} s "
        f"(slowest load {max(o.seconds for o in report.outcomes):.3f} s)\n"
    )
    print(table(report))
    if report.classes:
        print("\nfailure classes (kind, exception, innermost frame: count, first message, mutations, reproducer):")
        for (kind, typ, where), c in sorted(report.classes.items()):
            print(
                f"- {kind} {typ} {where}: {c['count']}x  {c['message'][:160]!r}  seed {c['seed']}, "
                f"{'; '.join(c['mutations'])[:200]}  {c['file']}"
            )
    if report.bad_messages:
        print("\nmessages spanning lines or not naming the file:")
        for kind, msg in report.bad_messages[:20]:
            print(f"- {kind}: {msg[:200]!r}")
    if args.json is not None:
        doc = {
            "count": args.count,
            "seed": args.seed,
            "wall_s": wall,
            "classes": [{"kind": k, "type": t, "where": w, **c} for (k, t, w), c in report.classes.items()],
            "bad_messages": report.bad_messages,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())

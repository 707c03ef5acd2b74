"""The loaders under fuzzing (issue 15), at CI budget: the mutation strategy of benchmarks/bench_fuzz.py on 325
files, every outcome an acceptance or a one-line ``MoesimError`` naming the file."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    benchmarks = str(ROOT / "benchmarks")
    sys.path.insert(0, benchmarks)  # bench_fuzz imports its seeds and mutations from fuzz_inputs beside it
    spec = importlib.util.spec_from_file_location("bench_fuzz", ROOT / "benchmarks" / "bench_fuzz.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_fuzz"] = module  # dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_fuzz", None)
        sys.modules.pop("fuzz_inputs", None)
        sys.path.remove(benchmarks)


def test_seeds_load(bench, tmp_path: Path) -> None:
    """Every seed is valid, so each failure below comes from its mutation."""
    loaders = bench._loaders()
    seeds = bench.seed_files(tmp_path / "seeds")
    assert {s.kind for s in seeds} >= set(bench.KINDS) - {"sglang_stat", "sglang_tokens", "sglang_passes"}
    for s in seeds:
        path = tmp_path / f"{s.kind}{s.suffix}"
        path.write_bytes(s.data)
        loaders[s.kind](path)


def test_mutations_are_seeded(bench, tmp_path: Path) -> None:
    seed = next(s for s in bench.seed_files(tmp_path / "seeds") if s.kind == "model")
    assert bench.mutate(random.Random(5), seed) == bench.mutate(random.Random(5), seed)


def test_fuzz_ci_budget(bench, tmp_path: Path) -> None:
    """25 mutated files per kind (13 kinds with torch), about 5 s; 5 s per file before a load counts as slow (a
    shared CI runner), the bench's 1 s on a dedicated machine."""
    report = bench.fuzz(325, seed=15, workdir=tmp_path, keep=tmp_path / "keep", slow_s=5.0)
    bad = [
        f"{kind} {typ} {where}: {c['count']}x {c['message'][:120]!r} ({'; '.join(c['mutations'])[:160]})"
        for (kind, typ, where), c in report.classes.items()
    ]
    assert not bad, "\n".join(bad)
    assert not report.bad_messages, report.bad_messages[:5]
    statuses = {o.status for o in report.outcomes}
    assert statuses <= {"accepted", "moesim"} and "moesim" in statuses

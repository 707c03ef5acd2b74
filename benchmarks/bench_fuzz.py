"""Fuzz of every input loader (issue 15): bad input is one ``MoesimError`` line naming the file, never a crash.

Run (CPU only; about 2 minutes on 2 cores for the default 10,000 files):

    python benchmarks/bench_fuzz.py                          # 10,000 mutated files, seed 0
    python benchmarks/bench_fuzz.py --count 2000 --seed 7    # fewer files, another seed
    python benchmarks/bench_fuzz.py --keep out/fuzz          # reproducers of each failure class kept there
    python benchmarks/bench_fuzz.py --json out/fuzz.json     # also write every finding

Seeds: the shipped model, GPU, cluster and scenario YAMLs, the shipped calibrations, a small placement written
by ``moesim.placement.save_placement``, small native traces (``.npz`` and JSON) written by
``moesim.traces.native.save_trace``, a shipped OLMoE routing-analysis JSON and a vLLM ``routed_experts`` ``.npy``.

Each mutated file is a seed with 1-3 values of its parsed tree replaced (wrong type, huge, negative or zero
integers, non-finite floats, long strings, deep nesting, unicode, a deleted key, an extra or duplicate key; for
arrays also wrong dtypes, shapes and values), or its bytes corrupted (truncated, random bytes, non-UTF-8). It
is loaded in-process through the public loader and counted as accepted, a ``MoesimError`` (good when its message
is one line naming the file), a non-moesim exception (a bug: its type, message, the innermost frame and a
reproducer file), or slow (a loader taking more than ``--slow-s`` on a file of at most a few MB).

Exit status 1 when any non-moesim exception, hang or slow load was found. The seeds and mutations live in
``benchmarks/fuzz_inputs.py``; the mutation strategy (:func:`seed_files`, :func:`mutate`, :func:`run_case`) is
imported through this module by ``tests/moesim/test_fuzz.py`` for the CI-budget run.
"""

from __future__ import annotations

import argparse
import json
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fuzz_inputs import KINDS, mutate, seed_files  # noqa: E402

from moesim.errors import MoesimError  # noqa: E402

# Generous per-file limits. A mutated file is at most a few MB (long strings are 100,000 characters, deep
# nesting at most 200,000 brackets), so a loader needing over 1 s is a finding; 10 s aborts a hang.
SLOW_S = 1.0
HANG_S = 10.0
# Address-space cap for the bench process (GiB): a loader that sizes an allocation from a field (a huge
# num_gpus) shows up as a MemoryError instead of swapping the machine. numpy and the loaders need < 1 GiB.
MAX_MEMORY_GB = 6.0
FAILURES = ("bug", "warning", "slow", "hang")


def _loaders() -> dict[str, Callable[[Path], Any]]:
    from moesim.calibration.file_format import load_calibration
    from moesim.placement import load_placement
    from moesim.specs import load_cluster, load_gpu, load_model
    from moesim.traces.formats import load_trace
    from whatif.scenario import load_scenarios

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
        "sglang_stat": lambda p: load_trace(p, top_k=2),
        "sglang_tokens": load_trace,
        "sglang_passes": lambda p: load_trace(p, top_k=2),
    }


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

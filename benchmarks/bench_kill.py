"""SIGKILL at random moments of ``plan``, ``whatif``, ``autotune kernel`` and ``autotune capacity`` (issue 15's
kill goal): no input changed, no partial output set, no stray files, every finished trial kept, a resumed run
makes progress within 2 s.

    python benchmarks/bench_kill.py                  # 20 kills per command (about 5 minutes on 2 cores)
    python benchmarks/bench_kill.py --kills 3        # a quick check
    python benchmarks/bench_kill.py --only plan,whatif --seed 1

Each command runs as a subprocess (``python -m cli``, CPU only) on small real inputs in a temp folder:

- ``plan``: the shipped OLMoE trace ``profiles/traces/olmoe_c4.npz`` on ``h100-2x8-ib400``, ``--redundant-experts
  16 -o p.yaml --sglang p.json --time-limit 5``; the set is both files (``load_placement`` and ``json.load``);
- ``whatif``: a 4-scenario Mixtral sweep (2 clusters x 2 capacity factors, 4 plots) with ``--workers 2`` and its
  own cache; each run has its own title and ``tokens_per_gpu`` so every report file says which run wrote it, and
  every other run writes over the previous run's folder (the merge path) while the rest start from none;
- ``autotune kernel``: ``--backend interpret`` (``TRITON_INTERPRET=1``) on E=4, N=32, K=64, M=2, a journal storage
  kept across the whole series and ``--save-dir cfg``; each run asks for 3 trials more than the journal holds;
- ``autotune capacity``: 40 NSGA-II trials on the OLMoE trace, ``-o front.json`` (no storage: only the inputs
  and the output file are checked).

First one uncut run per command measures its wall time T (and, for the kernel, the seconds from start to the first
finished trial of a fresh study). Then, ``--kills`` times: the outputs of the last run are removed (or kept, for
whatif's odd runs), the command starts, and SIGKILL hits its main process at a seeded moment uniform over [0, T];
then the checks; then the same command runs once more to completion (the resumed run) and the checks run again.

Violations (exit 1 on any):

- ``input``: a file the command reads (``profiles/``, the scenario file) changed;
- ``partial``: after a kill, the output set is neither complete and valid nor absent (for whatif's merge runs:
  neither wholly the previous run's nor wholly the new one's);
- ``stray``: a file in an output or cache folder that is not an output, moesim's own journal lock files or a
  staging folder (``.moesim-stage-*``, which the next run sweeps);
- ``unswept``: a staging folder still there after the resumed run;
- ``tmp``: a file left in the run's temp folder (``TMPDIR``, one per command) after the resumed run;
- ``resume``: the resumed run failed or its outputs are not complete;
- ``lost``: the journal holds fewer COMPLETE trials than before the kill;
- ``stuck``: the resumed kernel run finished no new trial;
- ``slow``: the resumed kernel run took more than 2 s longer to its first new trial than a fresh run takes to its
  first trial (imports plus one trial).

Orphans (child processes of the killed run still alive 0.3 s after it; whatif's plot and sweep workers) are
counted and then killed; they are shown, not a violation.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kill_cases import Case, KernelCase, WhatifCase, make_cases, rm_paths, tree_hashes  # noqa: E402

from moesim.fileio import STAGE_PREFIX  # noqa: E402

KINDS = ("input", "partial", "stray", "unswept", "tmp", "resume", "lost", "stuck", "slow")
SLOW_S = 2.0  # issue 15: a resumed run makes progress within 2 s (beyond what a fresh run needs)


def strays(case: Case) -> tuple[list[str], list[str]]:
    """(stray entries, staging folders) in the case's output and cache folders."""
    stray, stages = [], []
    for folder in case.folders:
        if not folder.is_dir():
            continue
        for p in folder.rglob("*") if folder.name == "cache" else folder.iterdir():
            rel = str(p.relative_to(case.work))
            if p.name.startswith(STAGE_PREFIX):
                stages.append(rel)
            elif folder.name == "cache":
                if p.is_file() and not p.name.endswith(".json"):
                    stray.append(rel)  # whatif's cache holds KEY.json files only
            elif p.name not in case.expected:
                stray.append(rel)
        if folder.name == "wi" and (folder / "plots").is_dir():
            stray += [str(p.relative_to(case.work)) for p in (folder / "plots").iterdir() if p.suffix != ".png"]
    return stray, stages


def start(case: Case, i: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *case.argv(i)],
        cwd=case.work,
        env=case.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: orphans of the kill can be found and ended
    )


def reap_orphans(proc: subprocess.Popen) -> int:
    """Children of the killed run still alive after 0.3 s: count them, then end them (their group is the run's)."""
    time.sleep(0.3)
    alive = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) == proc.pid:
                alive += 1
        except (ProcessLookupError, PermissionError):
            continue
    if alive:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        time.sleep(0.1)
    return alive


def run_to_end(case: Case, i: int, progress: Callable[[], bool] | None = None) -> tuple[int, float, float | None, str]:
    """(exit code, wall s, seconds to the first ``progress()`` or None, stderr tail) of one uncut run."""
    t0 = time.perf_counter()
    proc = start(case, i)
    first = None
    while proc.poll() is None:
        if progress is not None and first is None and progress():
            first = time.perf_counter() - t0
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    if progress is not None and first is None and progress():
        first = wall
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    return proc.returncode, wall, first, err.strip()[-300:]


@dataclass
class Result:
    kills: int = 0
    finished_first: int = 0  # runs that ended before their kill moment
    orphans: int = 0
    violations: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    resume_s: list[float] = field(default_factory=list)
    fresh_first_s: float | None = None
    uncut_s: float = 0.0

    def flag(self, kind: str, text: str) -> None:
        self.violations[kind] += 1
        self.examples.setdefault(kind, text)


def bench(case: Case, kills: int, rng: random.Random, verbose: bool) -> Result:
    res = Result()
    hashes = tree_hashes(*[p for p in case.inputs if p.exists()])
    kernel = case if isinstance(case, KernelCase) else None

    # the uncut run, on a throwaway journal and cache: T and (kernel) a fresh study's start-to-first-trial
    saved_url, saved_env = getattr(case, "url", None), case.env
    case.env = dict(case.env, MOESIM_CACHE_DIR=str(case.work / "uncut-cache"))
    if kernel:
        kernel.url = f"journal://{case.work / 'uncut' / 'j.log'}"
        (case.work / "uncut").mkdir()
    case.prepare(0)
    code, res.uncut_s, res.fresh_first_s, err = run_to_end(case, 0, (lambda: kernel.complete() > 0) if kernel else None)
    if code != 0:
        raise SystemExit(f"bench_kill: {case.name}: the uncut run failed (exit {code}): {err}")
    if isinstance(case, WhatifCase):
        case.plots = {p.name for p in (case.work / "wi" / "plots").glob("*.png")}
    problem = case.check_outputs(0, killed=False)
    if problem:
        raise SystemExit(f"bench_kill: {case.name}: the uncut run's outputs: {problem}")
    shutil.rmtree(case.work / "uncut-cache", ignore_errors=True)
    for p in (case.work / "tmp").iterdir():  # an uncut run's own temp files (none expected)
        rm_paths(p)
    shutil.rmtree(case.work / "uncut", ignore_errors=True)
    case.env = saved_env
    if kernel:
        kernel.url = saved_url or ""

    for i in range(1, kills + 1):
        complete_before = kernel.complete() if kernel else 0
        case.prepare(i)
        hashes.update(tree_hashes(*[p for p in case.inputs if p.is_file() and p.parent == case.work]))
        at = rng.uniform(0.0, res.uncut_s)
        proc = start(case, i)
        try:
            proc.wait(timeout=at)
            res.finished_first += 1
            killed = False
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL, to the main process only: what `kill -9 PID` does
            proc.wait()
            killed = True
        res.kills += 1
        res.orphans += reap_orphans(proc)
        tag = f"kill {i} at {at:.2f} s"
        if tree_hashes(*[p for p in case.inputs if p.exists()]) != hashes:
            res.flag("input", tag)
        problem = case.check_outputs(i, killed=killed)
        if problem:
            res.flag("partial", f"{tag}: {problem}")
        stray, stages = strays(case)
        if stray:
            res.flag("stray", f"{tag}: {stray[:3]}")
        if kernel and kernel.complete() < complete_before:
            res.flag("lost", f"{tag}: {complete_before} -> {kernel.complete()} COMPLETE trials")
        if verbose:
            print(
                f"  {case.name}: {tag}{'' if killed else ' (finished first)'}: stages {len(stages)}, "
                f"problem {problem}, stray {stray[:2]}",
                file=sys.stderr,
            )

        # the resumed run, to completion: it sweeps the staging folders and (kernel) makes progress
        done_before = kernel.complete() if kernel else 0
        if isinstance(case, WhatifCase):
            case.previous = case._owner_of_each() if (case.work / "wi").exists() else None
        code, _, first, err = run_to_end(case, i, (lambda n=done_before: kernel.complete() > n) if kernel else None)
        if code != 0:
            res.flag("resume", f"{tag}: the next run failed (exit {code}): {err}")
        else:
            problem = case.check_outputs(i, killed=False)
            if problem:
                res.flag("resume", f"{tag}: after the next run: {problem}")
        stray, stages = strays(case)
        if stages:
            res.flag("unswept", f"{tag}: {stages[:3]}")
        left = sorted(p.name for p in (case.work / "tmp").iterdir())
        if left:
            res.flag("tmp", f"{tag}: {len(left)} files in TMPDIR, e.g. {left[:3]}")
            for p in (case.work / "tmp").iterdir():  # count each kill's own leftovers
                rm_paths(p)
        if stray:
            res.flag("stray", f"{tag}, after the next run: {stray[:3]}")
        if kernel:
            if first is None:
                res.flag("stuck", f"{tag}: no new COMPLETE trial")
            else:
                res.resume_s.append(first)
                if res.fresh_first_s is not None and first - res.fresh_first_s > SLOW_S:
                    res.flag("slow", f"{tag}: {first:.2f} s to the first new trial, fresh {res.fresh_first_s:.2f} s")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20, help="kills per command (default 20)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument("--only", default="", help="comma-separated commands: plan, whatif, kernel, capacity")
    ap.add_argument("--json", dest="json_out", type=Path, help="write the results here")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per kill on stderr")
    args = ap.parse_args()
    if args.kills < 1:
        ap.error("--kills: must be >= 1")
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    rng = random.Random(args.seed)
    results: dict[str, Result] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_kill-") as tmp:
        for case in make_cases(Path(tmp), only):
            results[case.name] = bench(case, args.kills, rng, args.verbose)
    wall = time.perf_counter() - t0

    head = ["command", "kills", "uncut s", "ended first", "orphans", *KINDS, "resume s (median)"]
    rows = []
    for name, r in results.items():
        med = f"{statistics.median(r.resume_s):.2f}" if r.resume_s else "-"
        if r.resume_s and r.fresh_first_s is not None:
            med += f" (fresh {r.fresh_first_s:.2f})"
        rows.append(
            [
                name,
                str(r.kills),
                f"{r.uncut_s:.2f}",
                str(r.finished_first),
                str(r.orphans),
                *[str(r.violations[k]) for k in KINDS],
                med,
            ]
        )
    widths = [max(len(h), *(len(row[j]) for row in rows)) for j, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    print(f"{wall:.0f} s in all; seed {args.seed}")
    bad = False
    for name, r in results.items():
        for kind, text in r.examples.items():
            print(f"{name}: {kind}: {text}")
            bad = True
    if args.json_out:
        doc = {
            name: {
                "kills": r.kills,
                "uncut_s": r.uncut_s,
                "ended_first": r.finished_first,
                "orphans": r.orphans,
                "violations": dict(r.violations),
                "examples": r.examples,
                "resume_s": r.resume_s,
                "fresh_first_trial_s": r.fresh_first_s,
            }
            for name, r in results.items()
        }
        args.json_out.write_text(json.dumps(doc, indent=1) + "\n")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

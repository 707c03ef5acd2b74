"""The four commands ``benchmarks/bench_kill.py`` kills, as cases: each one's arguments for run ``i``, what it
writes before the run, and how it checks the output set it leaves (whole, absent, or for whatif's merge runs
wholly the previous run's or the new one's).

Each case runs in its own temp folder ``work`` (inputs, outputs, cache, journal, ``TMPDIR``); see bench_kill.py's
docstring for the commands and their inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

OWN = {"j.log", "j.log.lock", "j.log.budget.lock"}  # the journal and its two flock files (tuner/autotune/storage.py)


def tree_hashes(*roots: Path) -> dict[str, str]:
    """Every file under ``roots`` with its SHA-256: what a killed run must leave unchanged."""
    out = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in paths:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass
class Case:
    """One command under test; ``work`` is its temp folder (inputs, outputs, cache, journal)."""

    name: str
    work: Path
    env: dict[str, str]
    inputs: list[Path]
    folders: list[Path]  # where stray files are looked for (output folders, the cache)
    expected: set[str] = field(default_factory=set)  # names an output folder may hold besides staging folders
    run_index: int = 0

    def argv(self, i: int) -> list[str]:
        raise NotImplementedError

    def prepare(self, i: int) -> None:
        """Before run ``i``: remove the last run's outputs (or keep them) and write this run's inputs."""

    def check_outputs(self, i: int, killed: bool) -> str | None:
        """None if the output set is whole (or, when ``killed``, absent); else what is wrong."""
        raise NotImplementedError


def journal_file(url: str) -> Path:
    return Path(url.removeprefix("journal://"))


def rm_paths(*paths: Path) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


class PlanCase(Case):
    def argv(self, i: int) -> list[str]:
        return [
            "plan",
            "--model",
            "olmoe-1b-7b",
            "--cluster",
            "h100-2x8-ib400",
            "--trace",
            str(REPO / "profiles" / "traces" / "olmoe_c4.npz"),
            "--redundant-experts",
            "16",
            "-o",
            str(self.work / "p.yaml"),
            "--sglang",
            str(self.work / "p.json"),
            "--time-limit",
            "5",
        ]

    def prepare(self, i: int) -> None:
        rm_paths(self.work / "p.yaml", self.work / "p.json")

    def check_outputs(self, i: int, killed: bool) -> str | None:
        from moesim.placement import load_placement

        there = [(self.work / n).exists() for n in ("p.yaml", "p.json")]
        if not any(there):
            return None if killed else "no outputs"
        if not all(there):
            return f"only {'p.yaml' if there[0] else 'p.json'} of p.yaml + p.json"
        try:
            load_placement(self.work / "p.yaml")
            json.loads((self.work / "p.json").read_text())
        except Exception as exc:  # any failure to load is the finding
            return f"does not load: {type(exc).__name__}: {str(exc)[:120]}"
        return None


WHATIF_FILES = ("report.html", "report.md", "results.csv", "results.json")


class WhatifCase(Case):
    plots: set[str] = set()

    def scenario(self, i: int) -> Path:
        return self.work / "s.yaml"

    def argv(self, i: int) -> list[str]:
        return ["whatif", str(self.scenario(i)), "-o", str(self.work / "wi"), "--workers", "2"]

    def prepare(self, i: int) -> None:
        if i % 2 == 0:
            rm_paths(self.work / "wi")
        self.previous = self._owner_of_each() if (self.work / "wi").exists() else None
        self.scenario(i).write_text(
            f"title: kill-bench-r{i:03d}\n"
            "base: {model: mixtral-8x7b, cluster: dgx-h100, trace: 'synthetic:zipf:1.2', "
            f"tokens_per_gpu: {256 + i}}}\n"
            "axes: {cluster: [dgx-h100, h100-pcie-8], capacity_factor: [1.0, 1.25]}\n"
        )

    def _owner_of_each(self) -> dict[str, int | None]:
        """For each report file, the run that wrote it (its title or its tokens_per_gpu say), None if absent."""
        import csv
        import re

        out: dict[str, int | None] = {}
        wi = self.work / "wi"
        for name in WHATIF_FILES:
            p = wi / name
            if not p.is_file():
                out[name] = None
                continue
            text = p.read_text()
            if name == "results.csv":
                rows = list(csv.DictReader(text.splitlines()))
                out[name] = int(rows[0]["tokens_per_gpu"]) - 256 if rows else -1
            else:
                m = re.search(r"kill-bench-r(\d{3})", text)
                out[name] = int(m.group(1)) if m else -1
        return out

    def check_outputs(self, i: int, killed: bool) -> str | None:
        wi = self.work / "wi"
        if not wi.exists():
            return None if killed and self.previous is None else "no outputs"
        owners = self._owner_of_each()
        if killed and owners == self.previous:
            return None  # the kill came before the rename: the previous run's set, untouched
        if set(owners.values()) != {i}:
            return f"files from different runs (or missing): {owners}"
        try:
            json.loads((wi / "results.json").read_text())
        except ValueError as exc:
            return f"results.json does not load: {exc}"
        have = {p.name for p in (wi / "plots").glob("*.png")} if (wi / "plots").is_dir() else set()
        if self.plots and not self.plots <= have:
            return f"plots missing: {sorted(self.plots - have)}"
        return None


class KernelCase(Case):
    url: str = ""
    _stores: dict = {}
    file_name = "E=4,N=32,device_name=cpu.json"

    def argv(self, i: int) -> list[str]:
        return [
            "autotune",
            "kernel",
            "--backend",
            "interpret",
            "--E",
            "4",
            "--N",
            "32",
            "--K",
            "64",
            "--ms",
            "2",
            "--trials",
            str(self.counted() + 3),
            # patience off: a study that converged (40 trials without a new best) would stop a resumed run at
            # once, which is the tuner's choice, not a resume failure
            "--patience",
            "0",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--seed",
            str(i),
            "--storage",
            self.url,
            "--save-dir",
            str(self.work / "cfg"),
        ]

    def prepare(self, i: int) -> None:
        rm_paths(self.work / "cfg" / self.file_name)

    def _trials(self) -> list:
        from tuner.autotune import storage

        if self.url not in self._stores:  # one per journal: it reads only what was appended since the last call
            self._stores[self.url] = storage.open_storage(self.url)
        store = self._stores[self.url]
        out = []
        for s in store.get_all_studies():
            out += store.get_all_trials(s._study_id, deepcopy=False)
        return out

    def counted(self) -> int:
        import optuna

        if not journal_file(self.url).exists():
            return 0
        live = (
            optuna.trial.TrialState.RUNNING,
            optuna.trial.TrialState.COMPLETE,
            optuna.trial.TrialState.PRUNED,
            optuna.trial.TrialState.FAIL,
        )
        return sum(
            1
            for t in self._trials()
            if t.state in live and t.user_attrs.get("counted") and not t.user_attrs.get("stale")
        )

    def complete(self) -> int:
        import optuna

        if not journal_file(self.url).exists():
            return 0
        return sum(t.state == optuna.trial.TrialState.COMPLETE for t in self._trials())

    def check_outputs(self, i: int, killed: bool) -> str | None:
        from kernels.configs import load_configs

        p = self.work / "cfg" / self.file_name
        if not p.exists():
            return None if killed else "no config file"
        try:
            if not load_configs(str(p)):
                return "config file holds no config"
        except Exception as exc:  # any failure to load is the finding
            return f"config file does not load: {type(exc).__name__}: {str(exc)[:120]}"
        return None


class CapacityCase(Case):
    def argv(self, i: int) -> list[str]:
        return [
            "autotune",
            "capacity",
            "--model",
            "olmoe-1b-7b",
            "--cluster",
            "dgx-h100",
            "--trace",
            str(REPO / "profiles" / "traces" / "olmoe_c4.npz"),
            "--trials",
            "40",
            "--population",
            "10",
            "--seed",
            str(i),
            "-o",
            str(self.work / "front.json"),
        ]

    def prepare(self, i: int) -> None:
        rm_paths(self.work / "front.json")

    def check_outputs(self, i: int, killed: bool) -> str | None:
        p = self.work / "front.json"
        if not p.exists():
            return None if killed else "no front.json"
        try:
            doc = json.loads(p.read_text())
        except ValueError as exc:
            return f"front.json does not load: {exc}"
        return None if doc.get("pareto_front") else "front.json has no pareto_front"


def make_cases(root: Path, only: set[str]) -> list[Case]:
    base = {k: v for k, v in os.environ.items() if k not in ("MOESIM_CACHE_DIR", "TRITON_INTERPRET")}
    base["PYTHONPATH"] = str(REPO) + os.pathsep + base.get("PYTHONPATH", "")
    shipped = [REPO / "profiles"]
    cases: list[Case] = []
    for name, cls in (
        ("plan", PlanCase),
        ("whatif", WhatifCase),
        ("autotune kernel", KernelCase),
        ("autotune capacity", CapacityCase),
    ):
        if only and name not in only and name.split()[-1] not in only:
            continue
        work = root / name.replace(" ", "_")
        work.mkdir()
        (work / "tmp").mkdir()
        env = dict(base, MOESIM_CACHE_DIR=str(work / "cache"), TMPDIR=str(work / "tmp"))
        case = cls(name=name, work=work, env=env, inputs=list(shipped), folders=[work])
        if isinstance(case, WhatifCase):
            case.inputs.append(work / "s.yaml")
            case.folders += [work / "wi", work / "cache"]
            case.expected = {"s.yaml", "wi", "cache", "tmp"} | set(WHATIF_FILES) | {"plots"}
        elif isinstance(case, KernelCase):
            env["TRITON_INTERPRET"] = "1"
            case.url = f"journal://{work / 'j.log'}"
            case.folders += [work / "cfg"]
            case.expected = OWN | {"cfg", case.file_name, "cache", "tmp"}
        elif isinstance(case, PlanCase):
            case.expected = {"p.yaml", "p.json", "cache", "tmp"}
        else:
            case.expected = {"front.json", "cache", "tmp"}
        cases.append(case)
    return cases

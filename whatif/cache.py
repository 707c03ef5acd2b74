"""The record cache of what-if sweeps: one JSON file per scenario, keyed by a SHA-256 of what determines it.

The key covers the scenario's settings, the model and cluster specs (their full contents, whether named by slug
or path), the trace file's bytes, the calibration's contents and the source of the simulator and the placement
solvers (``moesim``, ``tuner``), so editing the code invalidates the cache. Files live under :func:`cache_dir`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from moesim.calibration.file_format import calibration_to_dict
from moesim.errors import field_error
from moesim.fileio import atomic_write_text
from whatif.inputs import cluster_spec, load_specs, scenario_calibration
from whatif.scenario import Scenario

CACHE_SCHEMA = 2  # bump when the record layout changes

_REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------- cache
def cache_dir() -> Path:
    """``$MOESIM_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/moesim/whatif`` (``~/.cache/moesim/whatif``)."""
    env = os.environ.get("MOESIM_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return root / "moesim" / "whatif"


@lru_cache(maxsize=1)
def _code_hash() -> str:
    """SHA-256 over the source that computes a record: moesim, tuner, and whatif minus its presentation (the
    report, figures and plots draw records, they do not compute them) and the scenario parser."""
    h = hashlib.sha256()
    skip = {"whatif/report.py", "whatif/figures.py", "whatif/plots.py", "whatif/scenario.py"}
    files: list[Path] = []
    for pkg in ("moesim", "tuner", "whatif"):
        root = _REPO_ROOT / pkg
        if root.is_dir():
            files += [p for p in root.rglob("*.py") if p.relative_to(_REPO_ROOT).as_posix() not in skip]
    for p in sorted(files):
        h.update(str(p.relative_to(_REPO_ROOT)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


@lru_cache(maxsize=64)
def _file_sha(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _spec_fingerprint(spec: Any) -> Any:
    """A JSON-able view of a frozen spec dataclass (all fields, nested), for hashing."""
    return json.loads(json.dumps(dataclasses.asdict(spec), sort_keys=True, default=str))


@lru_cache(maxsize=64)
def _specs_fingerprint(model_name: str, cluster_name: str) -> tuple[Any, Any]:
    """The model's and the cluster's fingerprints, by name as ``load_specs`` loads them (0.3 ms each, paid
    once per pair instead of once per scenario). Read-only: ``cache_key`` only serialises them."""
    model, cluster = load_specs(model_name, cluster_name)
    return _spec_fingerprint(model), _spec_fingerprint(cluster)


def cache_key(scenario: Scenario) -> str:
    """SHA-256 of everything that determines the scenario's record (see module docstring)."""
    settings = scenario.settings()
    settings["model"], settings["cluster"] = _specs_fingerprint(scenario.model, scenario.cluster)
    cluster = cluster_spec(scenario.cluster)
    cal = scenario_calibration(scenario, cluster)  # by contents: a refitted calibration is a new result
    settings["calibration"] = None if cal is None else calibration_to_dict(cal)
    if not scenario.is_synthetic:
        p = Path(scenario.trace)
        try:
            st = p.stat()
        except OSError:
            raise field_error(scenario.trace, "<file>", "no such trace file") from None
        settings["trace"] = _file_sha(str(p), st.st_mtime_ns, st.st_size)
    doc = {"schema": CACHE_SCHEMA, "code": _code_hash(), "settings": settings}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def cache_get(key: str) -> dict | None:
    path = cache_dir() / key[:2] / f"{key}.json"
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):  # absent or torn by a crash elsewhere: recompute
        return None


def cache_put(key: str, record: dict) -> None:
    folder = cache_dir() / key[:2]
    try:
        atomic_write_text(folder / f"{key}.json", json.dumps(record))
    except OSError:
        pass  # a read-only or full cache disk costs speed, not correctness


__all__ = ["CACHE_SCHEMA", "cache_dir", "cache_get", "cache_key", "cache_put"]

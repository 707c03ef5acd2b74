"""whatif.cache: where records live, what their key covers (worked out here from the module's documented
contents), and that a missing, torn or unwritable cache costs speed, never a wrong or failed result."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from moesim.calibration.file_format import calibration_to_dict, load_calibration
from moesim.errors import SpecError
from moesim.specs import load_cluster, load_model
from whatif import cache
from whatif.cache import CACHE_SCHEMA, cache_dir, cache_get, cache_key, cache_put
from whatif.scenario import Scenario

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "profiles"
OLMOE_C4 = PROFILES / "traces" / "olmoe_c4.npz"
CLUSTER = "h100-2x8-ib400"


def scenario(**settings) -> Scenario:
    return Scenario.from_settings(**{"model": "olmoe-1b-7b", "cluster": CLUSTER, "tokens_per_gpu": 256, **settings})


def spec_view(spec) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(spec), sort_keys=True, default=str))


# ----------------------------------------------------------------------------------------- cache_dir
def test_cache_dir_env_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MOESIM_CACHE_DIR", "~/mine")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "home" / "mine"  # MOESIM_CACHE_DIR first, ~ expanded
    monkeypatch.delenv("MOESIM_CACHE_DIR")
    assert cache_dir() == tmp_path / "xdg" / "moesim" / "whatif"
    monkeypatch.setenv("XDG_CACHE_HOME", "")  # empty counts as unset
    assert cache_dir() == tmp_path / "home" / ".cache" / "moesim" / "whatif"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == tmp_path / "home" / ".cache" / "moesim" / "whatif"


# ----------------------------------------------------------------------------------------- get / put
def test_put_then_get_round_trips_under_a_two_letter_folder(tmp_path):
    key = "ab" + "0" * 62
    record = {"step_latency_us": 123.25, "phase_us": {"router": 1.5}, "gpu_load": [1.0, 2.0], "error": None}
    assert cache_get(key) is None  # nothing there yet
    cache_put(key, record)
    path = tmp_path / "cache" / "ab" / f"{key}.json"
    assert json.loads(path.read_text()) == record
    assert cache_get(key) == record
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left beside it
    cache_put(key, {"step_latency_us": 1.0})  # a rewrite replaces the record
    assert cache_get(key) == {"step_latency_us": 1.0}


def test_torn_record_reads_as_a_miss(tmp_path):
    key = "cd" + "1" * 62
    folder = tmp_path / "cache" / "cd"
    folder.mkdir(parents=True)
    (folder / f"{key}.json").write_text('{"step_latency_us": 12')  # a crash mid-write elsewhere
    assert cache_get(key) is None
    (folder / f"{key}.json").write_bytes(b"\xff\xfe\x00")  # not even text
    assert cache_get(key) is None


def test_unwritable_cache_is_skipped_silently(tmp_path):
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    key = "ef" + "2" * 62
    cache_put(key, {"x": 1})  # no exception: the sweep goes on without a cache
    assert cache_get(key) is None


# ----------------------------------------------------------------------------------------- cache_key
def test_key_is_the_sha256_of_the_documented_contents():
    """Settings with the specs and the calibration by contents, the schema and the code hash."""
    sc = scenario()
    settings = sc.settings()
    settings["model"] = spec_view(load_model("olmoe-1b-7b"))
    settings["cluster"] = spec_view(load_cluster(CLUSTER))
    settings["calibration"] = calibration_to_dict(load_calibration(PROFILES / "measured/h100-sxm/calibration.json"))
    doc = {"schema": CACHE_SCHEMA, "code": cache._code_hash(), "settings": settings}
    expected = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
    key = cache_key(sc)
    assert key == expected and len(key) == 64 and int(key, 16) >= 0


def test_key_ignores_the_name_and_how_specs_are_named():
    by_slug = cache_key(scenario())
    assert cache_key(scenario(name="renamed")) == by_slug
    by_path = scenario(
        model=str(PROFILES / "models" / "olmoe-1b-7b.yaml"), cluster=str(PROFILES / "clusters" / f"{CLUSTER}.yaml")
    )
    assert cache_key(by_path) == by_slug


@pytest.mark.parametrize(
    "change",
    [
        {"capacity_factor": 1.25},
        {"drop_policy": "reroute", "capacity_factor": 1.0},
        {"tokens_per_gpu": 512},
        {"trace_seed": 1},
        {"trace": "synthetic:zipf:1.3"},
        {"placement": "eplb", "redundant_experts": 16},
        {"cluster": "h100-2x8-ib200"},
        {"model": "qwen1.5-moe-a2.7b"},
        {"calibration": "none"},
    ],
)
def test_key_changes_with_what_determines_the_record(change):
    assert cache_key(scenario(**change)) != cache_key(scenario())


def test_calibration_is_keyed_by_contents(tmp_path):
    shipped = PROFILES / "measured" / "h100-sxm" / "calibration.json"
    auto = cache_key(scenario())
    assert cache_key(scenario(calibration=str(shipped))) == auto  # "auto" on an H100 is this file
    copy = tmp_path / "calibration.json"
    shutil.copy(shipped, copy)
    assert cache_key(scenario(calibration=str(copy))) == auto
    # on a GPU with no shipped calibration, auto means none
    assert cache_key(scenario(cluster="h800-2x8-ib400")) == cache_key(
        scenario(cluster="h800-2x8-ib400", calibration="none")
    )


def test_trace_file_is_keyed_by_its_bytes_not_its_path(tmp_path):
    here = tmp_path / "a.npz"
    shutil.copy(OLMOE_C4, here)
    original = cache_key(scenario(trace=str(OLMOE_C4)))
    assert cache_key(scenario(trace=str(here))) == original
    shutil.copy(PROFILES / "traces" / "olmoe_book.npz", here)  # other contents at the same path
    st = os.stat(here)
    os.utime(here, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new mtime, as a rewrite a second later has
    changed = cache_key(scenario(trace=str(here)))
    assert changed != original
    assert changed == cache_key(scenario(trace=str(PROFILES / "traces" / "olmoe_book.npz")))


def test_missing_trace_file_is_a_one_line_error(tmp_path):
    missing = str(tmp_path / "gone.npz")
    with pytest.raises(SpecError) as info:
        cache_key(scenario(trace=missing))
    assert str(info.value) == f"{missing}: <file>: no such trace file"


def test_schema_and_code_are_in_the_key(monkeypatch):
    before = cache_key(scenario())
    monkeypatch.setattr(cache, "CACHE_SCHEMA", CACHE_SCHEMA + 1)
    assert cache_key(scenario()) != before
    monkeypatch.setattr(cache, "CACHE_SCHEMA", CACHE_SCHEMA)
    monkeypatch.setattr(cache, "_code_hash", lambda: "0" * 64)
    assert cache_key(scenario()) != before


# ----------------------------------------------------------------------------------------- the code hash
def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def _expected_hash(root: Path, rels: list[str]) -> str:
    h = hashlib.sha256()
    for rel in sorted(rels):
        h.update(rel.encode())
        h.update((root / rel).read_bytes())
    return h.hexdigest()


def test_code_hash_covers_the_code_that_computes_a_record_only(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    _tree(
        root,
        {
            "moesim/simulate.py": "A = 1\n",
            "moesim/traces/synthetic.py": "B = 2\n",
            "moesim/README.md": "not python\n",
            "tuner/plan.py": "C = 3\n",
            "whatif/sweep.py": "D = 4\n",
            "whatif/report.py": "presentation\n",
            "whatif/plots.py": "presentation\n",
            "whatif/figures.py": "presentation\n",
            "whatif/scenario.py": "the parser\n",
            "cli/main.py": "outside the packages\n",
        },
    )
    monkeypatch.setattr(cache, "_REPO_ROOT", root)
    code_hash = cache._code_hash.__wrapped__
    expected = _expected_hash(
        root, ["moesim/simulate.py", "moesim/traces/synthetic.py", "tuner/plan.py", "whatif/sweep.py"]
    )
    assert code_hash() == expected
    for rel in ("cli/main.py", "whatif/report.py", "whatif/plots.py", "whatif/figures.py", "whatif/scenario.py"):
        (root / rel).write_text("edited\n")
    assert code_hash() == expected
    (root / "tuner/plan.py").write_text("C = 4\n")
    assert code_hash() != expected


def test_code_hash_of_this_checkout():
    files = [p for pkg in ("moesim", "tuner", "whatif") for p in (REPO / pkg).rglob("*.py")]
    shown = {"whatif/report.py", "whatif/figures.py", "whatif/plots.py", "whatif/scenario.py"}
    rels = [p.relative_to(REPO).as_posix() for p in files if p.relative_to(REPO).as_posix() not in shown]
    assert cache._code_hash() == _expected_hash(REPO, rels)
    assert cache._code_hash() is cache._code_hash()  # computed once per process


def test_code_hash_covers_the_whatif_code_that_computes_a_record(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    _tree(root, {"moesim/simulate.py": "A = 1\n", "whatif/sweep.py": "def summarise(): ...\n"})
    monkeypatch.setattr(cache, "_REPO_ROOT", root)
    before = cache._code_hash.__wrapped__()
    (root / "whatif/sweep.py").write_text("def summarise(): return 2\n")
    assert cache._code_hash.__wrapped__() != before


def test_code_hash_of_a_checkout_under_a_folder_named_cli(tmp_path, monkeypatch):
    root = tmp_path / "cli" / "repo"
    _tree(root, {"moesim/simulate.py": "A = 1\n"})
    monkeypatch.setattr(cache, "_REPO_ROOT", root)
    assert cache._code_hash.__wrapped__() == _expected_hash(root, ["moesim/simulate.py"])

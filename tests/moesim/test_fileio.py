"""moesim.fileio: one reader for text inputs, output checks, and output sets written whole or not at all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from moesim.errors import SpecError
from moesim.fileio import STAGE_PREFIX, OutputSet, check_outputs, read_text, read_yaml


def _stages(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(STAGE_PREFIX))


def test_output_set_moves_every_file_on_success(tmp_path) -> None:
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "old.txt").write_text("kept")
    with OutputSet() as out:
        out.staged(tmp_path / "a.yaml").write_text("a")
        out.staged(tmp_path / "sub" / "b.json").write_text("b")  # a folder that does not exist yet
        report = out.staged(tmp_path / "report")
        (report / "plots").mkdir(parents=True)
        (report / "plots" / "x.png").write_bytes(b"png")
        assert not (tmp_path / "a.yaml").exists()  # nothing at a target before the block ends
    assert (tmp_path / "a.yaml").read_text() == "a" and (tmp_path / "sub" / "b.json").read_text() == "b"
    assert (tmp_path / "report" / "plots" / "x.png").read_bytes() == b"png"
    assert (tmp_path / "report" / "old.txt").read_text() == "kept"
    assert _stages(tmp_path) == [] and _stages(tmp_path / "sub") == []


def test_output_set_leaves_nothing_on_error(tmp_path) -> None:
    (tmp_path / "a.yaml").write_text("before")
    with pytest.raises(RuntimeError), OutputSet() as out:
        out.staged(tmp_path / "a.yaml").write_text("new")
        out.staged(tmp_path / "b.json").write_text("new")
        raise RuntimeError("a writer failed half-way")
    assert (tmp_path / "a.yaml").read_text() == "before" and not (tmp_path / "b.json").exists()
    assert _stages(tmp_path) == []


def test_sigterm_mid_set_leaves_no_output(tmp_path) -> None:
    code = (
        "import os, signal, time\n"
        "from moesim.fileio import OutputSet\n"
        f"with OutputSet() as out:\n"
        f"    out.staged({str(tmp_path / 'a.yaml')!r}).write_text('a')\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(5)\n"
        f"    out.staged({str(tmp_path / 'b.json')!r}).write_text('b')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_killed_runs_stage_is_swept_by_the_next(tmp_path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a pid that is gone
    stale = tmp_path / f"{STAGE_PREFIX}{proc.pid}-abc"
    stale.mkdir()
    (stale / "a.yaml").write_text("half")
    live = tmp_path / f"{STAGE_PREFIX}{os.getppid()}-xyz"  # a running process's stage is left alone
    live.mkdir()
    with OutputSet() as out:
        out.staged(tmp_path / "a.yaml").write_text("whole")
    assert not stale.exists() and live.exists() and (tmp_path / "a.yaml").read_text() == "whole"


def test_sigterm_handler_restored(tmp_path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with OutputSet() as out:
        assert signal.getsignal(signal.SIGTERM) is not before  # staged files are removed on SIGTERM
        out.staged(tmp_path / "a").write_text("a")
    assert signal.getsignal(signal.SIGTERM) is before


def test_reader_errors(tmp_path) -> None:
    with pytest.raises(SpecError, match=r"nope.yaml: file: no such file$"):
        read_text(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match=r": file: is a directory, not a file$"):
        read_text(tmp_path)
    big = tmp_path / "big.yaml"
    big.write_text("x" * 2048)
    with pytest.raises(SpecError, match=r"big.yaml: file: 2,048 bytes, more than the 0 MB"):
        read_text(big, max_bytes=1024)
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"a: \xc3\x28")
    with pytest.raises(SpecError, match=r"bad.yaml: file: not UTF-8 text \(byte 0xc3 at offset 3\)$"):
        read_yaml(bad)
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(SpecError, match=r"list.yaml: \(top level\): expected a mapping, got list$"):
        read_yaml(tmp_path / "list.yaml")
    (tmp_path / "deep.yaml").write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(SpecError, match=r"deep.yaml: "):
        read_yaml(tmp_path / "deep.yaml", mapping=False)


def test_check_outputs(tmp_path) -> None:
    inp = tmp_path / "t.npz"
    inp.write_bytes(b"x")
    check_outputs({"-o": tmp_path / "p.yaml", "--sglang": None}, {"--trace": inp, "--model": "olmoe-1b-7b"})
    with pytest.raises(SpecError, match=r"t.npz: -o: is also the input of --trace"):
        check_outputs({"-o": tmp_path / "x" / ".." / "t.npz"}, {"--trace": inp})  # the same file, spelled otherwise
    with pytest.raises(SpecError, match=r"q: --b: is also the output of --a"):
        check_outputs({"--a": tmp_path / "q", "--b": tmp_path / "q"})


def test_shipped_profiles_parse_the_same_with_libyaml() -> None:
    """``shipped=True`` (libyaml, for moesim's own profiles) gives the objects the pure-Python parser gives."""
    from moesim.specs import profiles_dir

    files = sorted(profiles_dir().rglob("*.yaml"))
    assert len(files) > 20
    for f in files:
        assert read_yaml(f, mapping=False, shipped=True) == read_yaml(f, mapping=False), f


def test_a_users_deep_yaml_spec_is_a_clean_error(tmp_path) -> None:
    """A user's model file goes through the pure-Python parser (libyaml would crash the process on it): a
    subprocess, so a crash would fail the test rather than the run."""
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 100000 + "]" * 100000)
    code = f"from moesim.specs import load_model\nload_model({str(deep)!r})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "SpecError" in out.stderr and "deep.yaml" in out.stderr, out.stderr[-500:]


# ------------------------------------------------------------------ found by benchmarks/bench_fuzz.py (issue 15)
def test_deep_json_is_one_line_not_recursion_error(tmp_path) -> None:
    """The C JSON decoder raises RecursionError (not JSONDecodeError) a few thousand brackets deep."""
    from moesim.fileio import parse_json

    with pytest.raises(SpecError, match=r"^f\.json: json: nested too deeply$"):
        parse_json("[" * 100_000 + "]" * 100_000, "f.json")
    with pytest.raises(SpecError, match=r"^f\.json: meta: bad JSON at line 1 column 2: "):
        parse_json("{x", "f.json", "meta")
    assert parse_json('{"a": [1, 2]}', "f.json") == {"a": [1, 2]}


def test_deep_yaml_flow_nesting_refused_fast(tmp_path) -> None:
    """A line of thousands of ``[`` cost the pure-Python scanner about 1 s before it gave up; now refused at
    MAX_YAML_FLOW_DEPTH levels, at once and with its line. 64 levels still load."""
    import time

    from moesim.fileio import MAX_YAML_FLOW_DEPTH

    p = tmp_path / "deep.yaml"
    p.write_text("a: 1\nb: " + "[" * 5000 + "]" * 5000 + "\n")
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match=rf"deep\.yaml: line 2: malformed YAML: nested more than {MAX_YAML_FLOW_DEPTH}"):
        read_yaml(p)
    assert time.perf_counter() - t0 < 0.5
    p.write_text("b: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n")
    with pytest.raises(SpecError, match="nested more than"):
        read_yaml(p)
    p.write_text("b: " + "[" * MAX_YAML_FLOW_DEPTH + "]" * MAX_YAML_FLOW_DEPTH + "\n")
    assert read_yaml(p) is not None

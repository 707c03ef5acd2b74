"""Bad input and unsafe output paths, through the real CLI entry point: one line on stderr naming the file and
the field, exit 2, nothing written and no input changed (issue 15's classes: encodings, directories in the way,
outputs over inputs, usage errors)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from moesim.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def _run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def _tree(path: Path) -> dict[str, str]:
    """Every file under path with its content hash: what a failed command must leave unchanged."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in path.rglob("*") if p.is_file()
    }


@pytest.fixture()
def work(tmp_path, capsys):
    code, _, err = _run(
        ["trace", "synth", "--model", "olmoe-1b-7b", "--tokens", "64", "-o", tmp_path / "t.npz"], capsys
    )
    assert code == 0, err
    (tmp_path / "m.yaml").write_bytes((ROOT / "profiles" / "models" / "olmoe-1b-7b.yaml").read_bytes())
    (tmp_path / "OUT").mkdir()
    (tmp_path / "OUT.json").mkdir()
    return tmp_path


def _one_line_error(code: int, err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("moesim: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


PLAN = ["plan", "--cluster", "dgx-h100", "--time-limit", "2"]


@pytest.mark.parametrize(
    "args,needles",
    [
        # outputs that are inputs, or each other
        (
            PLAN + ["--model", "olmoe-1b-7b", "--trace", "{w}/t.npz", "-o", "{w}/t.npz"],
            ["t.npz: -o: is also the input of --trace"],
        ),
        (
            PLAN + ["--model", "{w}/m.yaml", "--trace", "{w}/t.npz", "-o", "{w}/m.yaml"],
            ["m.yaml: -o: is also the input of --model"],
        ),
        (
            PLAN + ["--model", "olmoe-1b-7b", "--trace", "{w}/t.npz", "-o", "{w}/p.json", "--sglang", "{w}/p.json"],
            ["p.json: --sglang: is also the output of -o"],
        ),
        (
            ["trace", "synth", "--model", "{w}/m.yaml", "--tokens", "10", "-o", "{w}/m.yaml"],
            ["m.yaml: -o: is also the input of --model"],
        ),
        (
            ["trace", "convert", "{w}/t.npz", "{w}/m.yaml", "--model", "{w}/m.yaml"],
            ["m.yaml: DST: is also the input of --model"],
        ),
        (
            [
                "autotune",
                "capacity",
                "--model",
                "olmoe-1b-7b",
                "--cluster",
                "dgx-h100",
                "--trace",
                "{w}/t.npz",
                "-o",
                "{w}/t.npz",
                "--trials",
                "2",
            ],
            ["t.npz: -o: is also the input of --trace"],
        ),
        # outputs that are directories
        (PLAN + ["--model", "olmoe-1b-7b", "--trace", "{w}/t.npz", "-o", "{w}/OUT"], ["OUT: -o: is a directory"]),
        (
            PLAN + ["--model", "olmoe-1b-7b", "--trace", "{w}/t.npz", "-o", "{w}/p.yaml", "--sglang", "{w}/OUT.json"],
            ["OUT.json: --sglang: is a directory"],
        ),
        (["trace", "convert", "{w}/t.npz", "{w}/OUT"], ["OUT: DST: is a directory"]),
        (["trace", "synth", "--model", "olmoe-1b-7b", "--tokens", "10", "-o", "{w}/OUT"], ["OUT: -o: is a directory"]),
        # usage errors: one line, not typer's box
        (
            PLAN + ["--model", "olmoe-1b-7b", "--trace", "{w}/t.npz", "-o", "{w}/p.yaml", "--tokens-per-gpu", "abc"],
            ["moesim plan: Invalid value for '--tokens-per-gpu'"],
        ),
        (["plan", "--bogus"], ["moesim plan: No such option: --bogus"]),
        (["nosuch"], ["No such command 'nosuch'"]),
    ],
)
def test_refused_before_any_work(work, capsys, args, needles) -> None:
    before = _tree(work)
    code, out, err = _run([a.format(w=work) if isinstance(a, str) else a for a in args], capsys)
    _one_line_error(code, err, *needles)
    assert _tree(work) == before and not out.strip()


@pytest.mark.parametrize("kind", ["model", "cluster", "placement", "scenario", "trace-json", "calibration"])
def test_non_utf8_input_names_the_file(work, capsys, kind) -> None:
    bad = work / ("bad.json" if kind in ("trace-json", "calibration") else "bad.yaml")
    head = b'{"x": "' if kind == "trace-json" else b"name: "  # a JSON trace is recognised by its first byte
    bad.write_bytes(head + b"\xff\xfe binary\n" + bytes(range(256)))
    offset = len(head)
    args = {
        "model": ["simulate", "--model", bad, "--cluster", "dgx-h100", "--synthetic", "zipf:1.2"],
        "cluster": ["simulate", "--model", "olmoe-1b-7b", "--cluster", bad, "--synthetic", "zipf:1.2"],
        "placement": [
            "simulate",
            "--model",
            "olmoe-1b-7b",
            "--cluster",
            "dgx-h100",
            "--trace",
            work / "t.npz",
            "--placement",
            bad,
        ],
        "scenario": ["whatif", bad, "-o", work / "wi"],
        "trace-json": ["trace", "inspect", bad],
        "calibration": [
            "simulate",
            "--model",
            "olmoe-1b-7b",
            "--cluster",
            "dgx-h100",
            "--synthetic",
            "zipf:1.2",
            "--calibration",
            bad,
        ],
    }[kind]
    before = _tree(work)
    code, _, err = _run(args, capsys)
    _one_line_error(code, err, f"{bad}:", f"not UTF-8 text (byte 0xff at offset {offset})")
    assert _tree(work) == before


def test_input_that_is_a_directory(work, capsys) -> None:
    code, _, err = _run(
        ["simulate", "--model", work / "OUT", "--cluster", "dgx-h100", "--synthetic", "zipf:1.2"], capsys
    )
    _one_line_error(code, err, "OUT: model: is a directory, not a YAML file")

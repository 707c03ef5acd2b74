"""What the CLI reliability tests share: run the real entry point in-process, hash a folder, check that an error
is the one line ``moesim: error: ...`` with exit 2, and the work folder every refusal test starts from."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cli.main import main

ROOT = Path(__file__).resolve().parents[2]

PLAN = ["plan", "--cluster", "dgx-h100", "--time-limit", "2"]
SYNTH = ["simulate", "--cluster", "dgx-h100", "--synthetic", "zipf:1.2"]
# the smallest `autotune kernel` problem, run by Triton's interpreter on the CPU
TINY_KERNEL = ["autotune", "kernel", "--backend", "interpret", "--E", "4", "--N", "32", "--K", "64"]
SWEEP = (
    'base: {model: olmoe-1b-7b, cluster: dgx-h100, trace: "synthetic:zipf:1.2"}\naxes: {capacity_factor: [1.0, 1.25]}\n'
)


def run_cli(args: list, capsys: pytest.CaptureFixture[str]) -> tuple[int | str | None, str, str]:
    """``moesim ARGS`` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def file_hashes(path: Path) -> dict[str, str]:
    """Every file under path with its content hash: what a failed command must leave unchanged."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in path.rglob("*") if p.is_file()
    }


def make_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A folder with a 64-token OLMoE trace ``t.npz``, a model file ``m.yaml`` and two directories in the way of
    outputs (``OUT``, ``OUT.json``)."""
    code, _, err = run_cli(
        ["trace", "synth", "--model", "olmoe-1b-7b", "--tokens", "64", "-o", tmp_path / "t.npz"], capsys
    )
    assert code == 0, err
    (tmp_path / "m.yaml").write_bytes((ROOT / "profiles" / "models" / "olmoe-1b-7b.yaml").read_bytes())
    (tmp_path / "OUT").mkdir()
    (tmp_path / "OUT.json").mkdir()
    return tmp_path


def assert_one_line_error(code: int | str | None, err: str, *needles: str) -> None:
    """Exit 2 and one stderr line ``moesim: error: ...`` holding every needle."""
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("moesim: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)

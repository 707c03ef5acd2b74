"""``moesim.errors``: the error hierarchy, the canonical one-line ``SOURCE: FIELD: PROBLEM`` message, and the CLI's
contract that any ``MoesimError`` becomes one line on stderr with exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from moesim import errors
from moesim.errors import (
    HardwareError,
    InfeasibleError,
    MoesimError,
    PlacementError,
    SpecError,
    TraceError,
    field_error,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "cls, parents, not_parents",
    [
        (SpecError, (MoesimError,), (InfeasibleError, HardwareError)),
        (TraceError, (SpecError, MoesimError), (PlacementError, InfeasibleError, HardwareError)),
        (PlacementError, (SpecError, MoesimError), (TraceError, InfeasibleError, HardwareError)),
        (InfeasibleError, (MoesimError,), (SpecError, HardwareError)),
        (HardwareError, (MoesimError,), (SpecError, InfeasibleError)),
    ],
)
def test_hierarchy(cls: type, parents: tuple[type, ...], not_parents: tuple[type, ...]) -> None:
    assert issubclass(MoesimError, Exception) and not issubclass(MoesimError, (ValueError, KeyError))
    for p in parents:
        assert issubclass(cls, p)
    for p in not_parents:
        assert not issubclass(cls, p)
    exc = cls("x: y: z")
    assert str(exc) == "x: y: z"
    with pytest.raises(MoesimError):  # the CLI's one ``except`` catches every deliberate error
        raise exc


def test_every_public_class_derives_from_the_root() -> None:
    classes = [v for v in vars(errors).values() if isinstance(v, type) and v.__module__ == errors.__name__]
    assert {c.__name__ for c in classes} == {
        "MoesimError",
        "SpecError",
        "TraceError",
        "PlacementError",
        "InfeasibleError",
        "HardwareError",
    }
    assert all(issubclass(c, MoesimError) for c in classes)


def test_field_error_builds_but_does_not_raise() -> None:
    exc = field_error("profiles/models/x.yaml", "top_k", "must be >= 1, got 0")
    assert type(exc) is SpecError  # a plain SpecError, returned for the caller to raise
    assert str(exc) == "profiles/models/x.yaml: top_k: must be >= 1, got 0"
    assert exc.args == ("profiles/models/x.yaml: top_k: must be >= 1, got 0",)
    with pytest.raises(SpecError, match=r"^a\.json: layers\[3\]\.shares: must sum to 1, got 0\.5$"):
        raise field_error("a.json", "layers[3].shares", "must sum to 1, got 0.5")


def test_field_error_keeps_the_parts_verbatim() -> None:
    # the message is exactly the three parts joined by ": ", nothing escaped, trimmed or reformatted
    exc = field_error("", "f", "p")
    assert str(exc) == ": f: p"
    assert str(field_error("s", "a.b", "bad 'x': 1")).split(": ", 2) == ["s", "a.b", "bad 'x': 1"]


def _bad_model(tmp_path: Path) -> Path:
    text = (ROOT / "profiles" / "models" / "olmoe-1b-7b.yaml").read_text().splitlines()
    assert sum(line.startswith("top_k:") for line in text) == 1
    bad = tmp_path / "x.yaml"
    bad.write_text("\n".join("top_k: 0" if line.startswith("top_k:") else line for line in text) + "\n")
    return bad


def test_a_loader_error_has_the_documented_form(tmp_path: Path) -> None:
    """The module docstring's example: the file, the field and the bad value, on one line."""
    from moesim.specs import load_model

    bad = _bad_model(tmp_path)
    with pytest.raises(SpecError) as info:
        load_model(bad)
    assert str(info.value) == f"{bad}: top_k: must be >= 1, got 0"
    assert "\n" not in str(info.value)


def test_cli_turns_the_error_into_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from cli.main import main

    bad = _bad_model(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["simulate", "--model", str(bad), "--cluster", "h100-2x8-ib400", "--json"])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no JSON, nothing half-written
    assert captured.err == f"moesim: error: {bad}: top_k: must be >= 1, got 0\n"

"""cli.main: the ``moesim`` entry point. Every command is registered and its ``--help`` shows an example; usage
errors and ``MoesimError`` become one line ``moesim: error: ...`` with exit 2; interrupts exit 130; ``version``
prints the package's version; registration skips only a command module that does not exist."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types

import pytest
import typer

import cli.main as cli_main
from moesim import __version__
from moesim.errors import InfeasibleError, SpecError
from tests.cli.cli_harness import ROOT, assert_one_line_error, run_cli

# README.md: "Every subcommand's --help ends with an example" and the list of them; plus `version`
COMMANDS = [
    ("version",),
    ("models",),
    ("gpus",),
    ("clusters",),
    ("simulate",),
    ("plan",),
    ("rebalance",),
    ("whatif",),
    ("validate",),
    ("calibrate",),
    ("trace", "inspect"),
    ("trace", "convert"),
    ("trace", "synth"),
    ("autotune", "kernel"),
    ("autotune", "capacity"),
]


def _leaf_paths(cmd, path=()) -> list[tuple[str, ...]]:
    if hasattr(cmd, "commands"):
        return [p for name, sub in cmd.commands.items() for p in _leaf_paths(sub, (*path, name))]
    return [path]


def test_every_command_is_registered() -> None:
    paths = _leaf_paths(typer.main.get_command(cli_main.app))
    assert sorted(paths) == sorted(COMMANDS)
    assert len(paths) == len(set(paths))


def test_every_existing_command_module_is_loaded() -> None:
    for name in cli_main.COMMAND_MODULES:
        try:
            module = importlib.import_module(f"cli.{name}")
        except ModuleNotFoundError as exc:
            assert exc.name == f"cli.{name}"  # absent on this branch: skipped, as _register_all does
            continue
        assert callable(module.register), name


def _after_options(out: str) -> str:
    """The --help text after the last box (the epilog), whitespace normalised."""
    tail = out.rsplit("╯", 1)[-1]
    return " ".join(tail.split())


@pytest.mark.parametrize(
    "path",
    [p for p in COMMANDS if p != ("version",)],
    ids=" ".join,
)
def test_help_ends_with_an_example(path, capsys) -> None:
    code, out, err = run_cli([*path, "--help"], capsys)
    assert code == 0 and err == ""
    assert f"Example: moesim {' '.join(path)}" in " ".join(out.split())  # somewhere in the help
    assert _after_options(out).startswith(f"Example: moesim {' '.join(path)}")


def test_version_prints_the_package_version(capsys) -> None:
    code, out, err = run_cli(["version"], capsys)
    assert (code, out, err) == (0, f"{__version__}\n", "")
    assert __version__ == "0.1.0"  # pyproject.toml's version


def test_no_arguments_prints_the_help_and_exits_0(capsys) -> None:
    code, out, err = run_cli([], capsys)
    assert code == 0 and err == ""
    assert "Usage: moesim" in out and "Example: moesim plan" in out
    for name in ("simulate", "plan", "rebalance", "trace", "autotune", "validate", "version"):
        assert name in out


@pytest.mark.parametrize("group,sub", [("trace", "synth"), ("autotune", "capacity")])
def test_a_bare_group_prints_its_help_and_exits_0(group, sub, capsys) -> None:
    code, out, err = run_cli([group], capsys)
    assert code == 0 and err == ""
    assert f"Usage: moesim {group}" in out and sub in out


@pytest.mark.parametrize(
    "args,needles",
    [
        (["version", "--bogus"], ["moesim version: No such option: --bogus", "(see moesim version --help)"]),
        (["nope"], ["moesim: No such command 'nope'", "(see moesim --help)"]),
        (["trace", "nope"], ["moesim trace: No such command 'nope'", "(see moesim trace --help)"]),
        (["calibrate", "--measured", "x"], ["moesim calibrate: Missing option '-o' / '--out'"]),
        (["validate", "--measured", "x", "--folds", "abc"], ["--folds: 'abc' is not an integer (see moesim validate"]),
        (
            ["simulate", "--model", "olmoe-1b-7b", "--cluster", "dgx-h100", "--capacity-factor", "x"],
            ["--capacity-factor: 'x' is not a number (see moesim simulate --help)"],
        ),
        (
            ["trace", "synth", "--model", "olmoe-1b-7b", "--tokens", "0", "-o", "t.npz"],
            ["--tokens: 0 is not in the range x>=1", "(see moesim trace synth --help)"],
        ),
        (["models", "--json", "extra"], ["moesim models: Got unexpected extra argument(s) (extra)"]),
    ],
    ids=[
        "unknown-option",
        "unknown-command",
        "unknown-subcommand",
        "missing",
        "not-int",
        "not-float",
        "range",
        "extra",
    ],
)
def test_usage_errors_are_one_line_exit_2(args, needles, capsys) -> None:
    code, out, err = run_cli(args, capsys)
    assert_one_line_error(code, err, *needles)
    assert out == ""
    assert "Traceback" not in err and "╭" not in err  # no box, no stack


def test_a_moesim_error_is_one_line_exit_2(tmp_path, capsys) -> None:
    code, out, err = run_cli(["models", "--path", tmp_path / "none.yaml"], capsys)
    assert_one_line_error(code, err, f"{tmp_path / 'none.yaml'}: model: no such file")
    code, _, err = run_cli(
        ["simulate", "--model", "olmoe-1b-7b", "--cluster", "nope", "--synthetic", "zipf:1.2"], capsys
    )
    assert_one_line_error(code, err, "nope: cluster: unknown slug", "dgx-h100")


def _fake_app(monkeypatch, behaviour):
    calls = []

    def app(args=None, prog_name=None, standalone_mode=True):
        calls.append((args, prog_name, standalone_mode))
        if isinstance(behaviour, BaseException):
            raise behaviour
        return behaviour

    monkeypatch.setattr(cli_main, "app", app)
    return calls


@pytest.mark.parametrize("exc", [SpecError("m.yaml: experts: must be > 0"), InfeasibleError("no placement fits")])
def test_any_moesim_error_subclass_is_caught(monkeypatch, capsys, exc) -> None:
    calls = _fake_app(monkeypatch, exc)
    code, out, err = run_cli(["x"], capsys)
    assert (code, out, err) == (2, "", f"moesim: error: {exc}\n")
    assert calls == [(["x"], "moesim", False)]  # click raises instead of printing its own box


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), typer.Abort()])
def test_interrupt_exits_130(monkeypatch, capsys, exc) -> None:
    _fake_app(monkeypatch, exc)
    code, out, err = run_cli([], capsys)
    assert (code, out, err) == (130, "", "moesim: interrupted\n")


@pytest.mark.parametrize("rc,code", [(None, 0), (0, 0), (3, 3), ("text", 0)])
def test_the_commands_return_value_is_the_exit_code(monkeypatch, capsys, rc, code) -> None:
    _fake_app(monkeypatch, rc)
    assert run_cli([], capsys)[0] == code


def test_other_exceptions_are_not_swallowed(monkeypatch, capsys) -> None:
    _fake_app(monkeypatch, ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug"):
        cli_main.main([])


def test_register_all_skips_only_a_missing_command_module(monkeypatch) -> None:
    registered = []
    present = types.SimpleNamespace(register=registered.append)

    def fake_import(name):
        if name == "cli.here_cmd":
            return present
        if name == "cli.gone_cmd":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        raise ModuleNotFoundError("No module named 'optuna'", name="optuna")  # a dependency of the module

    monkeypatch.setattr(importlib, "import_module", fake_import)
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ("gone_cmd", "here_cmd"))
    cli_main._register_all()
    assert registered == [cli_main.app]
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ("here_cmd", "broken_cmd"))
    with pytest.raises(ModuleNotFoundError) as exc:
        cli_main._register_all()
    assert exc.value.name == "optuna"


def test_python_m_cli_runs_main_without_heavy_imports() -> None:
    code = (
        "import sys, runpy\n"
        "sys.argv = ['moesim', 'version']\n"
        "try:\n    runpy.run_module('cli', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = {'torch', 'triton', 'optuna', 'matplotlib', 'kernels'}\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & heavy)\n"
        "print('heavy', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [__version__, "heavy []"]

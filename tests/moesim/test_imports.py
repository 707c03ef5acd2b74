"""The dependency rule at run time: importing any moesim module pulls in none of the layers above it (tuner,
kernels, whatif, cli) nor torch/triton. The static rule (every import, lazy ones included): tests/test_structure.py."""

import pkgutil
import subprocess
import sys

import moesim

FORBIDDEN = ("tuner", "kernels", "whatif", "cli", "torch", "triton")


def test_moesim_never_imports_tuner_or_kernels_at_import_time() -> None:
    names = [m.name for m in pkgutil.walk_packages(moesim.__path__, "moesim.")]  # the moesim package only
    assert "moesim.simulate" in names
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}: importlib.import_module(n)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"imported at import time: {out.stdout.strip()}"


HEAVY = ("networkx", "matplotlib", "optuna", "pulp", "highspy", "scipy", "pandas", "torch", "triton")


def test_simulate_command_imports_only_what_it_uses() -> None:
    """`moesim simulate` (what a user waits for most often) loads none of the heavy optional layers: the
    topology summary needs no graph, plots and solvers are imported where they are used (issue 17)."""
    code = (
        "import sys\n"
        "from cli.main import main\n"
        "sys.argv = ['moesim', 'simulate', '--model', 'deepseek-v3', '--cluster', 'h100-8x8-ib400',\n"
        "            '--synthetic', 'zipf:1.2', '--tokens-per-gpu', '256', '--json']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
        "print('HEAVY:' + ','.join(bad), file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    heavy = [line for line in out.stderr.splitlines() if line.startswith("HEAVY:")]
    assert heavy == ["HEAVY:"], f"imported: {heavy}"

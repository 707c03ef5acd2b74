"""The dependency rule: importing any moesim module pulls in neither tuner nor kernels (nor torch/triton)."""

import pkgutil
import subprocess
import sys

import moesim

FORBIDDEN = ("tuner", "kernels", "torch", "triton")


def test_moesim_never_imports_tuner_or_kernels_at_import_time() -> None:
    names = [m.name for m in pkgutil.walk_packages(moesim.__path__, "moesim.") if m.name != "moesim.__main__"]
    assert "moesim.simulate" in names and "moesim.cli.main" in names
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}: importlib.import_module(n)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"imported at import time: {out.stdout.strip()}"

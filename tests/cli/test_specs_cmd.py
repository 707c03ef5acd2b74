"""``moesim models|gpus|clusters``: tables, JSON, and a one-line error with exit code 2 for a bad file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250"}  # wide enough that rich does not fold the slugs
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def test_models_json_lists_every_model() -> None:
    from moesim.specs import list_models

    r = _run("models", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [m["slug"] for m in doc] == list_models()
    v3 = next(m for m in doc if m["slug"] == "deepseek-v3")
    assert v3["num_moe_layers"] == 58 and v3["moe_layers"][0] == 3


@pytest.mark.parametrize("cmd,slug", [("gpus", "h100-sxm"), ("clusters", "h800-8x8-ib400")])
def test_tables_and_json(cmd: str, slug: str) -> None:
    r = _run(cmd)
    assert r.returncode == 0 and slug in r.stdout
    doc = json.loads(_run(cmd, "--json").stdout)
    assert slug in [d["slug"] for d in doc]


def test_clusters_json_fields() -> None:
    doc = json.loads(_run("clusters", "--json", "--path", "h800-2x8-ib400").stdout)
    assert doc[0]["num_gpus"] == 16 and doc[0]["gpu"] == "h800-sxm" and doc[0]["nic"]["layout"] == "rail"


def test_bad_file_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("slug: x\nname: [unclosed\n")
    r = _run("models", "--path", str(bad))
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"moesim: error: {bad}: ")


def test_unknown_slug_exit_2() -> None:
    r = _run("gpus", "--path", "b300")
    assert r.returncode == 2 and "known: " in r.stderr and len(r.stderr.strip().splitlines()) == 1

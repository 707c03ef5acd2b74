"""moesim.traces.shipped: the shipped traces regenerate from the OLMoE analysis JSON beside them."""

from __future__ import annotations

from pathlib import Path

import pytest

from moesim.traces.formats import load_trace
from moesim.traces.shipped import convert_olmoe_analysis

REPO = Path(__file__).resolve().parents[3]
SHIPPED = REPO / "profiles" / "traces"
SHARED = REPO.parent / "shared" / "data" / "routing" / "olmoe_analysis"


def test_shared_copy_present_or_skip() -> None:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (only in the development checkout); shipped copies are tested above")
    for f in SHARED.glob("*.json"):
        assert (SHIPPED / f.name).read_bytes() == f.read_bytes(), f"{f.name}: shipped copy differs"


def test_regenerate_shipped_traces(tmp_path: Path) -> None:
    written = convert_olmoe_analysis(SHIPPED, tmp_path)
    assert len(written) == 10
    for p in written:
        assert load_trace(p) == load_trace(SHIPPED / p.name)
    assert (tmp_path / "mistral_c4.json").exists() and (tmp_path / "mixtral_c4.npz").exists()

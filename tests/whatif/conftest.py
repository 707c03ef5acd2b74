"""Fixtures the what-if tests share."""

import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Each test its own record cache (``MOESIM_CACHE_DIR``), so no test reads another's records."""
    monkeypatch.setenv("MOESIM_CACHE_DIR", str(tmp_path / "cache"))

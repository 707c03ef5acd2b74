"""moesim.schema: the typed field walker and the array checks every loader shares."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from moesim.errors import SpecError, TraceError
from moesim.schema import int_array


def test_int_array_checks_range_exactly() -> None:
    """Found by benchmarks/bench_fuzz.py (issue 15): through float64, 2**63 equals the int64 maximum, so a uint64
    entry or a float of 2**63 passed the range check and wrapped to -2**63 (with a RuntimeWarning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for value in (np.array([2**63, 1], dtype=np.uint64), [2**63], np.array([2.0**63])):
            with pytest.raises(SpecError, match=r"^f: counts: entries must be <= "):
                int_array(value, "f", "counts")
        assert int_array([2**63 - 1], "f", "counts").tolist() == [2**63 - 1]  # exact, not through float64
        assert int_array(np.array([3, 4], dtype=np.uint64), "f", "x").dtype == np.int64
        with pytest.raises(TraceError, match=r"^f: ids: entries must be <= 2,147,483,647"):
            int_array(np.array([2**31]), "f", "ids", dtype=np.int32, error=TraceError)


def test_int_array_keeps_its_messages() -> None:
    with pytest.raises(SpecError, match="entries must be >= 0, got -1"):
        int_array([1, -1], "f", "x", minimum=0)
    with pytest.raises(SpecError, match="expected 2 dimensions, got shape"):
        int_array(np.zeros(3, dtype=np.int64), "f", "x", ndim=2)
    with pytest.raises(SpecError, match="entries must be whole numbers"):
        int_array([1.5], "f", "x")
    with pytest.raises(SpecError, match="expected numbers, got bool"):
        int_array([True], "f", "x")
    with pytest.raises(SpecError, match="not a rectangular array"):
        int_array([[1], [2, 3]], "f", "x")

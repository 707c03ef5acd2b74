"""Shared inputs for the rebalance tests: OLMoE on two H100 nodes and its two recorded traces, loaded once."""

from __future__ import annotations

from pathlib import Path

import pytest

from moesim.specs import load_cluster, load_model
from moesim.traces.formats import load_trace

TRACES = Path(__file__).resolve().parents[3] / "profiles" / "traces"


@pytest.fixture(scope="session")
def olmoe_traces():
    """``(model, cluster, c4, github)``: OLMoE-1B-7B, ``h100-2x8-ib400``, its C4 and GitHub traces."""
    model = load_model("olmoe-1b-7b")
    cluster = load_cluster("h100-2x8-ib400")
    c4 = load_trace(TRACES / "olmoe_c4.npz", model=model)
    github = load_trace(TRACES / "olmoe_github.npz", model=model)
    return model, cluster, c4, github

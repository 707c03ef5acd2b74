"""moesim.traces.formats (json_doc, olmoe): the OLMoE routing-analysis JSON and native JSON importers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moesim.errors import TraceError
from moesim.traces.formats import load_trace
from moesim.traces.native import save_trace
from moesim.traces.trace import RoutingTrace

REPO = Path(__file__).resolve().parents[3]
SHIPPED = REPO / "profiles" / "traces"
SHARED = REPO.parent / "shared" / "data" / "routing" / "olmoe_analysis"
DOMAINS = ("arxiv", "book", "c4", "github", "wikipedia")


# ------------------------------------------------------------------ OLMoE analysis JSON (real data)
def _raw_dirs() -> list[Path]:
    dirs = [SHIPPED]
    if SHARED.is_dir():
        dirs.append(SHARED)
    return dirs


@pytest.mark.parametrize("stem", [f"olmoe_{d}" for d in DOMAINS] + [f"mistral_{d}" for d in DOMAINS])
def test_olmoe_json_matches_raw(stem: str) -> None:
    for d in _raw_dirs():
        raw = json.loads((d / f"{stem}.json").read_text())
        t = load_trace(d / f"{stem}.json")
        assert t.layers == (0, 7, 15)
        assert t.num_tokens == 208896
        assert np.array_equal(t.counts, np.array(raw["expert_counts"]))
        assert np.array_equal(t.transitions, np.array(raw["expert_counts_crosslayer"]["counts"]))
        assert t.model == ("olmoe-1b-7b" if stem.startswith("olmoe") else "mixtral-8x7b")
        assert (t.num_experts, t.top_k) == ((64, 8) if stem.startswith("olmoe") else (8, 2))
        assert "357454f" in t.source and "Apache-2.0" in t.source
        # the shipped native trace is exactly this conversion
        native = load_trace(SHIPPED / f"{stem.replace('mistral', 'mixtral')}.npz")
        assert native == t


def test_olmoe_json_bad_fields(tmp_path: Path) -> None:
    raw = json.loads((SHIPPED / "olmoe_c4.json").read_text())
    raw["expert_counts"][0][0] += 1
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(raw))
    with pytest.raises(TraceError, match=r"bad.json: expert_counts: row sums"):
        load_trace(p)
    raw = json.loads((SHIPPED / "olmoe_c4.json").read_text())
    del raw["top_k"]
    p.write_text(json.dumps(raw))
    with pytest.raises(TraceError, match=r"bad.json: top_k: missing"):
        load_trace(p)


def test_olmoe_with_model_check(make_model) -> None:
    t = load_trace(SHIPPED / "olmoe_c4.npz", model=make_model(64, 8, tuple(range(16)), 16, "olmoe-1b-7b"))
    assert t.model == "olmoe-1b-7b"
    with pytest.raises(
        TraceError, match="olmoe_c4.npz: num_experts: trace has 64 experts but model deepseek-v3 has 256"
    ):
        load_trace(SHIPPED / "olmoe_c4.npz", model=make_model(256, 8, tuple(range(3, 61)), 61, "deepseek-v3"))


def test_native_json_wrong_version(tmp_path: Path, random_ids) -> None:
    p = tmp_path / "t.json"
    save_trace(RoutingTrace.from_topk_ids(random_ids(3, 1, 4, 2), 4), p)
    doc = json.loads(p.read_text())
    doc["version"] = 99
    p.write_text(json.dumps(doc))
    with pytest.raises(TraceError, match="t.json: version: file is version 99"):
        load_trace(p)

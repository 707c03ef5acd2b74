"""cli.rebalance_tables: what ``moesim rebalance`` prints and its ``--json`` documents, from hand-made results
(cells, marks, percentages, byte units, non-finite values as JSON null, the cadence's closing advice)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cli.rebalance_tables import (
    _short_bytes,
    cadence_dict,
    point_dict,
    print_cadence,
    print_points,
    rebalance_dict,
)
from tuner.engine_facts import facts_for
from tuner.rebalance.cadence import CadenceResult, IntervalResult
from tuner.rebalance.flow import Point, RebalanceResult
from tuner.rebalance.move_cost import MoveCost


class _Console:
    """Collects what is printed, as rich's Console.print would receive it."""

    def __init__(self) -> None:
        self.printed: list = []

    def print(self, obj) -> None:
        self.printed.append(obj)


def _cells(table) -> list[list[str]]:
    return [list(r) for r in zip(*[list(c.cells) for c in table.columns], strict=True)]


def _cost(per_layer=(0, 0, 0), intra=0.0, net=0.0, transfer=0.0, stall=0.0) -> MoveCost:
    return MoveCost(
        moves=sum(per_layer),
        moves_per_layer=tuple(per_layer),
        local_copies=1,
        bytes_intra=intra,
        bytes_network=net,
        transfer_s=transfer,
        stall_s=stall,
    )


def _pt(label, latency, cost, gain=0.0, payoff=math.inf, frac=None) -> Point:
    return Point(
        label=label,
        moves=cost.moves,
        objective_us=3 * latency,
        latency_us=latency,
        layer_latencies_us=(latency - 10, latency, latency + 10),
        cost=cost,
        step_gain_us=gain,
        payoff_steps=payoff,
        rows=np.zeros((3, 4), dtype=np.int64),
        gain_fraction=frac,
    )


def _result() -> RebalanceResult:
    current = _pt("current", 2000.0, _cost())
    few = _pt("4 moves", 1800.0, _cost((1, 3, 0), intra=2.5e6, net=0.0, transfer=0.0012, stall=0.5), 600.0, 833.3, 0.4)
    replan = _pt("full replan", 1500.0, _cost((20, 20, 24), 3e9, 1.234e10, 0.25, 1.75), 1500.0, 1166.7, 1.0)
    return RebalanceResult(
        current=current,
        replan=replan,
        points=[few],
        chosen=few,
        curve=[(0, 6000.0), (4, 5400.0), (64, 4500.0)],
        placement=None,
        expert_bytes=2.5e6 / 4,
        search_s=0.75,
        notes=["a note"],
    )


@pytest.mark.parametrize(
    "value,text",
    [
        (0, "0"),
        (0.0, "0"),
        (0.4, "0"),
        (512, "512"),
        (999, "999"),
        (1000, "1k"),
        (1500, "1.5k"),
        (2.5e6, "2.5M"),
        (3e9, "3G"),
        (1.234e10, "12.3G"),
        (-2e6, "-2M"),
    ],
)
def test_short_bytes(value, text) -> None:
    assert _short_bytes(value) == text


def test_point_dict_fields_and_non_finite_as_null() -> None:
    r = _result()
    d = point_dict(r.chosen)
    assert d == {
        "label": "4 moves",
        "moves": 4,
        "objective_us": 5400.0,
        "layer_latency_us": 1800.0,
        "layer_latencies_us": [1790.0, 1800.0, 1810.0],
        "step_gain_us": 600.0,
        "gain_fraction": 0.4,
        "payoff_steps": 833.3,
        "moves_per_layer": [1, 3, 0],
        "local_copies": 1,
        "bytes_intra": 2.5e6,
        "bytes_network": 0.0,
        "transfer_s": 0.0012,
        "stall_s": 0.5,
    }
    cur = point_dict(r.current)
    assert cur["payoff_steps"] is None and cur["gain_fraction"] is None  # inf payoff: never pays off
    bad = _pt("x", 1.0, _cost((1, 0, 0), transfer=math.inf, stall=math.inf), payoff=math.nan, frac=math.nan)
    d = point_dict(bad)
    assert d["transfer_s"] is None and d["stall_s"] is None and d["payoff_steps"] is None and d["gain_fraction"] is None
    json.dumps(d, allow_nan=False)  # a strict JSON document


@pytest.mark.parametrize("engine", ["sglang-static", "vllm", "trtllm"])
def test_print_points_title_names_the_engine_and_its_mode(engine) -> None:
    con = _Console()
    print_points(_result(), engine, con)
    (table,) = con.printed
    facts = facts_for(engine)
    mode = "synchronous" if facts.synchronous else "overlapped with decode"
    assert table.title.startswith(
        f"Rebalance candidates under {engine} ({facts.name} {facts.version} moves are {mode})"
    )
    assert engine != "trtllm" or "overlapped with decode" in table.title  # TRT-LLM moves run beside decode


def test_print_points_cells_by_hand() -> None:
    con = _Console()
    print_points(_result(), "sglang-static", con)
    (table,) = con.printed
    assert [c.header for c in table.columns] == [
        "candidate",
        "moves",
        "/layer",
        "NVLink",
        "network",
        "transfer ms",
        "stall s",
        "layer us",
        "gain us",
        "of replan",
        "payoff",
    ]
    assert _cells(table) == [
        ["current", "0", "0-0", "0", "0", "0.0", "0.00", "2,000", "0", "", ""],
        ["* 4 moves", "4", "0-3", "2.5M", "0", "1.2", "0.50", "1,800 (-10%)", "600", "40%", "833"],
        ["full replan", "64", "20-24", "3G", "12.3G", "250.0", "1.75", "1,500 (-25%)", "1,500", "100%", "1,167"],
    ]


def test_print_points_never_payoff_and_a_slower_candidate() -> None:
    r = _result()
    worse = _pt("2 moves", 2100.0, _cost((2, 0, 0), intra=1e3), gain=-300.0, payoff=math.inf, frac=-0.2)
    r.points = [worse]
    r.chosen = r.current
    con = _Console()
    print_points(r, "vllm", con)
    rows = _cells(con.printed[0])
    assert rows[0][0] == "* current"  # staying put was chosen
    assert rows[1][0] == "2 moves" and rows[1][7] == "2,100 (+5%)" and rows[1][8] == "-300"
    assert rows[1][9] == "-20%" and rows[1][10] == "never"


def test_rebalance_dict_is_the_whole_result() -> None:
    r = _result()
    doc = rebalance_dict(r, "sglang-static", "eplb", ["a.json", "b.pt"])
    assert set(doc) == {
        "engine",
        "replan",
        "expert_bytes",
        "search_s",
        "current",
        "full_replan",
        "points",
        "chosen",
        "curve",
        "notes",
        "written",
    }
    assert doc["engine"] == "sglang-static" and doc["replan"] == "eplb" and doc["written"] == ["a.json", "b.pt"]
    assert doc["expert_bytes"] == 625000.0 and doc["search_s"] == 0.75 and doc["notes"] == ["a note"]
    assert doc["curve"] == [[0, 6000.0], [4, 5400.0], [64, 4500.0]]
    assert doc["chosen"] == point_dict(r.chosen) and doc["points"] == [point_dict(r.chosen)]
    assert doc["full_replan"]["label"] == "full replan" and doc["full_replan"]["gain_fraction"] == 1.0
    json.loads(json.dumps(doc, allow_nan=False))


def _interval(steps, every, rebalances, moves, stall, moe) -> IntervalResult:
    return IntervalResult(
        every=every, steps=steps, rebalances=rebalances, moves=moves, stall_s=stall, moe_s=moe, total_s=moe + stall
    )


def _cadence(policy="eplb", best_index=1) -> CadenceResult:
    intervals = [
        _interval(1000, 1, 7, 1200, 3.5, 96.5),  # total 100.0
        _interval(4000, 4, 1, 300, 0.5, 97.5),  # total 98.0
        _interval(8000, 8, 0, 0, 0.0, 100.0),  # never: total 100.0
    ]
    return CadenceResult(
        snapshots=[f"s{i}.npz" for i in range(8)],
        dump_steps=1000,
        drift_tv=[0.0123, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07],
        intervals=intervals,
        best=intervals[best_index],
        engine="sglang-static",
        flags={"sglang": "--eplb-rebalance-num-iterations 4000", "vllm": "--eplb-config.step_interval 4000"},
        notes=["n"],
        policy=policy,
    )


def test_print_cadence_eplb_table_and_engine_flags() -> None:
    con = _Console()
    print_cadence(_cadence(), con)
    drift, table, sglang, vllm = con.printed
    # only the first six lags are shown
    assert drift == "load drift (total variation between snapshots 1, 2, ... apart): 1.2%, 2.0%, 3.0%, 4.0%, 5.0%, 6.0%"
    assert table.title == "Rebalance interval (the engine's EPLB) over 8 snapshots of 1000 steps"
    assert _cells(table) == [
        ["1,000", "7", "1,200", "3.50", "96.50", "100.00", "+0.00%"],
        ["* 4,000", "1", "300", "0.50", "97.50", "98.00", "-2.00%"],
        ["never", "0", "0", "0.00", "100.00", "100.00", "+0.00%"],
    ]
    assert sglang == "SGLang: --eplb-rebalance-num-iterations 4000"
    assert vllm == "vLLM:   --eplb-config.step_interval 4000"


def test_print_cadence_moesim_policy_advises_moesim_rebalance() -> None:
    con = _Console()
    print_cadence(_cadence(policy="moves", best_index=0), con)
    _, table, advice = con.printed
    assert table.title.startswith("Rebalance interval (moesim's moves)")
    assert _cells(table)[0][0] == "* 1,000"
    assert advice.startswith("rebalance with `moesim rebalance` every 1,000 steps")
    assert "--eplb" not in advice


@pytest.mark.parametrize("policy", ["eplb", "moves"])
def test_print_cadence_never_best_prints_no_advice(policy) -> None:
    con = _Console()
    print_cadence(_cadence(policy=policy, best_index=2), con)
    assert len(con.printed) == 2
    assert _cells(con.printed[1])[2][0] == "* never"


def test_print_cadence_without_a_never_interval_leaves_vs_never_blank() -> None:
    c = _cadence()
    c.intervals = c.intervals[:2]
    con = _Console()
    print_cadence(c, con)
    assert [row[6] for row in _cells(con.printed[1])] == ["", ""]


def test_cadence_dict_by_hand() -> None:
    doc = cadence_dict(_cadence(), "sglang-static", "eplb", 1000)
    assert doc["engine"] == "sglang-static" and doc["policy"] == "eplb" and doc["dump_steps"] == 1000
    assert doc["snapshots"] == [f"s{i}.npz" for i in range(8)] and len(doc["drift_tv"]) == 7
    assert doc["intervals"][0] == {
        "steps": 1000,
        "every": 1,
        "never": False,
        "rebalances": 7,
        "moves": 1200,
        "stall_s": 3.5,
        "moe_s": 96.5,
        "total_s": 100.0,
    }
    assert [i["never"] for i in doc["intervals"]] == [False, False, True]
    assert doc["best_steps"] == 4000 and doc["flags"]["sglang"].endswith("4000") and doc["notes"] == ["n"]
    assert cadence_dict(_cadence(best_index=2), "vllm", "eplb", 1000)["best_steps"] is None
    json.loads(json.dumps(doc, allow_nan=False))

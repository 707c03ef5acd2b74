"""cli.autotune_tables: the closing tables of ``moesim autotune kernel`` and ``moesim autotune capacity``, cell by
cell from hand-made results (formatting, speedups, missing values, the Pareto pick's mark)."""

from __future__ import annotations

from rich.console import Console

from cli.autotune_tables import front_table, results_table
from tuner.autotune.capacity.objective import CapacityPoint, LayerSetting
from tuner.autotune.capacity.search import CapacityResult
from tuner.autotune.kernel.results import MResult
from tuner.autotune.space import PARAM_NAMES

CONFIG = {
    "BLOCK_SIZE_M": 64,
    "BLOCK_SIZE_N": 128,
    "BLOCK_SIZE_K": 64,
    "GROUP_SIZE_M": 16,
    "num_warps": 8,
    "num_stages": 3,
}


def _cells(table) -> list[list[str]]:
    """Rows of a rich table as lists of cell strings."""
    cols = [list(c.cells) for c in table.columns]
    return [list(r) for r in zip(*cols, strict=True)]


def _mresult(m, config=CONFIG, best=10.0, default=None, vllm=None, trials=20, failed=0) -> MResult:
    return MResult(
        m=m,
        best_config=config,
        best_us=best,
        trials=trials,
        failed=failed,
        pruned=0,
        default_us=default,
        vllm_us=vllm,
        vllm_file=None,
        stopped_by="trials",
    )


def test_results_table_columns_and_justification() -> None:
    t = results_table([])
    heads = [c.header for c in t.columns]
    assert heads == [
        "M",
        "best config (BM,BN,BK,G,warps,stages)",
        "median us",
        "trials",
        "failed",
        "vs default",
        "vs vLLM shipped",
    ]
    assert [c.justify for c in t.columns] == ["right", "left", "right", "right", "right", "right", "right"]
    assert t.title is None and t.row_count == 0
    assert results_table([], title="E=8 N=7168").title == "E=8 N=7168"


def test_results_row_by_hand() -> None:
    t = results_table([_mresult(256, best=12.345, default=24.69, vllm=15.0, trials=40, failed=3)])
    # 24.69 / 12.345 = 2.000; 15 / 12.345 = 1.2151
    assert _cells(t) == [["256", "64,128,64,16,8,3", "12.3", "40", "3", "2.00x", "1.22x"]]


def test_config_is_printed_in_param_order_whatever_the_dict_order() -> None:
    shuffled = {k: CONFIG[k] for k in reversed(PARAM_NAMES)}
    (row,) = _cells(results_table([_mresult(1, config=shuffled)]))
    assert row[1] == ",".join(str(CONFIG[k]) for k in PARAM_NAMES) == "64,128,64,16,8,3"


def test_missing_values_are_dashes() -> None:
    rows = _cells(
        results_table(
            [
                _mresult(1, config=None, best=None, default=5.0, vllm=4.0, trials=0, failed=7),
                _mresult(2, best=8.0, default=None, vllm=None),
                _mresult(3, best=0.0, default=5.0, vllm=5.0),  # no speedup over a zero time
            ]
        )
    )
    assert rows[0] == ["1", "-", "-", "0", "7", "-", "-"]
    assert rows[1][2:] == ["8.0", "20", "0", "-", "-"]
    assert rows[2][2] == "0.0" and rows[2][5:] == ["-", "-"]


def test_a_slower_tuned_config_shows_a_speedup_below_one() -> None:
    (row,) = _cells(results_table([_mresult(64, best=20.0, default=10.0, vllm=5.0)]))
    assert row[5:] == ["0.50x", "0.25x"]


def test_rows_keep_the_order_given() -> None:
    rows = _cells(results_table([_mresult(m) for m in (512, 1, 64)]))
    assert [r[0] for r in rows] == ["512", "1", "64"]


def _point(trial, latency, dropped, settings) -> CapacityPoint:
    return CapacityPoint(settings=tuple(settings), step_latency_us=latency, dropped_fraction=dropped, trial=trial)


def _capacity_result(pick_trial: int | None = 7) -> CapacityResult:
    dropless = _point(0, 1000.0, 0.0, [LayerSetting(0, None), LayerSetting(7, None)])
    mid = _point(7, 800.0, 0.0012345, [LayerSetting(0, 1.25, "probs"), LayerSetting(7, None)])
    fast = _point(3, 640.0, 0.05, [LayerSetting(0, 1.0, "position"), LayerSetting(7, 1.337, "reroute")])
    other = _point(5, 900.0, 0.2, [LayerSetting(0, 2.0), LayerSetting(7, 2.0)])  # dominated, not on the front
    pick = {7: mid, 3: fast, None: None}[pick_trial]
    return CapacityResult(
        points=[dropless, fast, other, mid], front=[fast, mid, dropless], dropless=dropless, pick=pick, max_drop=0.01
    )


def test_front_table_rows_by_hand() -> None:
    t = front_table(_capacity_result())
    assert t.title == "Pareto front (3 of 4 trials)"
    assert [c.header for c in t.columns] == [
        "#",
        "step us",
        "vs dropless",
        "dropped",
        "per-layer capacity (layer:factor/policy)",
    ]
    assert [c.justify for c in t.columns] == ["right", "right", "right", "right", "left"]
    assert _cells(t) == [
        ["0", "640.0", "1.562x", "5.000%", "0:1.00/position 7:1.34/reroute"],  # 1000 / 640 = 1.5625
        ["1 *", "800.0", "1.250x", "0.123%", "0:1.25/probs 7:-"],
        ["2", "1000.0", "1.000x", "0.000%", "0:- 7:-"],
    ]


def test_front_table_marks_the_pick_by_trial_and_nothing_without_one() -> None:
    rows = _cells(front_table(_capacity_result(pick_trial=3)))
    assert [r[0] for r in rows] == ["0 *", "1", "2"]
    rows = _cells(front_table(_capacity_result(pick_trial=None)))
    assert [r[0] for r in rows] == ["0", "1", "2"]


def test_front_table_explicit_title_and_renders() -> None:
    t = front_table(_capacity_result(), title="olmoe on dgx-h100")
    assert t.title == "olmoe on dgx-h100"
    con = Console(record=True, width=200)
    con.print(t)
    text = con.export_text()
    assert "olmoe on dgx-h100" in text and "0:1.25/probs 7:-" in text and "1.562x" in text

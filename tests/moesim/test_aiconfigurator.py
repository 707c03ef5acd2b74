"""The reader of AIConfigurator's tables, against the tables of the installed ``aiconfigurator-core``."""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest

from moesim.errors import MoesimError, SpecError

pd = pytest.importorskip("pandas", reason="the `measured` extra (pandas, pyarrow) is not installed")
aic = pytest.importorskip("aiconfigurator_core", reason="the `measured` extra (aiconfigurator-core) is missing")

from moesim.aiconfigurator import read_table  # noqa: E402

DATA = Path(aic.__file__).parent / "systems" / "data" / "h100_sxm"


def test_nccl_units_and_provenance() -> None:
    t = read_table(DATA / "comm/nccl/2.29.2/nccl_perf.parquet")
    raw = pd.read_parquet(DATA / "comm/nccl/2.29.2/nccl_perf.parquet")
    assert len(t.records) == len(raw) and not t.skipped
    r, row = t.records[0], raw.iloc[0]
    elem = 2 if row["nccl_dtype"] == "half" else 1
    assert r["message_bytes"] == row["message_size"] * elem  # elements, not bytes
    assert r["median_us"] == pytest.approx(row["latency"] * 1e3)  # ms
    assert t.provenance["package"] == "aiconfigurator-core" and t.provenance["package_version"]
    assert r["gpu"] == "h100-sxm"


def test_moe_table_skips_with_reasons() -> None:
    t = read_table(DATA / "moe/vllm/0.24.0/moe_perf.parquet")
    assert {r["kind"] for r in t.records} == {"fused_moe"} and len(t.records) > 15000
    assert all(r["ep_mode"] == "allgather" and r["dtype"] == "bf16" for r in t.records)
    assert t.skipped and all("only the BF16 Triton fused MoE" in why for _, why in t.skipped)
    nano = [r for r in t.records if (r["hidden"], r["intermediate"]) == (2688, 1856)]
    assert nano and not any(r["gated"] for r in nano)  # Nemotron's relu2 experts, from the package's model config
    assert t.provenance["collected"]


def test_deepep_tables_one_record_per_phase() -> None:
    t = read_table(DATA / "comm/sglang/0.5.12/wideep_deepep_normal_perf.parquet")
    raw = pd.read_parquet(DATA / "comm/sglang/0.5.12/wideep_deepep_normal_perf.parquet")
    assert len(t.records) == 2 * len(raw)
    d = t.records[0]
    assert d["phase"] == "dispatch" and d["num_sms"] == raw.iloc[0]["dispatch_sms"]
    assert d["median_us"] == pytest.approx(raw.iloc[0]["dispatch_transmit_us"])  # already us


def test_bad_tables(tmp_path: Path) -> None:
    raw = pd.read_parquet(DATA / "comm/nccl/2.29.2/nccl_perf.parquet")
    (tmp_path / "a").mkdir()
    raw.drop(columns=["message_size"]).to_parquet(tmp_path / "a" / "nccl_perf.parquet")
    with pytest.raises(SpecError, match=r"nccl_perf\.parquet: message_size: missing column"):
        read_table(tmp_path / "a" / "nccl_perf.parquet")
    (tmp_path / "b").mkdir()
    bad = raw.copy()
    bad.loc[3, "latency"] = 0.0
    bad.to_parquet(tmp_path / "b" / "nccl_perf.parquet")
    with pytest.raises(SpecError, match=r"latency: row 3: latency must be a positive number"):
        read_table(tmp_path / "b" / "nccl_perf.parquet")
    with pytest.raises(SpecError, match="unknown AIConfigurator table"):
        read_table(tmp_path / "gemm_perf.parquet")


def test_missing_pandas_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = builtins.__import__

    def fake(name, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if name == "pyarrow":
            raise ModuleNotFoundError("No module named 'pyarrow'", name="pyarrow")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(MoesimError, match=r"pip install -e '\.\[measured\]'"):
        read_table(DATA / "comm/nccl/2.29.2/nccl_perf.parquet")

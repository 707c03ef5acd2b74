"""NCCL and DeepEP communication models: shapes of the curves, fitting, files."""

from __future__ import annotations

import numpy as np
import pytest

from moesim import collectives as co
from moesim.errors import SpecError

PHASE = co.DeepEPPhase(lat=20.0, lat_sm=40.0, tok_us=0.001, bw=1.5e5, bw_sm=1.2e4)
NORMAL = co.DeepEPNormalParams(PHASE, PHASE)
LL = co.DeepEPLowLatencyParams(co.DeepEPPhase(10.0, 0.0, 0.002, 1e5, 0.0), co.DeepEPPhase(12.0, 0.0, 0.002, 8e4, 0.0))


def test_distinct_ranks() -> None:
    assert co.distinct_ranks(1, 256) == pytest.approx(1.0)
    assert co.distinct_ranks(8, 8) == pytest.approx(8.0)  # one expert per rank: all ranks
    assert 1.0 < co.distinct_ranks(8, 256) < 8.0


def test_deepep_normal_floor_tokens_and_sms() -> None:
    t = co.deepep_normal_us(NORMAL, "dispatch", np.array([1, 128, 4096, 65536]), 7168, 8, 256, 24)
    assert np.all(np.diff(t) > 0) and t[0] >= PHASE.lat
    few, many = (co.deepep_normal_us(NORMAL, "combine", np.array([65536.0]), 7168, 8, 256, s)[0] for s in (4, 24))
    assert many < few  # more SMs never slower on a large message


def test_deepep_ll_and_nccl_monotone() -> None:
    t = co.deepep_ll_us(LL, "combine", np.array([1, 64, 512]), 7168, 8, 256)
    assert np.all(np.diff(t) > 0) and t[0] >= 12.0
    params = co.NCCLParams((("alltoall/8", co.NCCLCurve(lat=7.0, bw=3e5, s_half=1e6, q=1.0)),))
    sizes = np.logspace(8, 29, 22, base=2)
    nt = co.nccl_us(params, "alltoall", 8, sizes)
    assert np.all(np.diff(nt) > 0) and nt[0] >= 7.0
    assert co.nccl_us(params, "alltoall", 16, sizes[:1]) > 0  # nearest fitted GPU count stands in


def test_fits_recover_their_own_models() -> None:
    rng = np.random.default_rng(0)
    n = 300
    phase = np.array(["dispatch", "combine"] * (n // 2))
    tokens = rng.choice([1, 16, 128, 1024, 8192, 65536], n)
    hidden = rng.choice([2048, 4096, 7168], n)
    top_k, experts = np.full(n, 8), rng.choice([128, 256], n)
    sms = rng.choice([4, 8, 16, 24], n)
    meas = np.array([co.deepep_normal_us(NORMAL, p, np.array([t]), h, k, e, s)[0]
                     for p, t, h, k, e, s in zip(phase, tokens, hidden, top_k, experts, sms, strict=True)])  # fmt: skip
    fitted = co.fit_deepep_normal(phase, tokens, hidden, top_k, experts, sms, meas)
    rows = list(zip(phase, tokens, hidden, top_k, experts, sms, strict=True))
    again = np.array([co.deepep_normal_us(fitted, p, np.array([t]), h, k, e, s)[0] for p, t, h, k, e, s in rows])
    assert np.allclose(again, meas, rtol=0.03)
    sizes = np.logspace(8, 29, 22, base=2)
    truth = co.NCCLParams((("all_gather/4", co.NCCLCurve(6.0, 2.5e5, 5e5, 1.0)),))
    fit = co.fit_nccl(np.full(22, "all_gather"), np.full(22, 4), sizes, co.nccl_us(truth, "all_gather", 4, sizes))
    assert np.allclose(co.nccl_us(fit, "all_gather", 4, sizes), co.nccl_us(truth, "all_gather", 4, sizes), rtol=0.03)


def test_round_trip_and_errors() -> None:
    nccl = co.NCCLParams((("alltoall/8", co.NCCLCurve(7.0, 3e5, 1e6, 1.0)),))
    assert co.nccl_from_dict(co.collectives_to_dict(nccl), "c.json") == nccl
    assert co.deepep_normal_from_dict(co.collectives_to_dict(NORMAL), "c.json") == NORMAL
    assert co.deepep_ll_from_dict(co.collectives_to_dict(LL), "c.json") == LL
    with pytest.raises(SpecError, match=r"c\.json: nccl\.alltoall/8\.lat: expected a finite number >= 0"):
        co.nccl_from_dict({"alltoall/8": {"lat": -1, "bw": 1, "s_half": 1, "q": 1}}, "c.json")
    with pytest.raises(SpecError, match=r"deepep_normal\.combine: missing"):
        co.deepep_normal_from_dict({"dispatch": co.collectives_to_dict(NORMAL)["dispatch"]}, "c.json")
    with pytest.raises(SpecError, match=r"nccl\.gather/8"):
        co.nccl_from_dict({"gather/8": {"lat": 1, "bw": 1, "s_half": 1, "q": 1}}, "c.json")

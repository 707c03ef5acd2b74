"""The two-worker exact-budget test against a real PostgreSQL server (``.ci/postgres.sh`` starts one)."""

from __future__ import annotations

import os
import uuid

import pytest

from tests.tuner.conftest import check_exact_budget, run_workers

URL = os.environ.get("MOESIM_TEST_POSTGRES_URL")

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not URL, reason="MOESIM_TEST_POSTGRES_URL unset (source .ci/postgres.sh to start a server)"),
]


def test_two_workers_on_postgres_finish_exactly_n_trials():
    pytest.importorskip("psycopg2")
    study = f"pg-{uuid.uuid4().hex[:12]}"
    outs = run_workers(URL, study, 24, workers=2, sleep=0.01)
    check_exact_budget(URL, study, 24, outs)
    assert all(int(o.split("measured=")[1].split()[0]) >= 1 for o in outs)


def test_budget_lock_on_postgres_is_an_advisory_lock():
    from tuner.autotune import storage

    with storage.budget_lock(URL, "x") as kind:
        assert kind == "pg_advisory"

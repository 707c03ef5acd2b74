"""The engines' rebalancing facts: read from profiles/reference/engine_rebalance.yaml, mapped from dispatch rules."""

from __future__ import annotations

from tuner.engine_facts import engine_facts, facts_for


def test_engine_facts_are_read_and_mapped() -> None:
    facts = engine_facts()
    assert set(facts) == {"sglang", "vllm", "trtllm"}
    assert facts["sglang"].interval_steps == 1000 and facts["sglang"].synchronous
    assert not facts["trtllm"].synchronous
    assert facts_for("sglang-static").name == "sglang" and facts_for("vllm").name == "vllm"


def test_vllm_defaults_come_from_the_facts() -> None:
    from tuner.engine_files.vllm_eplb import defaults

    vllm = engine_facts()["vllm"]
    assert defaults() == {"window_size": vllm.window_steps, "step_interval": vllm.interval_steps}
    assert (vllm.window_steps, vllm.interval_steps) == (1000, 3000)

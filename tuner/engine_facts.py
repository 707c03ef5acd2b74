"""Each serving engine's rebalancing habits, as data: its default cadence and whether a rebalance stops serving.

The facts live in ``profiles/reference/engine_rebalance.yaml`` (every figure with its source); this module reads
them once and is the one place code takes an engine default from: SGLang's ``--eplb-rebalance-num-iterations``
(1000 steps), vLLM's ``EPLBConfig.step_interval`` (3000 steps) and ``window_size`` (1000 steps), TensorRT-LLM's
online balancer (no stop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from moesim.errors import SpecError

ENGINE_FACTS = Path(__file__).resolve().parents[1] / "profiles" / "reference" / "engine_rebalance.yaml"


@dataclass(frozen=True)
class EngineFacts:
    """One engine's rebalancing habits (``engine_rebalance.yaml``). ``interval_steps``: forward steps between two
    online rebalances by default; ``window_steps``: steps of load the rebalancer looks back on (vLLM's
    ``window_size``; None where the engine has no such setting); ``host_overhead_s``: seconds of host time per
    rebalance beyond the weight transfer."""

    name: str
    version: str
    interval_flag: str
    interval_steps: int
    synchronous: bool
    host_overhead_s: float
    source: str
    window_steps: int | None = None

    def __post_init__(self) -> None:
        if self.interval_steps < 1:
            raise SpecError(f"{ENGINE_FACTS}: {self.name}.interval_steps: must be >= 1, got {self.interval_steps}")
        if not (math.isfinite(self.host_overhead_s) and self.host_overhead_s >= 0):
            raise SpecError(f"{ENGINE_FACTS}: {self.name}.host_overhead_s: must be >= 0, got {self.host_overhead_s}")
        if self.window_steps is not None and self.window_steps < 1:
            raise SpecError(f"{ENGINE_FACTS}: {self.name}.window_steps: must be >= 1, got {self.window_steps}")


@lru_cache(maxsize=1)
def engine_facts() -> dict[str, EngineFacts]:
    """Every engine's :class:`EngineFacts`, keyed ``sglang``, ``vllm``, ``trtllm``."""
    import yaml

    doc = yaml.safe_load(ENGINE_FACTS.read_text())
    out = {}
    for name, raw in doc.items():
        try:
            window = raw.get("window_steps")
            out[name] = EngineFacts(
                name=name,
                version=str(raw["version"]),
                interval_flag=str(raw["interval_flag"]),
                interval_steps=int(raw["interval_steps"]),
                synchronous=bool(raw["synchronous"]),
                host_overhead_s=float(raw["host_overhead_s"]),
                source=str(raw["source"]),
                window_steps=None if window is None else int(window),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SpecError(f"{ENGINE_FACTS}: {name}: {exc}") from None
    return out


def facts_for(engine: str) -> EngineFacts:
    """The facts of the engine a dispatch rule belongs to (``sglang-static`` -> sglang, ``vllm`` -> vllm; the
    engine-free rules ``placement`` and ``even`` are scored as SGLang rebalances, the most common case)."""
    facts = engine_facts()
    for name in ("vllm", "trtllm"):
        if engine.startswith(name):
            return facts[name]
    return facts["sglang"]

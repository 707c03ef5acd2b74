"""The two objectives of a per-layer capacity setting, from the moesim simulator.

Dimension legend: L MoE layers of the trace, E experts, P physical expert slots.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from moesim.compute import EfficiencyModel


@dataclass(frozen=True)
class LayerSetting:
    """Capacity of one MoE layer: ``factor`` None means dropless."""

    layer: int
    factor: float | None
    policy: str = "probs"

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "capacity_factor": self.factor,
            "drop_policy": self.policy if self.factor is not None else None,
        }


@dataclass(frozen=True)
class CapacityPoint:
    """One evaluated per-layer setting and its two objectives."""

    settings: tuple[LayerSetting, ...]
    step_latency_us: float
    dropped_fraction: float
    trial: int = -1

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "step_latency_us": self.step_latency_us,
            "dropped_fraction": self.dropped_fraction,
            "layers": [s.to_dict() for s in self.settings],
        }


# Layer evaluator: (layer position in the trace, factor or None, policy) -> (latency_us, dropped_fraction)
LayerEval = Callable[[int, float | None, str], tuple[float, float]]


class SimulatorObjective:
    """Both objectives of a per-layer setting, from the moesim simulator.

    Each layer is simulated with its own capacity options (``moesim.simulate.simulate_layers``: the layers of a
    trial not yet seen go through one vectorised call, each row bit for bit what ``simulate_layer`` gives for
    that layer's per-expert counts [E] and placement row), and the step is assembled by
    ``moesim.simulate.step_from_layers`` (attention, dense layers, LM head, and unsimulated MoE layers at the
    simulated mean), so the step latency is exactly the simulator's for that mix of settings. Layer results are
    cached per (layer, factor rounded to 1e-4, policy): NSGA-II revisits values and the simulator is
    deterministic.
    """

    def __init__(
        self,
        model: Any,
        cluster: Any,
        trace: Any,
        placement: Any = None,
        base_options: Any = None,
        calibration: EfficiencyModel | None = None,
    ):
        from moesim import simulate as sim
        from moesim.options import SimOptions

        self.calibration = calibration

        self.model, self.cluster, self.trace = model, cluster, trace
        self.base_options = base_options if base_options is not None else SimOptions()
        self._sim = sim
        self.layers = tuple(int(x) for x in trace.layers)
        L = len(self.layers)
        if placement is None:
            placement = sim.default_placement(model.num_experts, cluster.num_gpus, L)
        self.placement = placement
        self._counts = np.asarray(trace.counts, dtype=np.float64)  # [L, E]
        self._phy2log = np.asarray(placement.phy2log)[:L]  # [L, P]
        self._shares = np.asarray(placement.shares)[:L]  # [L, P]
        self._cache: dict[tuple[int, float | None, str], Any] = {}
        dropless = [LayerSetting(layer=lid, factor=None) for lid in self.layers]
        self.dropless_step_us = self(dropless)[0]

    def fingerprint(self) -> str:
        """A digest of everything the objective's values depend on (specs, counts, placement, options,
        calibration): a stored study is only resumed by the same objective."""
        digest = hashlib.sha256()
        for part in (self.model, self.cluster, self.base_options, self.layers):
            digest.update(repr(part).encode())
        for arr in (self._counts, self._phy2log, self._shares):
            digest.update(np.ascontiguousarray(arr).tobytes())
        digest.update(repr(getattr(self.calibration, "describe", self.calibration)).encode())
        return digest.hexdigest()[:16]

    @staticmethod
    def _key(i: int, factor: float | None, policy: str) -> tuple[int, float | None, str]:
        return i, None if factor is None else round(float(factor), 4), policy if factor is not None else "-"

    def layer_results(self, settings: Sequence[LayerSetting]) -> list[Any]:
        """``LayerResult`` of the i-th recorded layer under ``settings[i]``; the uncached ones in one call."""
        keys = [self._key(i, s.factor, s.policy) for i, s in enumerate(settings)]
        miss = [i for i, key in enumerate(keys) if key not in self._cache]
        if miss:
            results = self._sim.simulate_layers(
                self.model,
                self.cluster,
                self._counts[miss],
                (self._phy2log[miss], self._shares[miss]),
                self.base_options,
                capacity_factors=[keys[i][1] for i in miss],
                drop_policies=[keys[i][2] if keys[i][1] is not None else self.base_options.drop_policy for i in miss],
                layers=[self.layers[i] for i in miss],
                calibration=self.calibration,
            )
            self._cache.update(zip((keys[i] for i in miss), results, strict=True))
        return [self._cache[key] for key in keys]

    def layer_result(self, i: int, factor: float | None, policy: str) -> Any:
        """``LayerResult`` of the i-th recorded layer under (factor, policy); factor None = dropless."""
        key = self._key(i, factor, policy)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._sim.simulate_layers(
                self.model,
                self.cluster,
                self._counts[i : i + 1],
                (self._phy2log[i : i + 1], self._shares[i : i + 1]),
                self.base_options,
                capacity_factors=[key[1]],
                drop_policies=[policy if factor is not None else self.base_options.drop_policy],
                layers=[self.layers[i]],
                calibration=self.calibration,
            )[0]
            self._cache[key] = hit
        return hit

    def __call__(self, settings: Sequence[LayerSetting]) -> tuple[float, float]:
        results = self.layer_results(settings)
        step = self._sim.step_from_layers(self.model, self.cluster, results, self.base_options, self.calibration)
        dropped = float(np.mean([r.dropped_fraction for r in results])) if results else 0.0
        return float(step.step_latency_us), dropped

"""The outcome of each study (best config, reference times) and the vLLM-format JSON file it is written to."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moesim.errors import InfeasibleError, SpecError
from tuner.autotune import space
from tuner.autotune.kernel.spec import KernelTuneSpec
from tuner.autotune.kernel.study import best_so_far, counted_trials
from tuner.autotune.space import Config


@dataclass
class MResult:
    """Outcome of one study (one batch size); times in us."""

    m: int
    best_config: Config | None
    best_us: float | None
    trials: int
    failed: int
    pruned: int
    default_us: float | None
    vllm_us: float | None
    vllm_file: str | None
    stopped_by: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "M": self.m,
            "best_config": self.best_config,
            "best_us": self.best_us,
            "trials": self.trials,
            "failed": self.failed,
            "pruned_infeasible": self.pruned,
            "default_us": self.default_us,
            "vllm_us": self.vllm_us,
            "vllm_file": self.vllm_file,
            "stopped_by": self.stopped_by,
            "speedup_vs_default": ratio(self.default_us, self.best_us),
            "speedup_vs_vllm": ratio(self.vllm_us, self.best_us),
        }


def ratio(a: float | None, b: float | None) -> float | None:
    """Speedup a / b (None when either is missing or b is not positive)."""
    return a / b if a is not None and b is not None and b > 0 else None


def _seed_time(trials: Sequence[Any], label_prefix: str) -> tuple[float | None, str | None]:
    import optuna

    for t in trials:
        label = str(t.user_attrs.get("seed", ""))
        if label.startswith(label_prefix) and t.state == optuna.trial.TrialState.COMPLETE:
            return float(t.value), label
    for t in trials:  # the seed may have been measured as a cached repeat or failed
        label = str(t.user_attrs.get("seed", ""))
        if label.startswith(label_prefix):
            return (float(t.value) if t.value is not None else None), label
    return None, None


def summarize_study(study: Any, m: int, stopped_by: str = "") -> MResult:
    """Best config and reference times of one study (reads storage; used after workers finish)."""
    import optuna

    trials = counted_trials(study)
    finished = [t for t in trials if t.state != optuna.trial.TrialState.RUNNING]
    best, where = best_so_far(finished)
    default_us, _ = _seed_time(finished, "default")
    vllm_us, vllm_label = _seed_time(finished, "vllm:")
    pruned = sum(
        1
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))
        if not t.user_attrs.get("counted")
    )
    return MResult(
        m=m,
        best_config=space.normalize_config(finished[where].params) if where >= 0 else None,
        best_us=best,
        trials=len(finished),
        failed=sum(1 for t in finished if t.user_attrs.get("failed")),
        pruned=pruned,
        default_us=default_us,
        vllm_us=vllm_us,
        vllm_file=vllm_label.removeprefix("vllm:") if vllm_label else None,
        stopped_by=stopped_by,
    )


def config_path(spec: KernelTuneSpec, save_dir: str, device: str) -> Path:
    """``save_dir/E=..,N=..,device_name=...json`` (a ``dtype=`` tag only for dtypes other than bf16/fp16)."""
    from kernels import configs as kconfigs

    dtype_tag = None if spec.dtype in ("bf16", "fp16") else spec.dtype
    return Path(save_dir) / kconfigs.config_file_name(spec.E, spec.N, device, dtype_tag)


def check_save_dir(spec: KernelTuneSpec, save_dir: str, device: str) -> Path:
    """The config file ``save_results`` will write, checked before any tuning: ``--save-dir`` must be a folder
    (or not exist yet) and a file already there must load, since the new configs are merged into it."""
    from kernels import configs as kconfigs

    folder = Path(save_dir)
    if folder.exists() and not folder.is_dir():
        raise SpecError(f"{save_dir}: --save-dir: exists and is not a directory")
    path = config_path(spec, save_dir, device)
    if path.is_dir():
        raise SpecError(f"{path}: --save-dir: is a directory, where the config file goes")
    if path.exists():
        try:
            kconfigs.load_configs(str(path))
        except (OSError, ValueError, TypeError, KeyError) as exc:  # json.JSONDecodeError is a ValueError
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SpecError(
                f"{path}: --save-dir: the config file there does not load ({first}); move it or pick another folder"
            ) from None
    return path


def save_results(spec: KernelTuneSpec, results: Sequence[MResult], save_dir: str, device: str) -> Path:
    """Write (or update) the vLLM-format JSON ``E=..,N=..,device_name=...json`` with the best config per M."""
    from kernels import configs as kconfigs

    path = config_path(spec, save_dir, device)
    merged: dict[int, dict] = {}
    if path.exists():
        merged.update({int(m): dict(c) for m, c in kconfigs.load_configs(str(path)).items()})
    for r in results:
        if r.best_config is not None:
            merged[r.m] = dict(r.best_config)
    if not merged:
        raise InfeasibleError(f"autotune kernel: no config measured successfully; {path} not written")
    import triton

    kconfigs.save_configs(str(path), dict(sorted(merged.items())), triton_version=triton.__version__)
    return path


def results_json(results: Sequence[MResult], spec: KernelTuneSpec, device: str) -> str:
    """One JSON document for ``--json``."""
    problem = {
        "E": spec.E,
        "N": spec.N,
        "K": spec.K,
        "top_k": spec.top_k,
        "dtype": spec.dtype,
        "device": device,
        "routing": spec.routing_label(),
    }
    return json.dumps({"problem": problem, "results": [r.to_dict() for r in results]}, indent=2)

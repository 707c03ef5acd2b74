"""The kernel tuner: routing draws, seeds, the trial loop's accounting, and one real run on the interpreter."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import optuna
import pytest

from moesim.errors import HardwareError, SpecError, TraceError
from tuner.autotune import samplers
from tuner.autotune import space as ks
from tuner.autotune.kernel import device, routing, workers
from tuner.autotune.kernel import seeds as kseeds
from tuner.autotune.kernel import study as kstudy
from tuner.autotune.kernel.spec import KernelTuneSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_routing_bank_uniform_is_distinct_topk_and_normalised():
    ids, w = routing.routing_bank(8, 2, 64, 4, "uniform", seed=1)
    assert ids.shape == (4, 64, 2) and w.shape == (4, 64, 2)
    assert (ids[..., 0] != ids[..., 1]).all()
    assert np.allclose(w.sum(-1), 1.0)
    # Fresh draws: the routings differ between repeats.
    assert not np.array_equal(ids[0], ids[1])


def test_dirichlet_routing_is_skewed():
    uni, _ = routing.routing_bank(64, 2, 4096, 1, "uniform", seed=0)
    skew, _ = routing.routing_bank(64, 2, 4096, 1, "dirichlet:0.1", seed=0)
    load = lambda ids: np.bincount(ids.ravel(), minlength=64).max() / (ids.size / 64)  # noqa: E731
    assert load(skew) > 2 * load(uni)


def test_routing_from_trace_uses_its_rows():
    from moesim.traces.formats import load_trace

    trace = load_trace("profiles/traces/mixtral_c4.npz")
    ids, _ = routing.routing_bank(trace.num_experts, trace.top_k, 32, 3, trace=trace, layer=trace.layers[1], seed=0)
    if trace.topk_ids is not None:
        rows = {tuple(r) for r in np.asarray(trace.topk_ids)[:, 1, :]}
        assert all(tuple(r) in rows for r in ids.reshape(-1, trace.top_k))
    with pytest.raises(TraceError, match="num_experts"):
        routing.routing_bank(16, 2, 8, 1, trace=trace)
    with pytest.raises(SpecError):
        routing.parse_routing("zipf")


def test_nearest_shipped_file_and_seeds():
    path = kseeds.nearest_shipped_file(8, 7168, "NVIDIA_H100_80GB_HBM3", "bf16")
    assert path is not None and path.name == "E=8,N=7168,device_name=NVIDIA_H100_80GB_HBM3.json"
    # Another device falls back to the nearest shape of any device.
    other = kseeds.nearest_shipped_file(8, 7000, "NVIDIA_L40S", "bf16")
    assert other is not None and other.name.startswith("E=8,N=7168")
    seeds = kseeds.seed_configs(8, 7168, 4096, 1024, "NVIDIA_H100_80GB_HBM3")
    labels = [label for label, _ in seeds]
    assert labels[0].startswith("vllm:") and "default" in labels
    assert seeds[0][1] == {
        "BLOCK_SIZE_M": 128,
        "BLOCK_SIZE_N": 256,
        "BLOCK_SIZE_K": 64,
        "GROUP_SIZE_M": 16,
        "num_warps": 8,
        "num_stages": 4,
    }


def _bowl(config: dict) -> float:
    return 100.0 + abs(math.log2(config["BLOCK_SIZE_M"] / 64)) * 9 + abs(math.log2(config["BLOCK_SIZE_N"] / 128)) * 7


def test_loop_counts_exactly_prunes_infeasible_and_records_failures():
    study = optuna.create_study(direction="minimize", sampler=samplers.make_sampler("tpe", 0))
    failing = lambda c: c["num_warps"] == 8 and c["num_stages"] == 5  # noqa: E731

    def evaluate(c):
        if failing(c):
            raise RuntimeError("out of resource: shared memory")
        return _bowl(c)

    res = kstudy.tune_loop(study, evaluate, 40, None, lambda c: ks.is_feasible(c, 100))
    counted = kstudy.counted_trials(study)
    assert len(counted) == 40 == res.measured and res.stopped_by == "trials"
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED and not t.user_attrs.get("counted")]
    assert len(pruned) == res.pruned and all(not ks.is_feasible(t.params, 100) for t in pruned)
    failed = [t for t in counted if t.user_attrs.get("failed")]
    assert all(failing(t.params) and "out of resource" in t.user_attrs["error"] for t in failed)
    # A failure is never a crash and never a COMPLETE value.
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in failed)


def test_patience_stops_early_and_seeds_run_first():
    study = optuna.create_study(direction="minimize", sampler=samplers.make_sampler("tpe", 0))
    best = {
        "BLOCK_SIZE_M": 64,
        "BLOCK_SIZE_N": 128,
        "BLOCK_SIZE_K": 64,
        "GROUP_SIZE_M": 1,
        "num_warps": 4,
        "num_stages": 3,
    }
    kstudy.enqueue_seeds(study, [("vllm:x", best)])
    res = kstudy.tune_loop(study, _bowl, 500, 15, lambda c: True)
    counted = kstudy.counted_trials(study)
    assert res.stopped_by == "patience" and len(counted) < 500
    assert counted[0].user_attrs["seed"] == "vllm:x" and counted[0].value == 100.0
    assert kstudy.best_so_far(counted)[0] == 100.0


def test_tpe_beats_random_on_a_structured_objective():
    # All six parameters matter; multivariate TPE should end closer to the floor than random search after
    # 60 trials (sum over seeds, so one lucky random run does not decide).
    from tests.tuner.budget_worker import objective

    def best_after(sampler, seed):
        study = optuna.create_study(direction="minimize", sampler=samplers.make_sampler(sampler, seed))
        kstudy.tune_loop(study, objective, 60, None, lambda c: True)
        return kstudy.best_so_far(kstudy.counted_trials(study))[0] - 100.0

    tpe = sum(best_after("tpe", s) for s in range(4))
    rnd = sum(best_after("random", s) for s in range(4))
    assert tpe < rnd


def test_cuda_backend_without_gpu_is_a_hardware_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(HardwareError, match="no CUDA GPU"):
        device.check_backend("cuda")


def test_interpret_run_writes_vllm_json_and_resumes(tmp_path, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from kernels import configs as kconfigs

    url = f"journal://{tmp_path / 's.log'}"
    spec = KernelTuneSpec(
        E=4,
        N=32,
        K=64,
        top_k=2,
        ms=(2,),
        trials=3,
        patience=None,
        seed=0,
        backend="interpret",
        warmup=0,
        repeats=1,
        draws=2,
        storage=url,
    )
    results = workers.autotune_kernel(spec, save_dir=str(tmp_path / "cfg"), show_progress=False)
    assert results[0].trials == 3 and results[0].best_us is not None
    assert results[0].default_us is not None  # the default seed ran
    path = tmp_path / "cfg" / kconfigs.config_file_name(4, 32, "cpu")  # the interpreter runs on the CPU: vLLM's name
    doc = json.loads(path.read_text())
    assert "triton_version" in doc and ks.in_grid(doc["2"])
    assert kconfigs.load_configs(str(path))[2] == results[0].best_config
    # Same command, bigger budget: continues from the 3 finished trials.
    spec = dataclasses.replace(spec, trials=4)  # KernelTuneSpec is frozen
    again = workers.autotune_kernel(spec, show_progress=False)
    assert again[0].trials == 4

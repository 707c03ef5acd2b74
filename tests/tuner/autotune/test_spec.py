"""KernelTuneSpec checks itself: frozen, every bad field a KernelSpecError naming the field."""

from __future__ import annotations

import dataclasses

import pytest

from moesim.errors import SpecError
from tuner.autotune.kernel.errors import KernelSpecError
from tuner.autotune.kernel.spec import KernelTuneSpec

SHAPE = {"E": 4, "N": 32, "K": 64}


def test_valid_spec_is_frozen_and_names_its_studies():
    spec = KernelTuneSpec(**SHAPE, ms=[2, 4], routing="dirichlet:0.3")
    assert spec.ms == (2, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.trials = 3  # type: ignore[misc]
    assert spec.study_name("cpu", 2).endswith("device=cpu,routing=dirichlet:0.3,M=2")
    assert dataclasses.replace(spec, trials=4).trials == 4


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("ms", (), "autotune kernel: ms: batch sizes must be >= 1"),
        ("dtype", "fp8", "autotune kernel: dtype: expected bf16 or fp16, got 'fp8'"),
        ("K", 0, "autotune kernel: K: must be >= 1, got 0"),
        ("top_k", 5, "autotune kernel: top_k: must be <= E (4), got 5"),
        ("patience", -1, "autotune kernel: patience: must be >= 0 (0: off), got -1"),
        ("seed", 1 << 40, "autotune kernel: seed: must be in 0..4294967295"),
        ("backend", "rocm", "autotune kernel: backend: rocm: expected cuda or interpret"),
        ("routing", "zipf", "autotune kernel: routing: zipf: expected 'uniform' or 'dirichlet:ALPHA'"),
        ("trials", 0, "autotune kernel: trials: must be >= 1, got 0"),
        ("sampler", "bogus", "autotune kernel: sampler: bogus: expected tpe, gp, random"),
        ("trace", "/no/such/trace.npz", "/no/such/trace.npz: trace: no such file"),
    ],
)
def test_each_bad_field_is_named(field, value, message):
    with pytest.raises(KernelSpecError) as exc:
        KernelTuneSpec(**{**SHAPE, field: value})
    assert str(exc.value).startswith(message) and exc.value.field == field
    assert isinstance(exc.value, SpecError)


def test_a_front_end_respells_the_fields():
    with pytest.raises(KernelSpecError) as exc:
        KernelTuneSpec(**SHAPE, top_k=8)
    assert exc.value.problem_with(lambda name: f"--{name}") == "must be <= --E (4), got 8"

"""Placement validation, memory check and the native YAML round trip."""

import numpy as np
import pytest

from moesim.errors import PlacementError
from moesim.placement import (
    Placement,
    check_memory,
    contiguous,
    even_shares,
    load_placement,
    save_placement,
    slots_per_gpu,
)


def _replicated() -> Placement:
    phy2log = np.array([[0, 1, 2, 0, 3, 1], [3, 2, 1, 0, 0, 0]])
    return Placement(
        num_gpus=3,
        slots_per_gpu=2,
        num_experts=4,
        phy2log=phy2log,
        shares=even_shares(phy2log, 4),
        meta={"method": "test", "model": "m", "layers": [3, 9], "predicted": {"max_mean_load": np.float64(1.25)}},
    )


def test_round_trip(tmp_path) -> None:
    p = _replicated()
    p.validate()
    path = tmp_path / "p.yaml"
    save_placement(p, path)
    q = load_placement(path)
    np.testing.assert_array_equal(q.phy2log, p.phy2log)
    np.testing.assert_allclose(q.shares, p.shares, atol=1e-9)
    assert q.meta["layers"] == [3, 9] and q.meta["method"] == "test"
    assert q.meta["predicted"]["max_mean_load"] == 1.25
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]  # no temp file left


def test_gpu_loads_use_shares() -> None:
    p = _replicated()
    loads = p.gpu_loads(np.array([[10.0, 20.0, 30.0, 40.0], [1.0, 1.0, 1.0, 3.0]]))
    np.testing.assert_allclose(loads[0], [5 + 10, 30 + 5, 40 + 10])
    np.testing.assert_allclose(loads[1], [3 + 1, 1 + 1 / 3, 2 / 3])


@pytest.mark.parametrize(
    "phy2log, shares, match",
    [
        ([[0, 1, 2, 2]], [[1, 1, 0.5, 0.5]], "expert 3 has no replica"),
        ([[0, 1, 2, 3]], [[1, 1, 0.5, 1]], "summing to 0.5"),
        ([[0, 1, 2, 4]], [[1, 1, 1, 1]], r"ids must be in \[0, 4\)"),
        ([[0, 1, 2]], [[1, 1, 1]], "shape"),
        ([[0, 1, 2, 3]], [[1, 1, 1, -0.5]], r"must be in \[0, 1\]"),
        ([[0, 1, 2, 3]], [[1, 1, 1, 0]], "expert 3 has no replica"),  # a 0 share only: no tokens go anywhere
    ],
)
def test_validation_errors(phy2log, shares, match) -> None:
    with pytest.raises(PlacementError, match=match):  # the structure fails in __post_init__, coverage in validate
        Placement(2, 2, 4, np.array(phy2log), np.array(shares, dtype=float)).validate()


def test_zero_share_spare_slot_is_valid() -> None:
    """A replica that holds weights but gets no tokens (spare slots of an uneven split, a replica an engine
    rule never picks) is valid while its expert's shares still sum to 1."""
    from moesim.simulate import default_placement

    Placement(2, 2, 3, np.array([[0, 1, 2, 0]]), np.array([[1.0, 1.0, 1.0, 0.0]])).validate()
    default_placement(10, 4, 1).validate()  # 3 slots per GPU, the last two hold share-0 copies


def test_slots_and_memory(deepseek_v3, h100_sxm) -> None:
    assert slots_per_gpu(256, 32, 32) == 9
    with pytest.raises(PlacementError, match="do not divide"):
        slots_per_gpu(64, 1, 8)
    model = deepseek_v3  # 58 MoE layers, experts of 3 * 7168 * 2048 parameters
    gpu = h100_sxm  # 80 GB
    check_memory(contiguous(256, 32, 1), model, gpu)  # 8 slots x 58 x 88 MB = 40.9 GB < 60 GB
    with pytest.raises(PlacementError, match="GPU memory"):
        check_memory(contiguous(256, 16, 1), model, gpu)  # 16 slots: 81.7 GB


def test_load_errors(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "format: moesim-placement/1\nnum_experts: 4\nnum_gpus: 2\nslots_per_gpu: 2\n"
        "layers:\n  - layer: 0\n    gpus:\n      - [[0, 1.0], [1, 1.0]]\n      - [[2, 1.0]]\n"
    )
    with pytest.raises(PlacementError, match=r"gpus\[1\]: expected 2 slots"):
        load_placement(bad)
    with pytest.raises(PlacementError, match=r"missing.yaml: file: no such file$"):
        load_placement(tmp_path / "missing.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"format: \xff\xfe\x00bad")
    with pytest.raises(PlacementError, match=r"binary.yaml: file: not UTF-8 text \(byte 0xff at offset 8\)$"):
        load_placement(binary)
    with pytest.raises(PlacementError, match=r": file: is a directory, not a file$"):
        load_placement(tmp_path)


def test_header_sizes_do_not_allocate_before_the_slots_are_read(tmp_path) -> None:
    """Found reviewing the loaders while fuzzing (issue 15): num_gpus 131072 x slots_per_gpu 8192 (each
    within its limit) allocated 8 GiB per layer before the first GPU was checked (MemoryError under a 4 GiB
    address-space limit, as on a small machine)."""
    import subprocess
    import sys

    bad = tmp_path / "huge.yaml"
    bad.write_text(
        "format: moesim-placement/1\nnum_experts: 8\nnum_gpus: 131072\nslots_per_gpu: 8192\n"
        "layers:\n  - layer: 0\n    gpus:\n      - [[0, 1.0]]\n"
    )
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, resource.RLIM_INFINITY))\n"
        "from moesim.placement import load_placement\nload_placement(sys.argv[1])"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(bad)], capture_output=True, text=True, timeout=60)
    assert "PlacementError" in proc.stderr and "layers[0]: gpus: expected 131072 GPUs, got 1" in proc.stderr, (
        proc.stderr[-500:]
    )
    assert "MemoryError" not in proc.stderr


@pytest.mark.parametrize(
    "change, match",
    [
        ({"num_gpus": 0}, "num_gpus: must be >= 1"),
        ({"phy2log": np.array([[0, 1, 2]])}, "shape"),
        ({"phy2log": np.array([[0, 1, 2, 7, 3, 1]] * 2)}, r"ids must be in \[0, 4\)"),
        ({"shares": np.full((2, 6), np.nan)}, r"must be in \[0, 1\]"),
        ({"slots_per_gpu": 1, "num_gpus": 6}, None),  # the same slots, another split: still valid
    ],
)
def test_no_invalid_placement_can_be_built(change, match) -> None:
    """``Placement.__post_init__`` enforces the structure; ``dataclasses.replace`` goes through it too."""
    import dataclasses

    p = _replicated()
    if match is None:
        assert dataclasses.replace(p, **change).num_physical == 6
        return
    with pytest.raises(PlacementError, match=match):
        dataclasses.replace(p, **change)


def test_simulator_applies_the_same_rule(olmoe) -> None:
    """``moesim.simulate.check_placement`` checks the fit, then the one rule of ``Placement.validate``."""
    from moesim.simulate import check_placement

    model = olmoe
    good = contiguous(model.num_experts, 8, 2)
    check_placement(good, model, 8)
    broken_rows = good.phy2log.copy()
    broken_rows[1, 5] = broken_rows[1, 4]
    broken = Placement(8, good.slots_per_gpu, model.num_experts, broken_rows, good.shares)
    for check in (lambda: broken.validate("p.yaml"), lambda: check_placement(broken, model, 8, "p.yaml")):
        with pytest.raises(PlacementError, match=r"^p.yaml: layers\[1\]: expert 5 has no replica"):
            check()

"""Specs: every shipped YAML loads with its published numbers; every bad input is a one-line SpecError naming
the file and the field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from moesim.errors import SpecError
from moesim.specs import (
    list_clusters,
    list_gpus,
    list_models,
    load_cluster,
    load_gpu,
    load_model,
    profiles_dir,
)

MODELS = [
    "mixtral-8x7b",
    "mixtral-8x22b",
    "deepseek-v2-lite",
    "deepseek-v3",
    "qwen1.5-moe-a2.7b",
    "qwen3-30b-a3b",
    "qwen3-235b-a22b",
    "olmoe-1b-7b",
    "gpt-oss-20b",
    "gpt-oss-120b",
    "switch-base-128",
]
GPUS = ["h100-sxm", "h200-sxm", "h800-sxm", "a100-sxm-80gb"]
CLUSTERS = [
    "dgx-h100",
    "h100-2x8-ib400",
    "h100-4x8-ib400",
    "h100-8x8-ib400",
    "h800-2x8-ib400",
    "h800-8x8-ib400",
    "h100-pcie-8",
]


def test_issue_slugs_ship() -> None:
    assert set(MODELS) <= set(list_models())
    assert set(GPUS) <= set(list_gpus())
    assert set(CLUSTERS) <= set(list_clusters())


@pytest.mark.parametrize("slug", list_models())
def test_every_model_loads(slug: str) -> None:
    m = load_model(slug)
    assert m.slug == slug and m.source.startswith("https://huggingface.co/")
    assert 0 < m.num_moe_layers <= m.num_layers and m.top_k <= m.num_experts
    assert load_model(profiles_dir() / "models" / f"{slug}.yaml") == m  # a path works like the slug


@pytest.mark.parametrize("slug", list_gpus())
def test_every_gpu_loads(slug: str) -> None:
    g = load_gpu(slug)
    assert g.slug == slug and g.source
    assert 0 < g.gemm_efficiency <= 1 and 0 < g.hbm_efficiency <= 1


@pytest.mark.parametrize("slug", list_clusters())
def test_every_cluster_loads(slug: str) -> None:
    c = load_cluster(slug)
    assert c.slug == slug and c.source
    assert c.num_gpus == c.gpus_per_node * c.num_nodes
    for i in range(len(c.levels)):
        eff = np.asarray(c.efficiency(i, np.logspace(2, 9, 50)))
        assert np.all(np.diff(eff) >= 0) and 0 < eff.min() and eff.max() <= 1  # rises with message size


def _shape(slug: str) -> tuple[int, int, int, int, int]:
    """(num_layers, hidden_size, moe_intermediate_size, num_experts, top_k) of a shipped model."""
    m = load_model(slug)
    return (m.num_layers, m.hidden_size, m.moe_intermediate_size, m.num_experts, m.top_k)


def test_published_model_numbers() -> None:
    v3 = load_model("deepseek-v3")
    assert (v3.num_layers, v3.num_moe_layers, v3.moe_layers[0], v3.moe_layers[-1]) == (61, 58, 3, 60)
    assert (v3.hidden_size, v3.moe_intermediate_size, v3.dense_intermediate_size) == (7168, 2048, 18432)
    assert (v3.num_experts, v3.top_k, v3.num_shared_experts, v3.n_group, v3.topk_group) == (256, 8, 1, 8, 4)
    assert v3.score_function == "sigmoid"
    assert v3.expert_weight_bytes(1) == 3 * 7168 * 2048
    assert _shape("mixtral-8x7b") == (32, 4096, 14336, 8, 2)
    assert _shape("olmoe-1b-7b") == (16, 2048, 1024, 64, 8)
    assert _shape("qwen3-30b-a3b") == (48, 2048, 768, 128, 8)
    lite = load_model("deepseek-v2-lite")
    assert lite.moe_layers == tuple(range(1, 27)) and lite.shared_expert_intermediate_size == 2 * 1408
    sw = load_model("switch-base-128")
    assert sw.moe_layers == tuple(range(1, 24, 2)) and sw.top_k == 1
    assert (load_model("gpt-oss-20b").num_experts, load_model("gpt-oss-120b").num_experts) == (32, 128)


def test_published_gpu_and_cluster_numbers() -> None:
    ref = yaml.safe_load((profiles_dir() / "reference" / "published_numbers.yaml").read_text())
    h100 = load_gpu("h100-sxm")
    assert (h100.bf16_tflops, h100.hbm_bw_gb_s, h100.nvlink_bw_gb_s, h100.sm_count) == (989.4, 3350, 450, 132)
    assert load_gpu("h800-sxm").nvlink_bw_gb_s == 200
    meas = ref["measured_on_this_kind_of_device"]["H100_80GB_HBM3"]
    assert h100.gemm_efficiency == pytest.approx(
        meas["bf16_matmul_8192_tflops"] / ref["gpus"]["H100_SXM"]["bf16_tflops"], abs=1e-3
    )
    assert h100.hbm_efficiency == pytest.approx(
        meas["d2d_copy_tb_s_read_plus_write"] / ref["gpus"]["H100_SXM"]["hbm_tb_s"], abs=1e-3
    )
    dgx = load_cluster("dgx-h100")
    assert dgx.num_gpus == 8 and dgx.num_nodes == 1 and dgx.nic is None
    assert dgx.levels[0].bw_gb_s * dgx.efficiency(0, 1 << 30) == pytest.approx(370, rel=0.01)  # NCCL: ~370 of 450
    h800 = load_cluster("h800-8x8-ib400")
    assert h800.num_gpus == 64 and h800.nic.layout == "rail" and h800.nic.nics_per_node == 8
    assert h800.levels[0].bw_gb_s * h800.efficiency(0, 1 << 30) == pytest.approx(160, rel=0.01)  # DeepEP H800
    assert h800.levels[1].bw_gb_s * h800.efficiency(1, 1 << 30) == pytest.approx(48, rel=0.01)  # CX7 48-49 GB/s
    assert load_cluster("h100-pcie-8").pcie.gpus_per_switch == 2


# ----------------------------------------------------------------------------------------------- bad input
GOOD_MODEL = (profiles_dir() / "models" / "olmoe-1b-7b.yaml").read_text()


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _model_with(tmp_path: Path, **changes: object) -> Path:
    data = yaml.safe_load(GOOD_MODEL)
    for k, v in changes.items():
        if v is None:
            data.pop(k)
        else:
            data[k] = v
    return _write(tmp_path, "m.yaml", yaml.safe_dump(data))


def _expect(path: Path, field: str, loader=load_model) -> str:
    with pytest.raises(SpecError) as err:
        loader(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ") and f": {field}:" in msg, msg
    return msg


def test_malformed_yaml(tmp_path: Path) -> None:
    p = _write(tmp_path, "bad.yaml", "slug: x\nnum_layers: [1, 2\n")
    assert "malformed YAML" in _expect(p, "line 3")


def test_not_a_mapping(tmp_path: Path) -> None:
    _expect(_write(tmp_path, "list.yaml", "- 1\n- 2\n"), "(top level)")


def test_missing_field(tmp_path: Path) -> None:
    assert "missing" in _expect(_model_with(tmp_path, hidden_size=None), "hidden_size")


def test_mistyped_field(tmp_path: Path) -> None:
    assert "integer" in _expect(_model_with(tmp_path, num_experts="sixty-four"), "num_experts")
    assert "integer" in _expect(_model_with(tmp_path, top_k=True), "top_k")


def test_unknown_field_is_a_typo(tmp_path: Path) -> None:
    assert "unknown field" in _expect(_model_with(tmp_path, top_K=8), "top_K")


def test_top_k_above_experts(tmp_path: Path) -> None:
    _expect(_model_with(tmp_path, top_k=65), "top_k")


def test_experts_not_divisible_by_groups(tmp_path: Path) -> None:
    assert "divide" in _expect(_model_with(tmp_path, n_group=6, topk_group=2), "n_group")


def test_moe_layers_out_of_range(tmp_path: Path) -> None:
    _expect(_model_with(tmp_path, moe_layers=[0, 16]), "moe_layers")
    _expect(
        _model_with(tmp_path, moe_layers={"first_k_dense_replace": 3, "moe_layer_freq": 0}),
        "moe_layers.moe_layer_freq",
    )


def test_bad_score_function(tmp_path: Path) -> None:
    _expect(_model_with(tmp_path, score_function="relu"), "score_function")


def _cluster_text(**level_changes: object) -> str:
    data = yaml.safe_load((profiles_dir() / "clusters" / "h100-2x8-ib400.yaml").read_text())
    data["levels"][1].update(level_changes)
    return yaml.safe_dump(data)


def test_negative_bandwidth(tmp_path: Path) -> None:
    p = _write(tmp_path, "c.yaml", _cluster_text(bw_gb_s=-50))
    assert "> 0" in _expect(p, "levels[1].bw_gb_s", load_cluster)


def test_bad_efficiency_curve(tmp_path: Path) -> None:
    p = _write(tmp_path, "c.yaml", _cluster_text(efficiency=[[4096, 0.5], [1024, 0.9]]))
    _expect(p, "levels[1].efficiency[1]", load_cluster)
    p = _write(tmp_path, "c.yaml", _cluster_text(efficiency=[[4096, 1.5]]))
    _expect(p, "levels[1].efficiency[0]", load_cluster)


def test_negative_gpu_bandwidth(tmp_path: Path) -> None:
    data = yaml.safe_load((profiles_dir() / "gpus" / "h100-sxm.yaml").read_text())
    data["hbm_bw_gb_s"] = -1
    _expect(_write(tmp_path, "g.yaml", yaml.safe_dump(data)), "hbm_bw_gb_s", load_gpu)


def test_cluster_gpu_by_relative_path_and_bad_gpu(tmp_path: Path) -> None:
    gpu = (profiles_dir() / "gpus" / "h800-sxm.yaml").read_text()
    _write(tmp_path, "mygpu.yaml", gpu.replace("slug: h800-sxm", "slug: mygpu"))
    data = yaml.safe_load((profiles_dir() / "clusters" / "dgx-h100.yaml").read_text())
    data["gpu"] = "mygpu.yaml"
    c = load_cluster(_write(tmp_path, "c.yaml", yaml.safe_dump(data)))
    assert c.gpu.slug == "mygpu" and c.gpu.nvlink_bw_gb_s == 200
    data["gpu"] = "no-such-gpu"
    assert "known:" in _expect(_write(tmp_path, "c2.yaml", yaml.safe_dump(data)), "gpu", load_cluster)


def test_multi_node_cluster_needs_nic(tmp_path: Path) -> None:
    data = yaml.safe_load((profiles_dir() / "clusters" / "h100-2x8-ib400.yaml").read_text())
    del data["nic"]
    _expect(_write(tmp_path, "c.yaml", yaml.safe_dump(data)), "nic", load_cluster)


def test_unknown_slug_lists_known() -> None:
    with pytest.raises(SpecError, match=r"deepseek-v4: model: unknown slug \(known: .*deepseek-v3"):
        load_model("deepseek-v4")
    with pytest.raises(SpecError, match="h100-sxm"):
        load_gpu("b200")
    with pytest.raises(SpecError, match="dgx-h100"):
        load_cluster("dgx-b200")


def test_missing_file() -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_model("does/not/exist.yaml")


def test_specs_are_frozen() -> None:
    m = load_model("olmoe-1b-7b")
    with pytest.raises(AttributeError):
        m.top_k = 2  # type: ignore[misc]


# ------------------------------------------------------------------ found by benchmarks/bench_fuzz.py (issue 15)
@pytest.mark.parametrize(
    "gpu, shown",
    [
        ("x" * 300, "x" * 300),  # OSError (file name too long) escaped Path.is_file()
        ("x" * 300 + ".yaml", "x" * 300),  # ... on the path branch too
        ("a\x00b", r"'a\x00b'"),  # a NUL byte
        ("h100\n-sxm", r"'h100\n-sxm'"),  # a newline split the message in two
    ],
)
def test_cluster_gpu_name_that_cannot_be_a_file(tmp_path: Path, gpu: str, shown: str) -> None:
    data = yaml.safe_load((profiles_dir() / "clusters" / "dgx-h100.yaml").read_text())
    data["gpu"] = gpu
    p = _write(tmp_path, "c.yaml", yaml.safe_dump(data))
    msg = _expect(p, "gpu", loader=load_cluster)
    assert shown in msg


# ------------------------------------------------------------------ every dataclass validates itself (issue 16)
@pytest.mark.parametrize(
    "change, field",
    [
        ({"top_k": 0}, "top_k"),
        ({"top_k": 300}, "top_k"),
        ({"num_experts": 10_000}, "num_experts"),
        ({"n_group": 7}, "n_group"),
        ({"topk_group": 9}, "topk_group"),
        ({"moe_layers": (3, 3)}, "moe_layers"),
        ({"moe_layers": (5, 4)}, "moe_layers"),
        ({"moe_layers": (61,)}, "moe_layers"),
        ({"moe_layers": ()}, "moe_layers"),
        ({"dense_intermediate_size": 0}, "dense_intermediate_size"),
        ({"num_shared_experts": 0}, "shared_expert_intermediate_size"),
        ({"num_kv_heads": 3}, "num_kv_heads"),
        ({"score_function": "relu"}, "score_function"),
        ({"hidden_size": 1.5}, "hidden_size"),
    ],
)
def test_no_invalid_model_can_be_built(change: dict, field: str) -> None:
    import dataclasses

    with pytest.raises(SpecError, match=rf"^deepseek-v3: {field}: "):
        dataclasses.replace(load_model("deepseek-v3"), **change)


def test_no_invalid_gpu_or_cluster_can_be_built() -> None:
    import dataclasses

    gpu = load_gpu("h100-sxm")
    for change, field in (
        ({"hbm_bw_gb_s": -1.0}, "hbm_bw_gb_s"),
        ({"gemm_efficiency": 1.5}, "gemm_efficiency"),
        ({"smem_per_block_kb": 1e6}, "smem_per_block_kb"),
        ({"sm_count": 0}, "sm_count"),
    ):
        with pytest.raises(SpecError, match=rf"^h100-sxm: {field}: "):
            dataclasses.replace(gpu, **change)
    cluster = load_cluster("h100-2x8-ib400")
    inter = cluster.levels[1]
    for change, field in (
        ({"size": -3}, "size"),
        ({"kind": "ethernet"}, "kind"),
        ({"bw_gb_s": 0.0}, "bw_gb_s"),
        ({"efficiency": ((4096.0, 0.5), (1024.0, 0.9))}, r"efficiency\[1\]"),
    ):
        with pytest.raises(SpecError, match=rf"^link level: {field}: "):
            dataclasses.replace(inter, **change)
    with pytest.raises(SpecError, match="nic: gpus_per_nic: a rail layout"):
        dataclasses.replace(cluster.nic, gpus_per_nic=2)
    with pytest.raises(SpecError, match="fabric: oversubscription: must be >= 1"):
        dataclasses.replace(cluster.fabric, oversubscription=0.5)
    with pytest.raises(SpecError, match=r"^h100-2x8-ib400: nic: missing"):
        dataclasses.replace(cluster, nic=None)
    with pytest.raises(SpecError, match=r"^h100-2x8-ib400: nic.nics_per_node: "):
        dataclasses.replace(cluster, nic=dataclasses.replace(cluster.nic, nics_per_node=4))
    with pytest.raises(SpecError, match=r"^h100-2x8-ib400: levels\[1\].kind: "):
        dataclasses.replace(cluster, levels=(cluster.levels[0], cluster.levels[0]))


@pytest.mark.parametrize("nodes", [-3, 0, 1.5])
def test_with_nodes_refuses_an_impossible_count(nodes: object) -> None:
    """``with_nodes(-3)`` used to return a cluster of -24 GPUs."""
    cluster = load_cluster("h100-2x8-ib400")
    with pytest.raises(SpecError, match="h100-2x8-ib400: num_nodes: must be an integer >= 1"):
        cluster.with_nodes(nodes)  # type: ignore[arg-type]
    assert cluster.with_nodes(4).num_gpus == 32 and cluster.with_nodes(1).num_gpus == 8

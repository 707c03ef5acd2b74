"""Engine files: every format round-trips, loads in its engine's own loader (SGLang 0.5.14's code where it runs on
CPU; TensorRT-LLM and vLLM through cited copies of their rules where their code cannot), and what an engine would
reject is refused on write and on read."""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from moesim.errors import HardwareError, PlacementError
from moesim.placement import Placement, even_shares, save_placement
from moesim.specs import load_cluster, load_model
from tuner.engine_files import (
    FORMATS,
    check_export_paths,
    parse_export,
    read_current,
    render_engine_file,
    rows_for_layers,
    write_engine_file,
)
from tuner.eplb import eplb_placement

LITE = "deepseek-v2-lite"  # 27 hidden layers, layer 0 dense, 64 experts: SGLang keeps expert locations for it


def _plan(model, cluster, redundant: int, seed: int = 0, layers=None) -> tuple[Placement, np.ndarray]:
    layers = list(model.moe_layers) if layers is None else layers
    counts = np.random.default_rng(seed).random((len(layers), model.num_experts)) * 1e4
    p = eplb_placement(counts, cluster.num_gpus, redundant, model.n_group, cluster.num_nodes)
    return p.with_meta(layers=layers, model=model.slug), counts


# ------------------------------------------------------------------------------------------- SGLang's own code
@pytest.fixture
def sglang_el(monkeypatch):
    """SGLang 0.5.14's ``python/sglang/srt/eplb/expert_location.py``, imported without ``sglang/__init__.py``
    (which pulls in the whole server: psutil, transformers, ...). Installed with ``pip install --no-deps
    sglang==0.5.14``; the loader needs only torch."""
    pytest.importorskip("torch")
    spec = importlib.util.find_spec("sglang")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("sglang is not installed (pip install --no-deps sglang==0.5.14)")
    root = Path(next(iter(spec.submodule_search_locations)))
    saved = {k: v for k, v in sys.modules.items() if k == "sglang" or k.startswith("sglang.")}
    for name, sub in (("sglang", ""), ("sglang.srt", "srt"), ("sglang.srt.eplb", "srt/eplb")):
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(root / sub)]
        sys.modules[name] = pkg
    import sglang.srt.eplb.expert_location as el

    yield el
    for k in [k for k in sys.modules if k == "sglang" or k.startswith("sglang.")]:
        del sys.modules[k]
    sys.modules.update(saved)


def _sglang_load(el, monkeypatch, path: Path, model, cluster, redundant: int, dispatch: str = "static"):
    """``compute_initial_expert_location_metadata`` as an SGLang server calls it with ``--init-expert-location
    PATH``. Two stand-ins: the model config for expert locations is DeepSeek-V2's
    ``get_model_config_for_expert_location`` (``python/sglang/srt/models/deepseek_v2.py``: ``num_hidden_layers``,
    ``n_routed_experts``, ``n_group``) without loading a checkpoint, and ``torch.distributed.get_rank`` is rank 0
    (no process group on CPU)."""
    import torch

    cfg = el.ModelConfigForExpertLocation(
        num_layers=model.num_layers, num_logical_experts=model.num_experts, num_groups=model.n_group
    )
    monkeypatch.setattr(el.ModelConfigForExpertLocation, "from_model_config", staticmethod(lambda _mc: cfg))
    monkeypatch.setattr(torch.distributed, "get_rank", lambda *a, **k: 0)
    args = SimpleNamespace(
        init_expert_location=str(path),
        device="cpu",
        ep_num_redundant_experts=redundant,
        ep_size=cluster.num_gpus,
        nnodes=cluster.num_nodes,
        ep_dispatch_algorithm=dispatch,
        eplb_algorithm="auto",
    )
    return el.compute_initial_expert_location_metadata(args, model_config=None, moe_ep_rank=0)


@pytest.mark.parametrize("fmt, name", [("sglang-json", "loc.json"), ("sglang-pt", "loc.pt")])
def test_sglang_map_loads_in_sglang(sglang_el, monkeypatch, tmp_path, fmt, name) -> None:
    pytest.importorskip("torch")
    model, cluster = load_model(LITE), load_cluster("dgx-h100")
    p, _ = _plan(model, cluster, 8)
    path = tmp_path / name
    write_engine_file(fmt, path, p, model, cluster)
    meta = _sglang_load(sglang_el, monkeypatch, path, model, cluster, 8)
    mapping = meta.physical_to_logical_map_cpu.numpy()
    assert mapping.shape == (27, 72)
    np.testing.assert_array_equal(mapping[1:], p.phy2log)
    np.testing.assert_array_equal(mapping[0], np.arange(72) % 64)  # dense layer: SGLang's init_trivial row
    # rank 0's static dispatch sends every logical expert to a slot that holds it
    dispatch = meta.logical_to_rank_dispatch_physical_map.numpy()
    assert np.all(np.take_along_axis(mapping, dispatch, axis=1) == np.arange(64))
    back = read_current(path, model, cluster, 8)
    np.testing.assert_array_equal(back.phy2log, p.phy2log)
    assert back.meta["layers"] == list(model.moe_layers) and back.slots_per_gpu == 9
    np.testing.assert_allclose(back.shares, even_shares(p.phy2log, 64))


@pytest.mark.parametrize(
    "model_name, cluster_name, redundant",
    [
        (LITE, "dgx-h100", 8),  # one node: SGLang's auto picks deepseek_hierarchical with one group
        ("deepseek-v3", "h100-2x8-ib400", 32),  # 8 groups on 2 nodes: hierarchical
    ],
)
def test_sglang_count_reproduces_sglang_eplb(
    sglang_el, monkeypatch, tmp_path, model_name, cluster_name, redundant
) -> None:
    """A ``logical_count`` file: SGLang runs its EPLB at startup (``init_by_eplb``); reading the file back as
    ``--current`` gives the map SGLang builds (distinct loads: no ties to break)."""
    model, cluster = load_model(model_name), load_cluster(cluster_name)
    p, counts = _plan(model, cluster, redundant, layers=list(model.moe_layers)[::2])  # some layers unrecorded
    path = tmp_path / "counts.json"
    write_engine_file("sglang-count", path, p, model, cluster, counts=counts)
    doc = json.loads(path.read_text())
    assert list(doc) == ["logical_count"] and np.array(doc["logical_count"]).shape == (
        model.num_layers,
        model.num_experts,
    )
    meta = _sglang_load(sglang_el, monkeypatch, path, model, cluster, redundant, dispatch="dynamic")
    back = read_current(path, model, cluster, redundant)
    np.testing.assert_array_equal(back.phy2log, meta.physical_to_logical_map_cpu.numpy()[list(model.moe_layers)])
    # the recorded layers' rows are the EPLB the plan compared (same loads, same policy)
    np.testing.assert_array_equal(back.phy2log[::2], p.phy2log)
    # the physical count is SGLang's --ep-num-redundant-experts, not the file's: checked against the cluster
    with pytest.raises(PlacementError, match=r"counts.json: logical_count: \d+ physical experts do not divide over"):
        read_current(path, model, cluster, redundant + 1)
    with pytest.raises(PlacementError, match=r"counts.json: logical_count: shape \(\d+, \d+\), olmoe-1b-7b needs"):
        read_current(path, load_model("olmoe-1b-7b"), cluster, redundant)


def test_sglang_accepts_two_replicas_on_one_rank(sglang_el, monkeypatch, tmp_path) -> None:
    """SGLang's own EPLB packs replicas by load alone, so one rank can hold an expert twice; its loader takes
    such a map, and so do moesim's writer and reader."""
    model, cluster = load_model(LITE), load_cluster("dgx-h100")
    row = np.concatenate(
        [np.arange(64), np.zeros(8, dtype=np.int64)]
    )  # rank 7 (slots 63..71): expert 63, then expert 0 x8
    phy = np.tile(row, (26, 1))
    p = Placement(8, 9, 64, phy, even_shares(phy, 64), {"layers": list(model.moe_layers)})
    path = tmp_path / "dup.json"
    write_engine_file("sglang-json", path, p, model, cluster)
    meta = _sglang_load(sglang_el, monkeypatch, path, model, cluster, 8)
    loaded = meta.physical_to_logical_map_cpu.numpy()
    assert (loaded[1] == 0).sum() == 9 and (loaded[1, 64:] == 0).all()  # 8 of them on rank 7
    # and SGLang's own EPLB makes such maps: rebalance_experts on loads of 26 layers x 64 experts, 72 slots, 8 GPUs
    import torch
    from sglang.srt.eplb.eplb_algorithms import deepseek

    loads = np.random.default_rng(0).integers(1, 1000, size=(26, 64))
    phy2log, _, _ = deepseek.rebalance_experts(torch.tensor(loads), 72, 1, 1, 8, False)
    per_rank = phy2log.numpy().reshape(26, 8, 9)
    assert any(len(set(rank.tolist())) < 9 for layer in per_rank for rank in layer)
    np.testing.assert_array_equal(read_current(path, model, cluster, 8).phy2log, phy)


# ------------------------------------------------------------------------------------------------ TensorRT-LLM
def _trtllm_load(path: Path, num_experts: int, ep_size: int, moe_layers) -> dict[int, list[int]]:
    """A copy of TensorRT-LLM's rules for this file (NVIDIA/TensorRT-LLM main, 1.2 line; TensorRT-LLM does not
    import on a CPU-only machine): ``tensorrt_llm/llmapi/llm_args.py`` ``validate_load_balancer`` reads it with
    ``yaml.safe_load`` into ``MoeLoadBalancerConfig(**doc)`` (StrictBaseModel: ``num_slots``,
    ``initial_global_assignments: Dict[int, List[int]]``, ``layer_updates_per_iter: int``, nothing else);
    ``get_layer_initial_global_assignments(layer_idx)`` raises KeyError for a missing layer and ValueError for a
    list not ``num_slots`` long; ``tensorrt_llm/_torch/modules/fused_moe/interface.py`` ``MoE.__init__`` needs
    ``num_slots % ep_size == 0``, ``num_slots >= num_experts``, ``set(assignments) == set(range(num_experts))``;
    the C++ ``setInitialWeightAssignments`` checks ``0 <= expertId < expertCount``."""
    doc = yaml.safe_load(path.read_text())
    assert set(doc) <= {"num_slots", "initial_global_assignments", "layer_updates_per_iter"}
    num_slots, table = doc["num_slots"], doc["initial_global_assignments"]
    assert isinstance(num_slots, int) and isinstance(doc.get("layer_updates_per_iter", 0), int)
    assert all(isinstance(k, int) for k in table)
    assert num_slots % ep_size == 0 and num_slots >= num_experts
    out = {}
    for layer_idx in moe_layers:
        if layer_idx not in table:
            raise KeyError(f"layer_idx {layer_idx} not found in `initial_global_assignments`.")
        assignments = table[layer_idx]
        if len(assignments) != num_slots:
            raise ValueError(f"Assignment length ({len(assignments)}) for layer {layer_idx}")
        assert isinstance(assignments, list) and set(assignments) == set(range(num_experts))
        assert all(0 <= e < num_experts for e in assignments)
        out[layer_idx] = assignments
    return out


def test_trtllm_yaml_meets_its_loader(tmp_path) -> None:
    model, cluster = load_model("deepseek-v3"), load_cluster("h100-2x8-ib400")
    p, _ = _plan(model, cluster, 32, layers=[3, 30, 60])
    path = tmp_path / "eplb.yaml"
    write_engine_file("trtllm", path, p, model, cluster)
    text = path.read_text()
    # as generate_eplb_config.py writes it: one flow list per layer, on one line
    assert (
        text.startswith("num_slots: 288\ninitial_global_assignments:\n  3: [") and "layer_updates_per_iter: 0" in text
    )
    table = _trtllm_load(path, 256, 16, model.moe_layers)
    assert table[30] == p.phy2log[1].tolist()
    # an unplanned MoE layer takes TensorRT-LLM's own default row: (rank * E // ep_size + i) % E
    assert table[4] == [(r * 256 // 16 + i) % 256 for r in range(16) for i in range(18)]
    back = read_current(path, model, cluster, 32)
    assert back.meta["layers"] == list(model.moe_layers) and back.phy2log.shape == (58, 288)
    np.testing.assert_array_equal(rows_for_layers(back, [3, 30, 60]).phy2log, p.phy2log)


def test_trtllm_reader_refuses_what_trtllm_refuses(tmp_path) -> None:
    model, cluster = load_model(LITE), load_cluster("dgx-h100")
    p, _ = _plan(model, cluster, 8)
    path = tmp_path / "eplb.yaml"
    write_engine_file("trtllm", path, p, model, cluster)
    doc = yaml.safe_load(path.read_text())

    def bad(change, message: str) -> None:
        d = json.loads(json.dumps(doc))  # a deep copy (int keys become strings: TensorRT-LLM's pydantic takes both)
        change(d)
        f = tmp_path / "bad.yaml"
        f.write_text(yaml.safe_dump(d))
        with pytest.raises(PlacementError, match=message):
            read_current(f, model, cluster, 8)

    bad(lambda d: d.update(extra=1), r"bad.yaml: extra: unknown field")
    bad(lambda d: d["initial_global_assignments"].pop("5"), r"initial_global_assignments: no row for MoE layer 5")
    bad(lambda d: d["initial_global_assignments"]["1"].pop(), r"initial_global_assignments\[1\]: 71 entries")
    bad(lambda d: d["initial_global_assignments"]["2"].__setitem__(0, 1), r"\[2\]: logical expert \d+ has no")
    bad(
        lambda d: d.update(num_slots=80) or [r.extend(r[:8]) for r in d["initial_global_assignments"].values()],
        r"num_slots: 80 physical experts, but this plan has 64 experts \+ 8 redundant",
    )


# ------------------------------------------------------------------------------------------------------- vLLM
VLLM_033_EPLB_FIELDS = {  # vllm/config/parallel.py EPLBConfig, vLLM 0.33.0
    "window_size",
    "step_interval",
    "num_redundant_experts",
    "log_balancedness",
    "log_balancedness_interval",
    "use_async",
    "policy",
    "communicator",
    "enable_migration_batching",
}


def _vllm_eplb_class():
    """vLLM's own ``EPLBConfig`` from the installed wheel's ``vllm/config/parallel.py`` (``pip install --no-deps
    vllm==0.33.0``), or None without it. The module does not import on a CPU without vLLM's dependencies (torch
    distributed stores, psutil, regex, ...), so the class and the two ``Literal`` aliases it uses are compiled from
    that file (vLLM's text, not a copy) under vLLM's ``@config``, which is ``pydantic.dataclasses.dataclass`` with
    ``ConfigDict(extra="forbid")`` (``vllm/config/utils.py``)."""
    import ast
    from typing import Any, Literal, Self

    from pydantic import ConfigDict, Field, field_validator, model_validator
    from pydantic.dataclasses import dataclass, rebuild_dataclass

    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "config" / "parallel.py"
    if not path.is_file():
        return None
    tree = ast.parse(path.read_text())
    wanted = {"EPLBPolicyOption", "EPLBCommunicatorBackend", "EPLBConfig"}
    nodes = [
        n
        for n in tree.body
        if (isinstance(n, ast.ClassDef) and n.name in wanted)
        or (isinstance(n, ast.Assign) and any(getattr(t, "id", None) in wanted for t in n.targets))
    ]
    namespace: dict = {
        "config": lambda cls: dataclass(cls, config=ConfigDict(extra="forbid")),
        "Field": Field,
        "field_validator": field_validator,
        "model_validator": model_validator,
        "Literal": Literal,
        "Self": Self,
        "Any": Any,
    }
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), namespace)
    cls = namespace["EPLBConfig"]
    rebuild_dataclass(cls, _types_namespace=namespace)  # the annotations name the aliases compiled beside it
    return cls


def _vllm_eplb_config(flag_line: str) -> dict:
    """vLLM 0.33's reading of the flag line: ``vllm/engine/arg_utils.py`` parses ``--eplb-config`` with
    ``json.loads`` (a config dataclass field) and builds ``EPLBConfig(**dict)``; ``--enable-eplb`` needs
    ``--enable-expert-parallel`` (``ParallelConfig``). With the vLLM wheel installed its own ``EPLBConfig`` checks
    the dict, else a copy of its field names and bounds."""
    words = shlex.split(flag_line)
    assert words[:3] == ["--enable-expert-parallel", "--enable-eplb", "--eplb-config"] and len(words) == 4
    cfg = json.loads(words[3])
    eplb_config = _vllm_eplb_class()
    if eplb_config is None:
        assert set(cfg) <= VLLM_033_EPLB_FIELDS
        assert cfg["window_size"] > 0 and cfg["step_interval"] > 0 and cfg["num_redundant_experts"] >= 0
    else:
        parsed = eplb_config(**cfg)
        assert {k: getattr(parsed, k) for k in cfg} == cfg
    return cfg


def test_vllm_settings_as_vllm_reads_them(tmp_path) -> None:
    model, cluster = load_model("olmoe-1b-7b"), load_cluster("h100-2x8-ib400")
    p, _ = _plan(model, cluster, 16, layers=[0, 7, 15])
    flags, js = tmp_path / "eplb.txt", tmp_path / "eplb.json"
    write_engine_file("vllm-flags", flags, p, model, cluster, eplb={"window_size": 500, "use_async": False})
    write_engine_file("vllm", js, p, model, cluster, eplb={"window_size": 500, "use_async": False})
    cfg = _vllm_eplb_config(flags.read_text().strip())
    assert cfg == json.loads(js.read_text())
    assert cfg == {"window_size": 500, "step_interval": 3000, "num_redundant_experts": 16, "use_async": False}
    for f in (flags, js):  # vLLM has no placement file
        with pytest.raises(PlacementError, match=r"format: vLLM has no placement file"):
            read_current(f, model, cluster, 16)
    for eplb, message in (
        ({"window": 5}, r"eplb_config.window: unknown field"),
        ({"step_interval": 0}, r"eplb_config.step_interval: expected an integer >= 1"),
        ({"num_redundant_experts": 3}, r"num_redundant_experts: 3, but the placement has 16"),
        ({"communicator": "pynccl"}, r"incompatible with async EPLB"),
    ):
        with pytest.raises(PlacementError, match=message):
            render_engine_file("vllm", p, model, cluster, eplb=eplb)
        eplb_config = _vllm_eplb_class()
        if eplb_config is not None and "num_redundant_experts" not in eplb:  # vLLM refuses the same settings
            with pytest.raises(ValueError):  # pydantic's ValidationError is a ValueError
                eplb_config(**eplb)


# ------------------------------------------------------------------------------------------------ bad input
def test_rejections_on_write_name_the_file_and_write_nothing(tmp_path) -> None:
    model, cluster = load_model(LITE), load_cluster("dgx-h100")
    p, counts = _plan(model, cluster, 8)
    with pytest.raises(PlacementError, match=r"x.json: --export: sglang-pt must be named \*.pt"):
        write_engine_file("sglang-pt", tmp_path / "x.json", p, model, cluster)
    with pytest.raises(PlacementError, match=r"c.json: --export: sglang-count carries expert loads"):
        write_engine_file("sglang-count", tmp_path / "c.json", p, model, cluster)
    with pytest.raises(PlacementError, match=r"t.yaml: num_gpus: the placement is for 8 GPUs, h100-2x8-ib400 has 16"):
        write_engine_file("trtllm", tmp_path / "t.yaml", p, model, load_cluster("h100-2x8-ib400"))
    with pytest.raises(PlacementError, match=r"m.json: num_experts"):
        write_engine_file("sglang-json", tmp_path / "m.json", p, load_model("deepseek-v3"), cluster)
    assert list(tmp_path.iterdir()) == []


def _write_map(path: Path, mapping) -> Path:
    path.write_text(json.dumps({"physical_to_logical_map": mapping}))
    return path


def test_rejections_on_read(tmp_path) -> None:
    model, cluster = load_model(LITE), load_cluster("dgx-h100")
    p, _ = _plan(model, cluster, 8)
    good = json.loads(render_engine_file("sglang-json", p, model, cluster))["physical_to_logical_map"]

    def bad(mapping, message: str, redundant: int | None = 8, c=cluster, m=model) -> None:
        with pytest.raises(PlacementError, match=message):
            read_current(_write_map(tmp_path / "bad.json", mapping), m, c, redundant)

    ragged = [list(r) for r in good]
    ragged[5] = ragged[5][:-1]  # SGLang's map is one tensor: the same physical count in every layer
    bad(ragged, r"bad.json: physical_to_logical_map\[5\]: 71 physical experts, layer 0 has 72")
    missing = [list(r) for r in good]
    missing[3] = [0 if e == 7 else e for e in missing[3]]
    bad(missing, r"physical_to_logical_map\[3\]: logical expert 7 has no physical expert")
    bad(good[:-1], r"physical_to_logical_map: 26 layers, deepseek-v2-lite has 27 hidden layers")
    bad(good, r"72 physical experts, but this plan has 64 experts \+ 16 redundant", redundant=16)
    bad(good, r"72 physical experts do not divide over h100-2x8-ib400's 16 GPUs", c=load_cluster("h100-2x8-ib400"))
    bad(good, r"physical_to_logical_map: 27 layers, deepseek-v3 has 61", m=load_model("deepseek-v3"))
    assert read_current(_write_map(tmp_path / "ok.json", good), model, cluster).slots_per_gpu == 9  # R from file
    (tmp_path / "two.json").write_text(json.dumps({"physical_to_logical_map": good, "x": 1}))
    with pytest.raises(PlacementError, match=r"two.json: x: unknown field"):
        read_current(tmp_path / "two.json", model, cluster, 8)
    (tmp_path / "what.yaml").write_text("hello: world\n")
    with pytest.raises(PlacementError, match=r"what.yaml: format: not a placement moesim reads"):
        read_current(tmp_path / "what.yaml", model, cluster, 8)
    with pytest.raises(PlacementError, match=r"nothere.json: file: no such file"):
        read_current(tmp_path / "nothere.json", model, cluster, 8)


def test_native_yaml_read_as_before(tmp_path) -> None:
    model, cluster = load_model(LITE), load_cluster("dgx-h100")
    p, _ = _plan(model, cluster, 8, layers=[1, 9])
    save_placement(p, tmp_path / "p.yaml")
    back = read_current(tmp_path / "p.yaml", model, cluster, 8)
    assert back.meta["layers"] == [1, 9] and np.array_equal(back.phy2log, p.phy2log)
    with pytest.raises(
        PlacementError,
        match=r"p.yaml: num_gpus/slots_per_gpu: 8 GPUs x 9 slots, but this plan has "
        r"8 x 10",
    ):
        read_current(tmp_path / "p.yaml", model, cluster, 16)
    with pytest.raises(PlacementError, match="layers: no row for layer 2"):
        rows_for_layers(back, [1, 2])
    assert rows_for_layers(back, [9]).phy2log.tolist() == [p.phy2log[1].tolist()]


def test_parse_and_check_exports(tmp_path) -> None:
    assert FORMATS == ("sglang-json", "sglang-pt", "sglang-count", "trtllm", "vllm", "vllm-flags")
    assert parse_export("trtllm=out/eplb.yaml") == ("trtllm", Path("out/eplb.yaml"))
    for spec, message in (
        ("trtllm", r"trtllm: --export: expected FORMAT=PATH"),
        ("trt=e.yaml", r"e.yaml: --export: unknown format 'trt'; expected one of sglang-json"),
        ("vllm=", r"--export: expected FORMAT=PATH"),
    ):
        with pytest.raises(PlacementError, match=message):
            parse_export(spec)
    with pytest.raises(PlacementError, match=r"--export: directory .*nodir does not exist"):
        check_export_paths([("vllm", tmp_path / "nodir" / "v.json")])
    with pytest.raises(PlacementError, match=r"e.txt: --export: trtllm must be named \*.yaml or \*.yml"):
        check_export_paths([("trtllm", tmp_path / "e.txt")])
    try:
        check_export_paths([("sglang-pt", tmp_path / "m.pt")])
    except HardwareError as exc:  # without torch: one line that says so
        assert "need torch" in str(exc)

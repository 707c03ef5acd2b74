"""SGLang export: physical_to_logical_map over all hidden layers, as --init-expert-location reads it."""

import json

import numpy as np
import pytest

from moesim.errors import PlacementError
from moesim.placement import Placement, even_shares
from moesim.specs import load_model
from tuner.eplb import eplb_placement
from tuner.sglang import check_sglang_path, physical_to_logical_map, save_sglang


def test_all_hidden_layers_and_trivial_rows(tmp_path) -> None:
    model = load_model("deepseek-v3")  # 61 hidden layers, MoE from layer 3, 256 experts
    counts = np.random.default_rng(0).integers(1, 100, size=(2, 256))
    p = eplb_placement(counts, num_gpus=32, redundant_experts=32).with_meta(layers=[3, 60])
    mapping, filled = physical_to_logical_map(p, model)
    assert mapping.shape == (model.num_layers, 288)
    np.testing.assert_array_equal(mapping[3], p.phy2log[0])
    np.testing.assert_array_equal(mapping[60], p.phy2log[1])
    # dense layers 0..2 and unplanned MoE layers take SGLang's init_trivial row: arange(P) % E
    np.testing.assert_array_equal(mapping[0], np.arange(288) % 256)
    assert filled == list(range(4, 60))
    # every logical expert appears in every row (SGLang builds logical_to_all_physical_map from it)
    assert all(len(set(row.tolist())) == 256 for row in mapping)
    out = tmp_path / "loc.json"
    save_sglang(p, model, out)
    doc = json.loads(out.read_text())
    assert list(doc) == ["physical_to_logical_map"]
    assert np.array(doc["physical_to_logical_map"]).shape == (61, 288)


def test_rows_without_layer_ids_must_cover_moe_layers() -> None:
    model = load_model("olmoe-1b-7b")
    phy = np.tile(np.arange(64), (3, 1))
    p = Placement(8, 8, 64, phy, even_shares(phy, 64))
    with pytest.raises(PlacementError, match="16 MoE layers"):
        physical_to_logical_map(p, model)
    full = Placement(8, 8, 64, np.tile(np.arange(64), (16, 1)), np.ones((16, 64)))
    mapping, filled = physical_to_logical_map(full, model)
    assert mapping.shape == (16, 64) and filled == []


def test_other_model_rejected() -> None:
    p = eplb_placement(np.ones((1, 64)), 8, 0)
    with pytest.raises(PlacementError, match="num_experts"):
        physical_to_logical_map(p, load_model("deepseek-v3"))


def test_file_sglang_can_read(tmp_path) -> None:
    """python/sglang/srt/eplb/expert_location.py: compute_initial_expert_location_metadata reads the value as a file
    only if it ends in .json (else json.loads of the string itself) and passes the document's keys to
    init_by_mapping(server_args, model_config, **doc), so any key besides physical_to_logical_map is a TypeError
    there."""
    model = load_model("deepseek-v2-lite")  # 27 hidden layers, first one dense
    p = eplb_placement(np.ones((model.num_moe_layers, model.num_experts)), num_gpus=8, redundant_experts=8)
    with pytest.raises(PlacementError, match=r"loc.txt: --sglang: .*ends in \.json"):
        save_sglang(p, model, tmp_path / "loc.txt")
    assert not (tmp_path / "loc.txt").exists()
    check_sglang_path("loc.json")
    save_sglang(p, model, tmp_path / "loc.json")
    doc = json.loads((tmp_path / "loc.json").read_text())
    assert set(doc) == {"physical_to_logical_map"}
    mapping = np.array(doc["physical_to_logical_map"])
    assert mapping.shape == (27, model.num_experts + 8) and np.issubdtype(mapping.dtype, np.integer)
    np.testing.assert_array_equal(mapping[0], np.arange(72) % 64)  # dense layer 0: SGLang's init_trivial row
    np.testing.assert_array_equal(mapping[1:], p.phy2log)


def test_support_note_only_for_models_sglang_is_known_to_ignore() -> None:
    from moesim.specs import load_model
    from tuner.sglang import support_note

    assert "ignores this file" in support_note(load_model("olmoe-1b-7b"))
    assert support_note(load_model("deepseek-v3")) is None
    assert support_note(load_model("qwen3-30b-a3b")) is None  # not checked: no claim either way

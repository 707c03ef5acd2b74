"""``moesim simulate``: the issue's command line, JSON output, tables, and one-line errors with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from moesim.results import LayerResult

DSV3 = ("--model", "deepseek-v3", "--cluster", "h100-8x8-ib400")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", "simulate", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_done_when_command_json() -> None:
    """The issue's done-when command."""
    proc = run(*DSV3, "--synthetic", "zipf:1.2", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["step_latency_us"] > 0
    assert 0 < doc["alltoall_share"] < doc["moe_share"] < 1
    assert len(doc["layers"]) == 58
    assert set(LayerResult.JSON_FIELDS) <= set(doc["layers"][0])  # the contract keys: tests/moesim/test_simulate.py
    assert doc["layers"][0]["layer"] == 3  # DeepSeek-V3's first MoE layer


def test_all_options_and_table() -> None:
    proc = run(
        *DSV3,
        "--synthetic",
        "zipf:1.2",
        "--tokens-per-gpu",
        "2048",
        "--capacity-factor",
        "1.25",
        "--drop-policy",
        "reroute",
        "--overlap-chunks",
        "2",
        "--dispatch-dtype",
        "fp8",
        "--alltoall",
        "hierarchical",
    )
    assert proc.returncode == 0, proc.stderr
    assert "dispatch" in proc.stdout and "exposed all-to-all" in proc.stdout
    assert "■ compute" in proc.stdout


def test_shipped_trace_by_slug() -> None:
    from pathlib import Path

    import profiles

    shipped = sorted((Path(profiles.__file__).parent / "traces").glob("olmoe_*.npz"))
    if not shipped:
        pytest.skip("no shipped OLMoE trace yet")
    proc = run("--model", "olmoe-1b-7b", "--cluster", "h100-8x8-ib400", "--trace", shipped[0].stem, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert len(doc["layers"]) >= 1


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--model", "nope", "--cluster", "h100-8x8-ib400"], "nope"),
        ([*DSV3, "--drop-policy", "random", "--capacity-factor", "1"], "drop_policy"),
        ([*DSV3, "--trace", "no_such_trace"], "no_such_trace"),
        ([*DSV3, "--synthetic", "zipf:1.2", "--dispatch-dtype", "fp4"], "dispatch_dtype"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, needle) -> None:
    proc = run(*args)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moesim: error:"), proc.stderr
    assert needle in lines[0]
    assert proc.stdout == ""


def test_trace_for_another_model_exit_2() -> None:
    from pathlib import Path

    import profiles

    shipped = sorted((Path(profiles.__file__).parent / "traces").glob("olmoe_*.npz"))
    if not shipped:
        pytest.skip("no shipped OLMoE trace yet")
    proc = run(*DSV3, "--trace", str(shipped[0]))
    assert proc.returncode == 2
    assert proc.stderr.startswith("moesim: error:")


def test_help_shows_example() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    assert "moesim simulate --model deepseek-v3" in proc.stdout


def test_placement_file_and_broken_placement(tmp_path) -> None:
    from moesim.placement import contiguous, save_placement

    good = contiguous(64, 8, 16)
    path = tmp_path / "contiguous.yaml"
    save_placement(good, path)
    args = ["--model", "olmoe-1b-7b", "--cluster", "dgx-h100", "--synthetic", "uniform", "--json"]
    proc = run(*args, "--placement", str(path))
    assert proc.returncode == 0, proc.stderr
    with_file = json.loads(proc.stdout)
    default = json.loads(run(*args).stdout)
    assert with_file["step_latency_us"] == default["step_latency_us"]
    # layer 0 loses expert 10 (expert 11 twice): the writer refuses such a placement, so edit the file
    bad_path = tmp_path / "broken.yaml"
    bad_path.write_text(path.read_text().replace("[10, 1.0]", "[11, 1.0]", 1))
    proc = run(*args, "--placement", str(bad_path))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("moesim: error:") and len(proc.stderr.strip().splitlines()) == 1
    assert "expert 10" in proc.stderr


def test_megatron_flag_names_are_aliases() -> None:
    """--moe-expert-capacity-factor / --moe-token-drop-policy (Megatron's names) equal ours."""
    base = ["--model", "olmoe-1b-7b", "--cluster", "dgx-h100", "--trace", "olmoe_c4", "--json"]
    ours = run(*base, "--capacity-factor", "1.0", "--drop-policy", "position")
    megatron = run(*base, "--moe-expert-capacity-factor", "1.0", "--moe-token-drop-policy", "position")
    assert ours.returncode == 0 and megatron.returncode == 0, ours.stderr + megatron.stderr
    a, b = json.loads(ours.stdout), json.loads(megatron.stdout)
    assert a["options"]["drop_policy"] == b["options"]["drop_policy"] == "position"
    assert [x["dropped_fraction"] for x in a["layers"]] == [x["dropped_fraction"] for x in b["layers"]]
    assert all(x["dropped_fraction"] > 0 for x in a["layers"])


def test_engine_rule_changes_a_replicated_placement(tmp_path) -> None:
    """Hierarchical EPLB keeps an expert's replicas on one node; SGLang's static dispatch sends that node's ranks
    to the first replica, so the busiest GPU carries more than under an even split."""
    import numpy as np

    from moesim.placement import save_placement
    from moesim.specs import load_model
    from moesim.traces.synthetic import synthetic_trace
    from tuner.eplb import eplb_placement

    model = load_model("deepseek-v3")
    counts = synthetic_trace(model, 1 << 16, skew="zipf", alpha=0.9, seed=0, with_topk_ids=False).counts
    path = tmp_path / "eplb.yaml"
    p = eplb_placement(counts, 64, 64, num_groups=8, num_nodes=8).with_meta(layers=list(model.moe_layers))
    save_placement(p, path)
    args = [*DSV3, "--synthetic", "zipf:0.9", "--placement", str(path), "--json"]
    out = {}
    for engine in ("even", "sglang-static"):
        proc = run(*args, "--engine", engine)
        assert proc.returncode == 0, proc.stderr
        out[engine] = json.loads(proc.stdout)
        assert out[engine]["options"]["engine"] == engine
    worst = {e: max(la["max_gpu_tokens"] / la["mean_gpu_tokens"] for la in doc["layers"]) for e, doc in out.items()}
    assert worst["sglang-static"] > worst["even"] * 1.05
    assert np.isclose(out["even"]["layers"][0]["mean_gpu_tokens"], out["sglang-static"]["layers"][0]["mean_gpu_tokens"])
    bad = run(*args, "--engine", "trtllm")
    assert bad.returncode == 2 and "engine: must be one of" in bad.stderr


# ----------------------------------------------------------------- options exposed through SimOptions' metadata
OLMOE = ("--model", "olmoe-1b-7b", "--cluster", "dgx-h100", "--tokens-per-gpu", "256", "--json")


@pytest.fixture
def simulate_in_process(capsys, monkeypatch):
    """``moesim simulate ARGS`` in this process (as ``moesim`` runs it): (exit code, stdout, stderr)."""
    from cli.main import main

    monkeypatch.setenv("COLUMNS", "300")  # --help at full width: no flag name cut short

    def invoke(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exc:
            main(["simulate", *args])
        out = capsys.readouterr()
        return int(exc.value.code or 0), out.out, out.err

    return invoke


@pytest.mark.parametrize(
    "flag, value, key",
    [("--seq-len", "32768", "attention_us"), ("--block-size-m", "128", "moe_us")],
)
def test_option_flags_from_metadata_change_the_result(simulate_in_process, flag: str, value: str, key: str) -> None:
    code, out, err = simulate_in_process(*OLMOE)
    assert code == 0, err
    default = json.loads(out)
    code, out, err = simulate_in_process(*OLMOE, flag, value)
    assert code == 0, err
    doc = json.loads(out)
    name = flag[2:].replace("-", "_")
    assert doc["options"][name] == int(value) != default["options"][name]
    assert doc[key] > default[key]
    code, out, err = simulate_in_process(*OLMOE, flag, "0")
    assert code == 2 and out == ""
    assert err == f"moesim: error: options: {name}: must be >= 1, got 0\n"


def test_no_check_memory_flag_runs_what_the_memory_check_refuses(simulate_in_process) -> None:
    args = ("--model", "deepseek-v3", "--cluster", "dgx-h100", "--tokens-per-gpu", "256", "--json")
    code, out, err = simulate_in_process(*args)
    assert code == 2 and err.startswith("moesim: error: dgx-h100: num_gpus: 8 GPUs too few for deepseek-v3's")
    assert err.count("\n") == 1
    code, out, err = simulate_in_process(*args, "--no-check-memory")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["options"]["check_memory"] is False and doc["step_latency_us"] > 0


def test_every_cli_option_field_is_a_flag(simulate_in_process) -> None:
    """The flags come from ``moesim.options``: every field with ``cli=True`` shows in --help, aliases too."""
    from moesim.options import cli_fields, cli_flags

    code, out, _ = simulate_in_process("--help")
    assert code == 0
    for f in cli_fields():
        for flag in cli_flags(f):
            assert flag in out, flag

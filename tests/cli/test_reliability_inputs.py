"""Bad input and unsafe output paths, through the real CLI entry point: one line on stderr naming the file and
the field, exit 2, nothing written and no input changed (issue 15's classes: encodings, directories in the way,
outputs over inputs, usage errors). Values out of range: test_reliability_values.py; kills: test_reliability_kill.py."""

from __future__ import annotations

import pytest

from tests.cli.cli_harness import PLAN, SWEEP, TINY_KERNEL, assert_one_line_error, file_hashes, run_cli


@pytest.mark.parametrize(
    "args,needles",
    [
        # outputs that are inputs, or each other
        (
            PLAN + ["--model", "olmoe-1b-7b", "--trace", "{w}/t.npz", "-o", "{w}/t.npz"],
            ["t.npz: -o: is also the input of --trace"],
        ),
        (
            PLAN + ["--model", "{w}/m.yaml", "--trace", "{w}/t.npz", "-o", "{w}/m.yaml"],
            ["m.yaml: -o: is also the input of --model"],
        ),
        (
            PLAN + ["--model", "olmoe-1b-7b", "--trace", "{w}/t.npz", "-o", "{w}/p.json", "--sglang", "{w}/p.json"],
            ["p.json: --sglang: is also the output of -o"],
        ),
        (
            ["trace", "synth", "--model", "{w}/m.yaml", "--tokens", "10", "-o", "{w}/m.yaml"],
            ["m.yaml: -o: is also the input of --model"],
        ),
        (
            ["trace", "convert", "{w}/t.npz", "{w}/m.yaml", "--model", "{w}/m.yaml"],
            ["m.yaml: DST: is also the input of --model"],
        ),
        (
            [
                "autotune",
                "capacity",
                "--model",
                "olmoe-1b-7b",
                "--cluster",
                "dgx-h100",
                "--trace",
                "{w}/t.npz",
                "-o",
                "{w}/t.npz",
                "--trials",
                "2",
            ],
            ["t.npz: -o: is also the input of --trace"],
        ),
        # outputs that are directories
        (PLAN + ["--model", "olmoe-1b-7b", "--trace", "{w}/t.npz", "-o", "{w}/OUT"], ["OUT: -o: is a directory"]),
        (
            PLAN + ["--model", "olmoe-1b-7b", "--trace", "{w}/t.npz", "-o", "{w}/p.yaml", "--sglang", "{w}/OUT.json"],
            ["OUT.json: --sglang: is a directory"],
        ),
        (["trace", "convert", "{w}/t.npz", "{w}/OUT"], ["OUT: DST: is a directory"]),
        (["trace", "synth", "--model", "olmoe-1b-7b", "--tokens", "10", "-o", "{w}/OUT"], ["OUT: -o: is a directory"]),
        # usage errors: one line, not typer's box
        (
            PLAN + ["--model", "olmoe-1b-7b", "--trace", "{w}/t.npz", "-o", "{w}/p.yaml", "--tokens-per-gpu", "abc"],
            ["moesim: error: --tokens-per-gpu: 'abc' is not an integer (see moesim plan --help)"],
        ),
        (
            ["simulate", "--model", "olmoe-1b-7b", "--cluster", "dgx-h100", "--capacity-factor", "x"],
            ["--capacity-factor: 'x' is not a number"],
        ),
        (["plan", "--model", "olmoe-1b-7b", "--cluster", "dgx-h100"], ["moesim plan: Missing option"]),
        (["plan", "--bogus"], ["moesim plan: No such option: --bogus"]),
        (["nosuch"], ["No such command 'nosuch'"]),
    ],
)
def test_refused_before_any_work(work, capsys, args, needles) -> None:
    before = file_hashes(work)
    code, out, err = run_cli([a.format(w=work) if isinstance(a, str) else a for a in args], capsys)
    assert_one_line_error(code, err, *needles)
    assert file_hashes(work) == before and not out.strip()


@pytest.mark.parametrize("kind", ["model", "cluster", "placement", "scenario", "trace-json", "calibration"])
def test_non_utf8_input_names_the_file(work, capsys, kind) -> None:
    bad = work / ("bad.json" if kind in ("trace-json", "calibration") else "bad.yaml")
    head = b'{"x": "' if kind == "trace-json" else b"name: "  # a JSON trace is recognised by its first byte
    bad.write_bytes(head + b"\xff\xfe binary\n" + bytes(range(256)))
    offset = len(head)
    args = {
        "model": ["simulate", "--model", bad, "--cluster", "dgx-h100", "--synthetic", "zipf:1.2"],
        "cluster": ["simulate", "--model", "olmoe-1b-7b", "--cluster", bad, "--synthetic", "zipf:1.2"],
        "placement": [
            "simulate",
            "--model",
            "olmoe-1b-7b",
            "--cluster",
            "dgx-h100",
            "--trace",
            work / "t.npz",
            "--placement",
            bad,
        ],
        "scenario": ["whatif", bad, "-o", work / "wi"],
        "trace-json": ["trace", "inspect", bad],
        "calibration": [
            "simulate",
            "--model",
            "olmoe-1b-7b",
            "--cluster",
            "dgx-h100",
            "--synthetic",
            "zipf:1.2",
            "--calibration",
            bad,
        ],
    }[kind]
    before = file_hashes(work)
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, f"{bad}:", f"not UTF-8 text (byte 0xff at offset {offset})")
    assert file_hashes(work) == before


def test_input_that_is_a_directory(work, capsys) -> None:
    code, _, err = run_cli(
        ["simulate", "--model", work / "OUT", "--cluster", "dgx-h100", "--synthetic", "zipf:1.2"], capsys
    )
    assert_one_line_error(code, err, "OUT: model: is a directory, not a YAML file")


@pytest.mark.parametrize("case", ["plots_file", "results_dir", "scenario_is_output", "axes_product"])
def test_whatif_output_folder_checked_first(work, capsys, case) -> None:
    out = work / "wi"
    out.mkdir()
    scen = work / "s.yaml"
    scen.write_text(SWEEP)
    if case == "plots_file":
        (out / "plots").write_text("x")
        needle = "plots: -o (plots): exists and is not a directory"
    elif case == "results_dir":
        (out / "results.json").mkdir()
        needle = "results.json: -o (results.json): is a directory"
    elif case == "scenario_is_output":
        scen = out / "results.json"
        scen.write_text(SWEEP)
        needle = "results.json: -o (results.json): is also the input of SCENARIOS"
    else:  # 100 x 1,000 x 2 = 200,000 points
        cfs = ", ".join(str(1 + i / 100) for i in range(100))
        tokens = ", ".join(str(i) for i in range(1, 1001))
        scen.write_text(
            SWEEP.split("axes")[0] + f"axes: {{capacity_factor: [{cfs}], tokens_per_gpu: [{tokens}], "
            "trace_seed: [0, 1]}\n"
        )
        needle = "s.yaml: axes: 200,000 scenarios, more than moesim's limit of 100,000"
    before = file_hashes(work)
    code, _, err = run_cli(["whatif", scen, "-o", out], capsys)
    assert_one_line_error(code, err, needle)
    assert file_hashes(work) == before


@pytest.mark.parametrize(
    "case", ["save_dir_file", "corrupt_config", "bad_sampler", "trace_of_other_E", "trace_layer_missing", "seed"]
)
def test_autotune_kernel_checks_inputs_before_touching_storage(work, capsys, case) -> None:
    pytest.importorskip("triton", reason="autotune kernel needs the kernels extra")
    journal = work / "j.log"
    args = [
        *TINY_KERNEL,
        "--ms",
        "4",
        "--trials",
        "2",
        "--storage",
        f"journal://{journal}",
    ]
    if case == "save_dir_file":
        (work / "cfg").write_text("")
        args += ["--save-dir", work / "cfg"]
        needle = "cfg: --save-dir: exists and is not a directory"
    elif case == "corrupt_config":
        (work / "cfg").mkdir()
        (work / "cfg" / "E=4,N=32,device_name=cpu.json").write_text("{bad")
        args += ["--save-dir", work / "cfg"]
        needle = "--save-dir: the config file there does not load"
    elif case == "bad_sampler":
        args += ["--sampler", "bogus"]
        needle = "--sampler: bogus: expected tpe, gp, random"
    elif case == "trace_of_other_E":  # a valid OLMoE trace (E=64) for an E=4 kernel
        args += ["--trace", work / "t.npz"]
        needle = f"{work / 't.npz'}: num_experts/top_k: trace has E=64"
    elif case == "trace_layer_missing":
        args[args.index("--E") + 1] = "64"
        args += ["--top-k", "8", "--trace", work / "t.npz", "--trace-layer", "99"]
        needle = f"{work / 't.npz'}: layer: 99 not recorded"
    else:  # optuna's samplers take 0 .. 2**32 - 1: this used to be a traceback after the first progress line
        args += ["--seed", str(1 << 40)]
        needle = "--seed: value: must be in 0..4294967295"
    before = file_hashes(work)
    code, out, err = run_cli(args, capsys)
    assert_one_line_error(code, err, needle)
    assert file_hashes(work) == before and not journal.exists()


@pytest.mark.parametrize("seed", ["-1", str(1 << 40)])
def test_capacity_seed_checked_with_a_trace_file(work, capsys, seed) -> None:
    """With a trace file (no synthetic draw to check it) the seed used to reach optuna unchecked: a traceback."""
    before = file_hashes(work)
    args = ["autotune", "capacity", "--model", "olmoe-1b-7b", "--cluster", "dgx-h100", "--trace", work / "t.npz"]
    code, _, err = run_cli(args + ["--trials", "2", "--storage", "memory", "--seed", seed], capsys)
    assert_one_line_error(code, err, "--seed: value: must be in 0..4294967295")
    assert file_hashes(work) == before


def test_placement_for_another_cluster_names_the_file(work, capsys) -> None:
    """simulate --placement and plan --current with a placement for 16 GPUs on an 8-GPU cluster: the error names
    the placement file, not only the option or the word 'placement'."""
    p16 = work / "p16.yaml"
    code, _, err = run_cli(
        [
            "plan",
            "--model",
            "olmoe-1b-7b",
            "--cluster",
            "h100-2x8-ib400",
            "--trace",
            work / "t.npz",
            "--time-limit",
            "1",
            "-o",
            p16,
        ],
        capsys,
    )
    assert code == 0, err
    before = file_hashes(work)
    code, _, err = run_cli(
        ["simulate", "--model", "olmoe-1b-7b", "--cluster", "dgx-h100", "--tokens-per-gpu", "64", "--placement", p16],
        capsys,
    )
    assert_one_line_error(code, err, f"{p16}: num_gpus: 16 but the cluster has 8")
    code, _, err = run_cli(
        PLAN + ["--model", "olmoe-1b-7b", "--trace", work / "t.npz", "--current", p16, "-o", work / "p.yaml"], capsys
    )
    assert_one_line_error(code, err, f"{p16}: num_gpus/slots_per_gpu: 16 GPUs x 4 slots, but this plan has 8 x 8")
    assert file_hashes(work) == before


def test_trace_errors_name_the_file_not_its_embedded_source(work, capsys) -> None:
    import json

    code, _, err = run_cli(["trace", "convert", work / "t.npz", work / "n.json"], capsys)
    assert code == 0, err
    doc = json.loads((work / "n.json").read_text())
    doc["num_tokens"] += 1  # counts no longer sum to num_tokens * top_k
    (work / "bad.json").write_text(json.dumps(doc))
    code, _, err = run_cli(["trace", "inspect", work / "bad.json"], capsys)
    assert_one_line_error(code, err, f"{work / 'bad.json'}: counts: layer 0 sums to")
    assert doc["source"] not in err

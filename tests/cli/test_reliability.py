"""Bad input and unsafe output paths, through the real CLI entry point: one line on stderr naming the file and
the field, exit 2, nothing written and no input changed (issue 15's classes: encodings, directories in the way,
outputs over inputs, usage errors)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from moesim.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def _run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def _tree(path: Path) -> dict[str, str]:
    """Every file under path with its content hash: what a failed command must leave unchanged."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in path.rglob("*") if p.is_file()
    }


@pytest.fixture()
def work(tmp_path, capsys):
    code, _, err = _run(
        ["trace", "synth", "--model", "olmoe-1b-7b", "--tokens", "64", "-o", tmp_path / "t.npz"], capsys
    )
    assert code == 0, err
    (tmp_path / "m.yaml").write_bytes((ROOT / "profiles" / "models" / "olmoe-1b-7b.yaml").read_bytes())
    (tmp_path / "OUT").mkdir()
    (tmp_path / "OUT.json").mkdir()
    return tmp_path


def _one_line_error(code: int, err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("moesim: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


PLAN = ["plan", "--cluster", "dgx-h100", "--time-limit", "2"]


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
    before = _tree(work)
    code, out, err = _run([a.format(w=work) if isinstance(a, str) else a for a in args], capsys)
    _one_line_error(code, err, *needles)
    assert _tree(work) == before and not out.strip()


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
    before = _tree(work)
    code, _, err = _run(args, capsys)
    _one_line_error(code, err, f"{bad}:", f"not UTF-8 text (byte 0xff at offset {offset})")
    assert _tree(work) == before


def test_input_that_is_a_directory(work, capsys) -> None:
    code, _, err = _run(
        ["simulate", "--model", work / "OUT", "--cluster", "dgx-h100", "--synthetic", "zipf:1.2"], capsys
    )
    _one_line_error(code, err, "OUT: model: is a directory, not a YAML file")


def _mutated(src: Path, dst: Path, old: str, new: str) -> Path:
    text = src.read_text()
    assert old in text, old
    dst.write_text(text.replace(old, new, 1))
    return dst


def _json(path: Path, doc) -> Path:
    import json

    path.write_text(json.dumps(doc))
    return path


SYNTH = ["simulate", "--cluster", "dgx-h100", "--synthetic", "zipf:1.2"]


@pytest.mark.parametrize(
    "case",
    [
        "num_experts",
        "num_layers",
        "cluster_size",
        "version",
        "counts_inf",
        "olmoe_top_k",
        "crosslayer",
        "placement_layer",
        "placement_expert",
        "placement_inf",
        "placement_gpus",
        "objective",
        "baseline",
        "capacity_inf",
        "seed",
        "tokens_huge",
        "tokens_per_gpu",
        "current_shape",
    ],
)
def test_bad_values_are_one_line(work, capsys, case) -> None:
    """Each used to end in a Python traceback (MemoryError, OverflowError, ZeroDivisionError, TypeError, ...)."""
    models, clusters = ROOT / "profiles" / "models", ROOT / "profiles" / "clusters"
    olmoe = models / "olmoe-1b-7b.yaml"
    if case in ("placement_layer", "placement_expert", "placement_inf", "placement_gpus", "current_shape"):
        code, _, err = _run(
            [
                "plan",
                "--model",
                "olmoe-1b-7b",
                "--cluster",
                "dgx-h100",
                "--trace",
                work / "t.npz",
                "-o",
                work / "p.yaml",
                "--time-limit",
                "2",
            ],
            capsys,
        )
        assert code == 0, err
    native = None
    if case in ("version", "counts_inf"):
        code, _, err = _run(["trace", "convert", work / "t.npz", work / "n.json"], capsys)
        assert code == 0, err
        import json

        native = json.loads((work / "n.json").read_text())
    args, needle = {
        "num_experts": (
            [
                "simulate",
                "--model",
                _mutated(olmoe, work / "x.yaml", "num_experts: 64", "num_experts: 1000000000"),
                *SYNTH[1:],
            ],
            "x.yaml: num_experts: must be <= 8,192",
        ),
        "num_layers": (
            [
                "simulate",
                "--model",
                _mutated(olmoe, work / "y.yaml", "num_layers: 16", "num_layers: 1000000000000000000000000000000"),
                *SYNTH[1:],
            ],
            "y.yaml: num_layers: must be <= 1,024",
        ),
        "cluster_size": (
            [
                "simulate",
                "--model",
                "olmoe-1b-7b",
                "--cluster",
                _mutated(clusters / "dgx-h100.yaml", work / "c.yaml", "size: 8", "size: 1000000000"),
                "--synthetic",
                "zipf:1.2",
            ],
            "c.yaml: levels[0].size: must be <= 131,072",
        ),
        "version": (
            ["trace", "inspect", _json(work / "v.json", {**(native or {}), "version": "v1"})],
            "v.json: version: expected an integer, got 'v1'",
        ),
        "counts_inf": (["trace", "inspect", work / "inf.json"], "inf.json: counts: entries must be finite"),
        "olmoe_top_k": (
            [
                "trace",
                "inspect",
                _json(work / "o.json", {"num_experts": 64, "top_k": 0, "layers": [0], "expert_counts": [[1] * 64]}),
            ],
            "o.json: top_k: must be >= 1, got 0",
        ),
        "crosslayer": (
            [
                "trace",
                "inspect",
                _json(
                    work / "o2.json",
                    {
                        "num_experts": 64,
                        "top_k": 8,
                        "layers": [0],
                        "expert_counts": [[1] * 64],
                        "expert_counts_crosslayer": 5,
                    },
                ),
            ],
            "o2.json: expert_counts_crosslayer: expected a mapping, got int",
        ),
        "placement_layer": (
            [
                "simulate",
                "--model",
                "olmoe-1b-7b",
                "--cluster",
                "dgx-h100",
                "--trace",
                work / "t.npz",
                "--placement",
                work / "q.yaml",
            ],
            "q.yaml: layers[0]: layer: expected",
        ),
        "placement_expert": (
            [
                "simulate",
                "--model",
                "olmoe-1b-7b",
                "--cluster",
                "dgx-h100",
                "--trace",
                work / "t.npz",
                "--placement",
                work / "q.yaml",
            ],
            "q.yaml: layers[0]: gpus[0][0]:",
        ),
        "placement_inf": (
            [
                "simulate",
                "--model",
                "olmoe-1b-7b",
                "--cluster",
                "dgx-h100",
                "--trace",
                work / "t.npz",
                "--placement",
                work / "q.yaml",
            ],
            "q.yaml: layers[0]: gpus[0][0]:",
        ),
        "placement_gpus": (
            [
                "simulate",
                "--model",
                "olmoe-1b-7b",
                "--cluster",
                "dgx-h100",
                "--trace",
                work / "t.npz",
                "--placement",
                work / "q.yaml",
            ],
            "q.yaml: num_gpus: must be >= 1",
        ),
        "objective": (["whatif", work / "s.yaml", "-o", work / "wi"], "s.yaml: objective: must be one of"),
        "baseline": (["whatif", work / "s.yaml", "-o", work / "wi"], "s.yaml: baseline: no scenario is named [1]"),
        "capacity_inf": (
            [*SYNTH[:1], "--model", "olmoe-1b-7b", *SYNTH[1:], "--capacity-factor", "inf"],
            "capacity_factor: must be a finite number > 0",
        ),
        "seed": (
            ["simulate", "--model", "olmoe-1b-7b", "--cluster", "dgx-h100", "--synthetic", "zipf:1.2,seed=-1"],
            "seed: must be an integer >= 0, got -1",
        ),
        "tokens_huge": (
            ["trace", "synth", "--model", "olmoe-1b-7b", "--tokens", str(10**30), "-o", work / "s.npz"],
            "num_tokens: must be <= 1,099,511,627,776",
        ),
        "tokens_per_gpu": (
            [
                "plan",
                "--model",
                "olmoe-1b-7b",
                "--cluster",
                "dgx-h100",
                "--trace",
                work / "t.npz",
                "-o",
                work / "q.yaml",
                "--tokens-per-gpu",
                "-5",
            ],
            "plan: --tokens-per-gpu: must be in [1, 16,777,216]",
        ),
        "current_shape": (
            [
                "plan",
                "--model",
                "olmoe-1b-7b",
                "--cluster",
                "h100-2x8-ib400",
                "--trace",
                work / "t.npz",
                "-o",
                work / "q.yaml",
                "--current",
                work / "p.yaml",
                "--time-limit",
                "2",
            ],
            f"{work / 'p.yaml'}: num_gpus/slots_per_gpu: 8 GPUs x 8 slots, but this plan has 16 x 4",
        ),
    }[case]
    if case == "counts_inf":
        native["counts"][0][0] = float("inf")
        (work / "inf.json").write_text(__import__("json").dumps(native))
    if case.startswith("placement_"):
        text = (work / "p.yaml").read_text()
        first = text.index("[[") + 2
        comma = text.index(",", first)
        new = {
            "placement_layer": text.replace("- layer: 0", "- layer: abc", 1),
            "placement_expert": text[:first] + "1e30" + text[comma:],
            "placement_inf": text[:first] + ".inf" + text[comma:],
            "placement_gpus": text.replace("num_gpus: 8", "num_gpus: -1", 1),
        }[case]
        (work / "q.yaml").write_text(new)
    if case in ("objective", "baseline"):
        (work / "s.yaml").write_text(
            'base: {model: olmoe-1b-7b, cluster: dgx-h100, trace: "synthetic:zipf:1.2"}\n'
            + ("objective: [1]\n" if case == "objective" else "baseline: [1]\n")
        )
    before = _tree(work)
    code, _, err = _run(args, capsys)
    _one_line_error(code, err, needle)
    assert _tree(work) == before


SWEEP = (
    'base: {model: olmoe-1b-7b, cluster: dgx-h100, trace: "synthetic:zipf:1.2"}\naxes: {capacity_factor: [1.0, 1.25]}\n'
)


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
    before = _tree(work)
    code, _, err = _run(["whatif", scen, "-o", out], capsys)
    _one_line_error(code, err, needle)
    assert _tree(work) == before


@pytest.mark.parametrize(
    "case", ["save_dir_file", "corrupt_config", "bad_sampler", "trace_of_other_E", "trace_layer_missing", "seed"]
)
def test_autotune_kernel_checks_inputs_before_touching_storage(work, capsys, case) -> None:
    pytest.importorskip("triton", reason="autotune kernel needs the kernels extra")
    journal = work / "j.log"
    args = [
        "autotune",
        "kernel",
        "--backend",
        "interpret",
        "--E",
        "4",
        "--N",
        "32",
        "--K",
        "64",
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
    before = _tree(work)
    code, out, err = _run(args, capsys)
    _one_line_error(code, err, needle)
    assert _tree(work) == before and not journal.exists()


@pytest.mark.parametrize("seed", ["-1", str(1 << 40)])
def test_capacity_seed_checked_with_a_trace_file(work, capsys, seed) -> None:
    """With a trace file (no synthetic draw to check it) the seed used to reach optuna unchecked: a traceback."""
    before = _tree(work)
    args = ["autotune", "capacity", "--model", "olmoe-1b-7b", "--cluster", "dgx-h100", "--trace", work / "t.npz"]
    code, _, err = _run(args + ["--trials", "2", "--storage", "memory", "--seed", seed], capsys)
    _one_line_error(code, err, "--seed: value: must be in 0..4294967295")
    assert _tree(work) == before


def test_placement_for_another_cluster_names_the_file(work, capsys) -> None:
    """simulate --placement and plan --current with a placement for 16 GPUs on an 8-GPU cluster: the error names
    the placement file, not only the option or the word 'placement'."""
    p16 = work / "p16.yaml"
    code, _, err = _run(
        ["plan", "--model", "olmoe-1b-7b", "--cluster", "h100-2x8-ib400", "--trace", work / "t.npz", "--time-limit",
         "1", "-o", p16], capsys
    )
    assert code == 0, err
    before = _tree(work)
    code, _, err = _run(
        ["simulate", "--model", "olmoe-1b-7b", "--cluster", "dgx-h100", "--tokens-per-gpu", "64", "--placement", p16],
        capsys,
    )
    _one_line_error(code, err, f"{p16}: num_gpus: 16 but the cluster has 8")
    code, _, err = _run(PLAN + ["--model", "olmoe-1b-7b", "--trace", work / "t.npz", "--current", p16, "-o",
                                work / "p.yaml"], capsys)
    _one_line_error(code, err, f"{p16}: num_gpus/slots_per_gpu: 16 GPUs x 4 slots, but this plan has 8 x 8")
    assert _tree(work) == before


def test_trace_errors_name_the_file_not_its_embedded_source(work, capsys) -> None:
    import json

    code, _, err = _run(["trace", "convert", work / "t.npz", work / "n.json"], capsys)
    assert code == 0, err
    doc = json.loads((work / "n.json").read_text())
    doc["num_tokens"] += 1  # counts no longer sum to num_tokens * top_k
    (work / "bad.json").write_text(json.dumps(doc))
    code, _, err = _run(["trace", "inspect", work / "bad.json"], capsys)
    _one_line_error(code, err, f"{work / 'bad.json'}: counts: layer 0 sums to")
    assert doc["source"] not in err


def test_plan_killed_at_random_points_leaves_whole_outputs_or_none(tmp_path) -> None:
    """SIGKILL `moesim plan --sglang` at spread-out moments: the trace is unchanged, the placement and SGLang files
    are both there or both absent, and the next run sweeps any staging folder the kill left."""
    import random
    import subprocess
    import sys
    import time

    from moesim.fileio import STAGE_PREFIX

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "moesim",
            "trace",
            "synth",
            "--model",
            "deepseek-v3",
            "--tokens",
            "4096",
            "--counts-only",
            "-o",
            str(tmp_path / "t.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    digest = hashlib.sha256((tmp_path / "t.npz").read_bytes()).hexdigest()
    cmd = [
        sys.executable,
        "-m",
        "moesim",
        "plan",
        "--model",
        "deepseek-v3",
        "--cluster",
        "h100-8x8-ib400",
        "--trace",
        str(tmp_path / "t.npz"),
        "--redundant-experts",
        "64",
        "--time-limit",  # the whole plan's: the 64-GPU baselines and their simulations take a few seconds of it
        "8",
        "-o",
        str(tmp_path / "p.yaml"),
        "--sglang",
        str(tmp_path / "p.json"),
    ]
    rng = random.Random(0)
    for _ in range(5):
        for name in ("p.yaml", "p.json"):
            (tmp_path / name).unlink(missing_ok=True)
        run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 9.0))
        run.kill()
        run.wait()
        outputs = {(tmp_path / n).exists() for n in ("p.yaml", "p.json")}
        assert len(outputs) == 1, "one output without the other"
        assert hashlib.sha256((tmp_path / "t.npz").read_bytes()).hexdigest() == digest
    finished = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert (tmp_path / "p.yaml").exists() and (tmp_path / "p.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(STAGE_PREFIX)]


# run as `python -c`: the CLI with a SIGKILL of its own process at a chosen point (argv[1]), then argv[2:] as
# moesim's arguments. "replace-into:DIR" dies just after the first os.replace of a report file into DIR (one file
# of a file-by-file merge in place, the rest not); "after-swap" dies just after OutputSet's one-step folder swap;
# "write:NAME" dies half-way through writing NAME's temp file (after its first bytes, before the rename);
# "cbc-started" dies as soon as the MILP solver's process is running (PuLP's model files written).
KILL_AT = """
import os, signal, sys
import moesim.fileio as fileio
point, args = sys.argv[1], sys.argv[2:]
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if point.startswith("replace-into:"):
    folder, real = point.split(":", 1)[1] + os.sep, os.replace
    def replace(src, dst, *a, **k):
        done = real(src, dst, *a, **k)
        if str(dst).startswith(folder) and os.path.basename(str(dst)).startswith(("report", "results")):
            die()
        return done
    fileio.os.replace = replace
elif point == "after-swap":
    real_swap = fileio._exchange
    def swap(a, b):
        done = real_swap(a, b)
        die()
    fileio._exchange = swap
elif point.startswith("write:"):
    name, real_write = point.split(":", 1)[1], fileio.atomic_write
    def atomic_write(path, write):
        if os.path.basename(str(path)) != name:
            return real_write(path, write)
        def half(fh):
            fh.write(b'{"half": ')
            fh.flush()
            die()
        return real_write(path, half)
    fileio.atomic_write = atomic_write
    fileio.atomic_write_bytes = lambda path, data: atomic_write(path, lambda fh: fh.write(data))
    fileio.atomic_write_text = lambda path, text: fileio.atomic_write_bytes(path, text.encode("utf-8"))
elif point == "cbc-started":
    import subprocess
    real_popen = subprocess.Popen
    def popen(args, *a, **k):
        proc = real_popen(args, *a, **k)
        if "cbc" in os.path.basename(str(args[0] if isinstance(args, (list, tuple)) else args)).lower():
            die()
        return proc
    subprocess.Popen = popen
from moesim.cli.main import main
main(args)
"""


def _moesim(args, point: str | None = None, env: dict | None = None):
    import subprocess
    import sys

    cmd = [sys.executable, "-c", KILL_AT, point, *map(str, args)] if point else [sys.executable, "-m", "moesim"]
    if not point:
        cmd += [str(a) for a in args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)


@pytest.mark.parametrize("point", ["mid-merge", "after-swap"])
def test_whatif_rerun_killed_at_the_commit_leaves_the_old_report_or_the_new(tmp_path, point) -> None:
    """SIGKILL while `whatif` puts its report over the previous one in the same folder: every file is the old run's
    or every file is the new run's (the file-by-file merge could leave the new results.json beside the old report);
    the next run sweeps the staging folder."""
    import os

    from moesim.fileio import STAGE_PREFIX

    env = dict(os.environ, MOESIM_CACHE_DIR=str(tmp_path / "cache"))
    out, scen = tmp_path / "wi", tmp_path / "s.yaml"

    names = ("report.html", "report.md", "results.csv", "results.json")
    scen.write_text(SWEEP)
    assert _moesim(["whatif", scen, "-o", out, "--workers", "1"], env=env).returncode == 0
    old = _tree(out)
    (out / "notes.txt").write_text("mine")  # a file of the user's in the report folder: kept by every run
    scen.write_text(SWEEP.replace("trace:", "tokens_per_gpu: 512, trace:"))  # every report file differs
    kill = f"replace-into:{out}" if point == "mid-merge" else "after-swap"
    _moesim(["whatif", scen, "-o", out, "--workers", "1"], kill, env=env)
    changed = {n: _tree(out)[n] != old[n] for n in names}
    assert len(set(changed.values())) == 1, changed
    assert (out / "notes.txt").read_text() == "mine"
    assert _moesim(["whatif", scen, "-o", out, "--workers", "1"], env=env).returncode == 0
    assert all(_tree(out)[n] != old[n] for n in names) and (out / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(STAGE_PREFIX)]


def test_capacity_killed_while_writing_its_front_leaves_no_stray_file(tmp_path) -> None:
    """SIGKILL half-way through writing `autotune capacity -o front.json`: no front.json, and the temp file it
    leaves is one moesim sweeps (a staging name): the next run leaves front.json alone in the folder."""
    import json
    import os

    from moesim.fileio import STAGE_PREFIX

    env = dict(os.environ, MOESIM_CACHE_DIR=str(tmp_path / "cache"))
    out = tmp_path / "out"
    out.mkdir()
    args = ["autotune", "capacity", "--model", "olmoe-1b-7b", "--cluster", "dgx-h100"]
    args += ["--trace", "zipf:1.2", "--trials", "20", "--population", "10", "-o", out / "front.json"]
    proc = _moesim(args, "write:front.json", env=env)
    assert proc.returncode != 0
    left = [p.name for p in out.iterdir()]
    assert left and all(n.startswith(STAGE_PREFIX) for n in left), left
    proc = _moesim(args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in out.iterdir()] == ["front.json"]
    assert json.loads((out / "front.json").read_text())["pareto_front"]


def test_autotune_kernel_resumes_a_journal_cut_mid_append(tmp_path) -> None:
    """A run killed part-way through a journal append leaves a last line without its newline (Linux stops a write
    between pages on SIGKILL). The next run used to glue its first operation onto it, and every read after that
    failed; now it cuts the torn tail, keeps every finished trial and goes on."""
    pytest.importorskip("triton", reason="autotune kernel needs the kernels extra")
    import os

    import optuna

    from tuner import storage

    journal = tmp_path / "j.log"
    env = dict(os.environ, MOESIM_CACHE_DIR=str(tmp_path / "cache"), TRITON_INTERPRET="1")

    def tune(trials: int):
        args = ["autotune", "kernel", "--backend", "interpret", "--E", "4", "--N", "32", "--K", "64", "--ms", "2"]
        args += ["--trials", trials, "--warmup", "0", "--repeats", "1", "--seed", "0"]
        return _moesim([*args, "--storage", f"journal://{journal}"], env=env)

    def complete() -> list:
        study = optuna.load_study(study_name=None, storage=storage.open_storage(f"journal://{journal}"))
        return [t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]

    assert tune(2).returncode == 0
    before = complete()
    with open(journal, "ab") as fh:  # the first half of an operation, as a writer killed mid-append leaves it
        fh.write(b'{"op_code":6,"worker_id":"dead","trial_id":0,"user_attr":{"owne')
    proc = tune(3)
    assert proc.returncode == 0, proc.stderr
    after = complete()
    assert set(before) <= set(after) and len(after) > len(before)


def test_plan_killed_mid_solve_leaves_no_solver_files_in_tmp(tmp_path) -> None:
    """SIGKILL `moesim plan` while CBC solves: PuLP's model and solution files and CBC's log (in the temp folder,
    which nothing else cleans) used to stay there for good; now they sit in a folder named for the killed run,
    which the next run sweeps."""
    import os
    import signal
    import subprocess
    import sys

    from moesim.fileio import STAGE_PREFIX

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, MOESIM_CACHE_DIR=str(tmp_path / "cache"), TMPDIR=str(tmp))
    args = ["plan", "--model", "olmoe-1b-7b", "--cluster", "h100-2x8-ib400"]
    args += ["--trace", ROOT / "profiles" / "traces" / "olmoe_c4.npz", "--redundant-experts", "16"]
    args += ["--time-limit", "2", "-o", tmp_path / "p.yaml"]
    run = subprocess.Popen(
        [sys.executable, "-c", KILL_AT, "cbc-started", *map(str, args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert run.wait(timeout=300) == -signal.SIGKILL
    try:
        os.killpg(run.pid, signal.SIGKILL)  # the solver it had started
    except ProcessLookupError:
        pass
    left = [p.name for p in tmp.iterdir()]
    assert left and all(n.startswith(STAGE_PREFIX) for n in left), left
    assert not (tmp_path / "p.yaml").exists()
    proc = _moesim(args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert list(tmp.iterdir()) == [] and (tmp_path / "p.yaml").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        ([*SYNTH[:1], "--model", "olmoe-1b-7b", "--cluster", "dgx-h100", "--synthetic", ""], "skew: empty"),
        ([*SYNTH[:1], "--model", "olmoe-1b-7b", "--cluster", "dgx-h100", "--synthetic", "zipf:"], "alpha: missing"),
        (
            [*SYNTH[:1], "--model", "olmoe-1b-7b", *SYNTH[1:], "--tokens-per-gpu", str(10**30)],
            "tokens_per_gpu: must be <= 16,777,216",
        ),
        (
            ["plan", "--model", "olmoe-1b-7b", "--cluster", "dgx-h100", "--trace", "{work}/t.npz"]
            + ["-o", "{work}/p.yaml", "--tokens-per-gpu", str(1 << 25)],
            "--tokens-per-gpu: must be in [1, 16,777,216]",
        ),
        (["whatif", "{work}/huge.yaml", "-o", "{work}/wi"], "tokens_per_gpu: must be <= 16,777,216"),
        (
            ["autotune", "kernel", "--backend", "interpret", "--E", "4", "--N", "32", "--K", "64", "--ms", "2"]
            + ["--trials", "2", "--patience", "-1", "--save-dir", "{work}/kdir", "--storage", "{work}/j.log"],
            "--patience: value: must be >= 0 (0: off), got -1",
        ),
    ],
    ids=[
        "synthetic_empty",
        "synthetic_no_alpha",
        "simulate_tokens_per_gpu",
        "plan_tokens_per_gpu",
        "scenario_axis",
        "patience_negative",
    ],
)
def test_nonsense_is_refused_not_defaulted(work, capsys, args, needle) -> None:
    """Class 6 of issue 15: these used to exit 0 (an empty or parameterless --synthetic fell back to the
    default; 10^30 tokens per GPU printed a 9.4e27 ms step)."""
    (work / "huge.yaml").write_text(
        "base: {model: olmoe-1b-7b, cluster: dgx-h100, trace: 'synthetic:zipf:1.2'}\n"
        f"axes: {{tokens_per_gpu: [1024, {10**30}]}}\n"
    )
    before = _tree(work)
    code, out, err = _run([str(a).format(work=work) for a in args], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert _tree(work) == before  # nothing written

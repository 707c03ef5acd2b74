"""`moesim plan` end to end on a shipped real trace (small time limits), and its bad-input errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moesim.placement import load_placement

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT / "profiles" / "traces" / "olmoe_c4.npz"
OLMOE_DGX = ("--model", "olmoe-1b-7b", "--cluster", "dgx-h100", "--trace", str(TRACE))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", "plan", *args], capture_output=True, text=True, check=False, cwd=ROOT, timeout=120
    )


def test_plan_json_rows_and_files(tmp_path) -> None:
    out, js = tmp_path / "p.yaml", tmp_path / "p.json"
    r = _run(
        *OLMOE_DGX,
        "--redundant-experts",
        "8",
        "--time-limit",
        "8",
        "-o",
        str(out),
        "--sglang",
        str(js),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    # one node: EPLB's hierarchical policy is its global one
    assert [row["method"] for row in rows] == ["contiguous", "round-robin", "eplb-global", "ilp"]
    assert set(rows[0]) == {
        "method",
        "max_mean_load",
        "cross_gpu_bytes",
        "cross_node_bytes",
        "layer_latency_us",
        "solve_s",
        "gap",
    }
    ilp = rows[-1]
    # scored under sglang-static (the default with --sglang): never slower than a baseline
    assert all(ilp["layer_latency_us"] <= row["layer_latency_us"] * (1 + 1e-9) for row in rows)
    assert "--ep-dispatch-algorithm static" in _run_flags(tmp_path, tmp_path / "q.json")
    assert 0 <= ilp["gap"] < 0.05 and ilp["solve_s"] < 20
    p = load_placement(out)
    assert p.meta["model"] == "olmoe-1b-7b" and p.meta["layers"] == [0, 7, 15] and p.slots_per_gpu == 9
    assert p.meta["predicted"]["layer_latency_us"] == pytest.approx(ilp["layer_latency_us"])
    mapping = np.array(json.loads(js.read_text())["physical_to_logical_map"])
    assert mapping.shape == (16, 72)
    np.testing.assert_array_equal(mapping[7], p.phy2log[1])
    # the file loads back into the simulator
    sim = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "simulate",
            *OLMOE_DGX,
            "--placement",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=60,
    )
    assert sim.returncode == 0, sim.stderr


def _run_flags(tmp_path, js) -> str:
    """The launch line `plan` prints after writing an SGLang file."""
    r = _run(
        *OLMOE_DGX,
        "--redundant-experts",
        "8",
        "--time-limit",
        "4",
        "-o",
        str(tmp_path / "q.yaml"),
        "--sglang",
        str(js),
    )
    assert r.returncode == 0, r.stderr
    line = " ".join(r.stdout.split())
    assert f"--init-expert-location {js}" in line and "--ep-num-redundant-experts 8" in line
    return line


def test_engine_rule_scores_every_row(tmp_path) -> None:
    """`--engine even` scores the file's replicas as even splits; the same plan under sglang-static differs
    where replicas share a node, and the rows say which rule scored them only through the numbers."""
    base = [
        "--model",
        "olmoe-1b-7b",
        "--cluster",
        "h100-2x8-ib400",
        "--trace",
        str(TRACE),
        "--redundant-experts",
        "16",
        "--time-limit",
        "6",
        "--json",
    ]
    even = json.loads(_run(*base, "--engine", "even", "-o", str(tmp_path / "e.yaml")).stdout)
    static = json.loads(_run(*base, "--engine", "sglang-static", "-o", str(tmp_path / "s.yaml")).stdout)
    # OLMoE has no expert groups to keep on a node: EPLB runs its global policy
    assert [r["method"] for r in even] == ["contiguous", "round-robin", "eplb-global", "ilp"]
    by = {r["method"]: r for r in static}
    # contiguous has one replica per expert: every rule scores it alike
    assert by["contiguous"]["max_mean_load"] == pytest.approx(even[0]["max_mean_load"])
    assert by["eplb-global"]["max_mean_load"] != pytest.approx(even[2]["max_mean_load"])
    assert all(static[-1]["layer_latency_us"] <= r["layer_latency_us"] * (1 + 1e-9) for r in static)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "olmoe-1b-7b", "--cluster", "dgx-h100", "--redundant-experts", "3"], "do not divide"),
        (["--model", "deepseek-v3", "--cluster", "dgx-h100"], "num_experts"),  # trace of another model
        (["--model", "olmoe-1b-7b", "--cluster", "dgx-h100", "--solver", "gurobi"], "solver"),
        (["--model", "olmoe-1b-7b", "--cluster", "dgx-h100", "--engine", "sglang"], "engine: must be one of"),
        (["--model", "olmoe-1b-7b", "--cluster", "dgx-h100", "--time-limit", "0.01"], "no incumbent"),
        # SGLang reads --init-expert-location as a file only when it ends in .json (eplb/expert_location.py)
        (["--model", "olmoe-1b-7b", "--cluster", "dgx-h100", "--sglang", "placement.txt"], "ends in .json"),
    ],
)
def test_bad_input_one_line_exit_2_no_file(tmp_path, args, message) -> None:
    out = tmp_path / "p.yaml"
    r = _run(*args, "--trace", str(TRACE), "-o", str(out))
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moesim: error:") and message in lines[0], r.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_memory_exceeded(tmp_path) -> None:
    # DeepSeek-V3 on 8 GPUs: 32 expert slots x 58 layers x 88 MB = 163 GB per GPU
    from moesim.specs import load_model
    from moesim.traces.native import save_trace
    from moesim.traces.synthetic import synthetic_trace

    tr = tmp_path / "ds.npz"
    save_trace(synthetic_trace(load_model("deepseek-v3"), 2048, with_topk_ids=False), tr)
    out = tmp_path / "p.yaml"
    r = _run("--model", "deepseek-v3", "--cluster", "dgx-h100", "--trace", str(tr), "-o", str(out))
    assert r.returncode == 2 and "GPU memory" in r.stderr, r.stderr
    assert not out.exists()


def test_sglang_stat_dump_with_model_deepseek_64_gpus(tmp_path) -> None:
    """The issue's command: an SGLang `stat` dump (no top-k in it) with --model, DeepSeek-V3 on 8 x 8 GPUs,
    64 redundant experts, SGLang's file written (61 rows, 320 slots) and the launch flags printed."""
    torch = pytest.importorskip("torch", reason="writing an SGLang .pt dump needs torch (the kernels extra)")
    rng = np.random.default_rng(0)
    lc = np.zeros((2, 61, 256), dtype=np.int32)  # 2 steps, every hidden layer, dense layers 0-2 empty
    lc[:, 3:] = rng.multinomial(4096 * 8, rng.dirichlet(np.full(256, 0.5)), size=(2, 58))
    dump = tmp_path / "expert_distribution_recorder_1700000000.5.pt"
    torch.save({"rank": 0, "logical_count": torch.from_numpy(lc)}, dump)
    js = tmp_path / "p.json"
    r = _run(
        "--trace",
        str(dump),
        "--model",
        "deepseek-v3",
        "--cluster",
        "h100-8x8-ib400",
        "--redundant-experts",
        "64",
        "--time-limit",
        "15",
        "-o",
        str(tmp_path / "p.yaml"),
        "--sglang",
        str(js),
    )
    assert r.returncode == 0, r.stderr
    mapping = np.array(json.loads(js.read_text())["physical_to_logical_map"])
    assert mapping.shape == (61, 320)
    line = " ".join(r.stdout.split())
    assert "--ep-size 64 --ep-num-redundant-experts 64" in line and "--nnodes 8" in line


def test_highs_json_stdout_is_only_json(tmp_path) -> None:
    """HiGHS prints a banner from C when it starts; with --json stdout must still parse."""
    pytest.importorskip("highspy", reason="HiGHS comes with PuLP's optional highspy")
    r = _run(
        *OLMOE_DGX,
        "--redundant-experts",
        "8",
        "--time-limit",
        "4",
        "--solver",
        "highs",
        "-o",
        str(tmp_path / "p.yaml"),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    assert [row["method"] for row in json.loads(r.stdout)][-1] == "ilp"


def test_export_every_engine_file_and_read_them_back_as_current(tmp_path) -> None:
    """`--export FORMAT=PATH` for every format next to -o; the engine files then serve as `--current`."""
    torch = pytest.importorskip("torch", reason="SGLang .pt files need torch (the kernels extra)")
    from tuner.engine_files import FORMATS

    names = {
        "sglang-json": "m.json",
        "sglang-pt": "m.pt",
        "sglang-count": "c.json",
        "trtllm": "e.yaml",
        "vllm": "v.json",
        "vllm-flags": "v.txt",
    }
    assert set(names) == set(FORMATS)
    exports = [w for fmt, name in names.items() for w in ("--export", f"{fmt}={tmp_path / name}")]
    base = [*OLMOE_DGX, "--redundant-experts", "8", "--time-limit", "4"]
    r = _run(*base, "-o", str(tmp_path / "p.yaml"), *exports)
    assert r.returncode == 0, r.stderr
    assert f"{tmp_path / 'v.txt'}" in " ".join(r.stdout.split())  # listed among the files written
    p = load_placement(tmp_path / "p.yaml")
    mapping = np.array(json.loads((tmp_path / "m.json").read_text())["physical_to_logical_map"])
    assert mapping.shape == (16, 72)
    np.testing.assert_array_equal(mapping[7], p.phy2log[1])
    pt = torch.load(tmp_path / "m.pt", weights_only=True)  # as SGLang reads a .pt
    np.testing.assert_array_equal(pt["physical_to_logical_map"].numpy(), mapping)
    counts = np.array(json.loads((tmp_path / "c.json").read_text())["logical_count"])
    assert counts.shape == (16, 64) and counts[7].sum() == counts[0].sum()  # every recorded row: T * top_k
    import yaml

    trt = yaml.safe_load((tmp_path / "e.yaml").read_text())
    assert trt["num_slots"] == 72 and trt["initial_global_assignments"][15] == p.phy2log[2].tolist()
    assert json.loads((tmp_path / "v.json").read_text())["num_redundant_experts"] == 8
    assert (tmp_path / "v.txt").read_text().startswith("--enable-expert-parallel --enable-eplb --eplb-config '{")
    for current in ("m.pt", "e.yaml"):
        r = _run(*base, "-o", str(tmp_path / "q.yaml"), "--current", str(tmp_path / current), "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)[-1]["method"] == "ilp"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--export", "trt=e.yaml"], "e.yaml: --export: unknown format 'trt'"),
        (["--export", "trtllm"], "trtllm: --export: expected FORMAT=PATH"),
        (["--export", "sglang-pt={w}/m.json"], "m.json: --export: sglang-pt must be named *.pt"),
        (["--export", "vllm={w}/nodir/v.json"], "--export: directory"),
        (["--export", "vllm={w}/p.yaml"], "p.yaml: --export vllm="),  # the same file as -o
        (["--current", "{w}/v.json"], "v.json: format: vLLM has no placement file"),
        (["--current", "{w}/odd.yaml"], "odd.yaml: format: not a placement moesim reads"),
        (
            ["--current", "{w}/m.json"],
            "m.json: physical_to_logical_map: 72 physical experts, but this plan has 64 experts + 0 redundant = 64",
        ),
    ],
)
def test_export_and_current_bad_input_one_line_exit_2_nothing_written(tmp_path, extra, message) -> None:
    (tmp_path / "v.json").write_text('{"window_size": 1000, "num_redundant_experts": 8}')
    (tmp_path / "odd.yaml").write_text("layers: 3\n")
    (tmp_path / "m.json").write_text(json.dumps({"physical_to_logical_map": [list(range(64)) + list(range(8))] * 16}))
    before = sorted(tmp_path.iterdir())
    r = _run(*OLMOE_DGX, "-o", str(tmp_path / "p.yaml"), *[a.replace("{w}", str(tmp_path)) for a in extra])
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moesim: error:") and message in lines[0], r.stderr
    assert sorted(tmp_path.iterdir()) == before

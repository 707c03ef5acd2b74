"""Values out of range or of the wrong type, through the real CLI entry point: one line on stderr naming the file
and the field, exit 2, nothing written (issue 15: each used to end in a traceback, or in a silent default)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.cli_harness import PLAN, ROOT, SYNTH, TINY_KERNEL, assert_one_line_error, file_hashes, run_cli


def _mutated(src: Path, dst: Path, old: str, new: str) -> Path:
    text = src.read_text()
    assert old in text, old
    dst.write_text(text.replace(old, new, 1))
    return dst


def _json(path: Path, doc) -> Path:
    import json

    path.write_text(json.dumps(doc))
    return path


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
        code, _, err = run_cli(
            [*PLAN, "--model", "olmoe-1b-7b", "--trace", work / "t.npz", "-o", work / "p.yaml"], capsys
        )
        assert code == 0, err
    # the four placement cases run the same command on a broken copy q.yaml of plan's p.yaml
    simulate_q = ["simulate", "--model", "olmoe-1b-7b", "--cluster", "dgx-h100", "--trace", work / "t.npz"]
    simulate_q += ["--placement", work / "q.yaml"]
    native = None
    if case in ("version", "counts_inf"):
        code, _, err = run_cli(["trace", "convert", work / "t.npz", work / "n.json"], capsys)
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
            simulate_q,
            "q.yaml: layers[0]: layer: expected",
        ),
        "placement_expert": (
            simulate_q,
            "q.yaml: layers[0]: gpus[0][0]:",
        ),
        "placement_inf": (
            simulate_q,
            "q.yaml: layers[0]: gpus[0][0]:",
        ),
        "placement_gpus": (
            simulate_q,
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
    before = file_hashes(work)
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, needle)
    assert file_hashes(work) == before


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
            [*TINY_KERNEL, "--ms", "2"]
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
    before = file_hashes(work)
    code, out, err = run_cli([str(a).format(work=work) for a in args], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert file_hashes(work) == before  # nothing written

"""``moesim trace``: inspect, convert and synthesise routing traces."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from cli.options import dedup_ranks_option

INSPECT_EXAMPLE = "moesim trace inspect profiles/traces/olmoe_c4.npz --json"
CONVERT_EXAMPLE = "moesim trace convert expert_distribution_recorder_1.pt dsv3.npz --model deepseek-v3"
SYNTH_EXAMPLE = "moesim trace synth --model deepseek-v3 --tokens 524288 --skew zipf:1.2 -o dsv3_zipf.npz"
SUCCESSORS = 8  # "top-8 successors": concentration measure of the issue, independent of the model's top-k
# `trace synth` keeps per-token ids by default up to this many (tokens x layers x top_k). A limit we chose, not a
# measured one: 5e7 int32 ids are 200 MB, and drawing them at DeepSeek-V3 shape (58 layers, top-8: 107,759 tokens)
# takes about 30 s at the measured 0.2-0.27 ms per token (synthetic_trace, zipf:1.2, OMP_NUM_THREADS=1 on a shared
# 2-core machine: 8192 tokens in 1.7 s in moesim/traces/synthetic.py's run, 2.1-2.2 s and 32768 in 9.2 s in
# issue 16's review).
MAX_DEFAULT_TOPK_IDS = 50_000_000


def _load_model(slug: str | None) -> Any:
    if slug is None:
        return None
    from moesim.specs import load_model

    return load_model(slug)


def inspect_trace(trace: Any, top: int = 5) -> dict[str, Any]:
    """Summary of a trace as a JSON-ready dict: per recorded layer tokens, max/mean load, coefficient of
    variation (std/mean over experts), hottest experts; per layer pair the share of (token, rank) pairs whose
    next-layer expert is among the 8 most frequent successors of their expert, and that share if the layers
    were independent."""
    from moesim.traces.trace import top_successor_share

    st = trace.load_stats()
    counts = trace.counts
    total = counts.sum(axis=1)
    order = (-counts).argsort(axis=1, kind="stable")[:, :top]
    layers = []
    for li, layer in enumerate(trace.layers):  # loop over layers (a handful), not tokens
        layers.append(
            {
                "layer": layer,
                "tokens": trace.num_tokens,
                "assignments": int(total[li]),
                "max": int(counts[li].max()),
                "min": int(counts[li].min()),
                "mean": float(st["mean"][li]),
                "max_over_mean": float(st["max_over_mean"][li]),
                "cv": float(st["cv"][li]),
                "idle_experts": int((counts[li] == 0).sum()),
                "hottest": [
                    {
                        "expert": int(e),
                        "count": int(counts[li, e]),
                        "share": float(counts[li, e] / total[li]) if total[li] else 0.0,
                    }
                    for e in order[li]
                ],
            }
        )
    doc: dict[str, Any] = {
        "model": trace.model,
        "num_experts": trace.num_experts,
        "top_k": trace.top_k,
        "num_tokens": trace.num_tokens,
        "layers": layers,
        "source": trace.source,
        "has_topk_ids": trace.topk_ids is not None,
        "transitions": None,
    }
    if trace.transitions is not None and trace.num_layers > 1:
        share, ind = top_successor_share(trace.transitions, SUCCESSORS)
        doc["transitions"] = [
            {"from_layer": a, "to_layer": b, "top8_successor_share": float(s), "independent_top8_share": float(i)}
            for a, b, s, i in zip(trace.layers[:-1], trace.layers[1:], share, ind)
        ]
    return doc


def _print_inspect(doc: dict[str, Any], path: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    title = (
        f"{path}: model {doc['model'] or '?'}, {doc['num_experts']} experts, top-{doc['top_k']}, "
        f"{doc['num_tokens']:,} tokens per layer"
    )
    table = Table(title=title)
    # tokens per layer are the same for every layer: in the title, so the table fits 80 columns
    for col in ("layer", "max", "mean", "max/mean", "CV", "idle"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("hottest expert:share", no_wrap=True)
    for row in doc["layers"]:
        hot = " ".join(f"{h['expert']}:{100 * h['share']:.1f}%" for h in row["hottest"])
        table.add_row(
            str(row["layer"]),
            f"{row['max']:,}",
            f"{row['mean']:,.0f}",
            f"{row['max_over_mean']:.2f}",
            f"{row['cv']:.3f}",
            str(row["idle_experts"]),
            hot,
        )
    console.print(table)
    if doc["transitions"]:
        t2 = Table(
            title=f"transitions (rank-paired): share of tokens whose next expert is among the top-{SUCCESSORS} "
            "successors of their expert"
        )
        for col in ("from layer", "to layer", f"top-{SUCCESSORS} share", "if independent"):
            t2.add_column(col, justify="right")
        for row in doc["transitions"]:
            t2.add_row(
                str(row["from_layer"]),
                str(row["to_layer"]),
                f"{row['top8_successor_share']:.3f}",
                f"{row['independent_top8_share']:.3f}",
            )
        console.print(t2)
    console.print(f"source: {doc['source']}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    trace_app = typer.Typer(
        help=f"Routing traces: inspect, convert, synthesise.\n\nExample: {INSPECT_EXAMPLE}", no_args_is_help=True
    )
    app.add_typer(trace_app, name="trace")

    @trace_app.command(
        "inspect",
        help=f"Per-layer load and transition concentration of a trace.\n\nExample: {INSPECT_EXAMPLE}",
        epilog=f"Example: {INSPECT_EXAMPLE}",
    )
    def inspect(
        file: str = typer.Argument(
            ...,
            help="Trace file (native .npz/JSON, OLMoE JSON, SGLang .pt, vLLM .npy or "
            "a directory of them) or a shipped trace name such as olmoe_c4.",
        ),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of tables."),
        model: str = typer.Option(
            None,
            "--model",
            help="Model slug or YAML: checks the trace against it and "
            "supplies what the file lacks (top-k of SGLang stat dumps).",
        ),
        top: int = typer.Option(3, "--top", min=1, help="How many hottest experts to list per layer."),
        dedup_ranks: bool = dedup_ranks_option(),
    ) -> None:
        from moesim.traces.formats import load_trace
        from moesim.traces.shipped import resolve_trace

        path = resolve_trace(file)
        trace = load_trace(path, model=_load_model(model), dedup_ranks=dedup_ranks)
        doc = inspect_trace(trace, top=top)
        doc["file"] = str(path)
        if as_json:
            print(json.dumps(doc))
        else:
            _print_inspect(doc, str(path))

    @trace_app.command(
        "convert",
        help=f"Convert any supported trace to the native format (.npz, or .json by "
        f"suffix).\n\nExample: {CONVERT_EXAMPLE}",
        epilog=f"Example: {CONVERT_EXAMPLE}",
    )
    def convert(
        src: str = typer.Argument(..., help="Input trace (any supported format)."),
        dst: Path = typer.Argument(..., help="Output file, .npz (default) or .json."),
        model: str = typer.Option(None, "--model", help="Model slug or YAML to check against and fill in."),
        drop_topk_ids: bool = typer.Option(False, "--drop-topk-ids", help="Keep counts and transitions only."),
        dedup_ranks: bool = dedup_ranks_option(),
    ) -> None:
        from moesim.fileio import check_outputs
        from moesim.traces.formats import load_trace
        from moesim.traces.native import save_trace
        from moesim.traces.shipped import resolve_trace

        check_outputs({"DST": dst}, {"SRC": src, "--model": model})
        trace = load_trace(resolve_trace(src), model=_load_model(model), dedup_ranks=dedup_ranks)
        if drop_topk_ids:
            trace = trace.without_topk_ids()
        save_trace(trace, dst)
        print(f"wrote {dst}: {trace.model or '?'}, {trace.num_layers} layers, {trace.num_tokens:,} tokens")

    @trace_app.command(
        "synth", help=f"Write a seeded synthetic trace.\n\nExample: {SYNTH_EXAMPLE}", epilog=f"Example: {SYNTH_EXAMPLE}"
    )
    def synth(
        model: str = typer.Option(..., "--model", help="Model slug or YAML (experts, top-k, MoE layers)."),
        tokens: int = typer.Option(..., "--tokens", min=1, help="Tokens per layer."),
        skew: str = typer.Option("zipf:1.2", "--skew", help="zipf:ALPHA, dirichlet:ALPHA or uniform."),
        affinity: float = typer.Option(None, "--affinity", help="Cross-layer affinity in [0, 1] (default 0)."),
        seed: int = typer.Option(None, "--seed", help="Random seed (default 0)."),
        topk_ids: bool = typer.Option(
            None,
            "--topk-ids/--counts-only",
            help=f"Keep per-token ids (default: only when tokens x layers x top_k <= {MAX_DEFAULT_TOPK_IDS:,}).",
        ),
        out: Path = typer.Option(..., "-o", "--output", help="Output .npz (or .json)."),
    ) -> None:
        from moesim.fileio import check_outputs
        from moesim.traces.native import save_trace
        from moesim.traces.synthetic import parse_synthetic, synthetic_trace

        check_outputs({"-o": out}, {"--model": model})
        spec = _load_model(model)
        params = parse_synthetic(skew)
        if affinity is not None:
            params["affinity"] = affinity
        if seed is not None:
            params["seed"] = seed
        if topk_ids is None:
            topk_ids = tokens * spec.num_moe_layers * spec.top_k <= MAX_DEFAULT_TOPK_IDS
        trace = synthetic_trace(spec, tokens, with_topk_ids=topk_ids, **params)
        save_trace(trace, out)
        print(f"wrote {out}: {trace.source}")

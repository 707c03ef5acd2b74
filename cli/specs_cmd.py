"""``moesim models``, ``moesim gpus``, ``moesim clusters``: what ships in ``profiles/``, as tables or JSON."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import typer

MODELS_EXAMPLE = "moesim models --json"
GPUS_EXAMPLE = "moesim gpus"
CLUSTERS_EXAMPLE = "moesim clusters --path profiles/clusters/h800-2x8-ib400.yaml"

_PATH_HELP = "A YAML file to load and show instead of the shipped ones (errors name the file and field)."


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2))


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*r)
    Console().print(table)


def _fmt(x: float) -> str:
    return f"{x:g}"


def models_cmd(
    path: str = typer.Option(None, "--path", help=_PATH_HELP),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """List the shipped MoE models (numbers from each model's published config).

    Example: moesim models --json
    """
    from moesim.specs import list_models, load_model

    specs = [load_model(path)] if path else [load_model(s) for s in list_models()]
    if as_json:
        _print_json(
            [
                {
                    **dataclasses.asdict(m),
                    "num_moe_layers": m.num_moe_layers,
                    "expert_params": m.expert_params,
                }
                for m in specs
            ]
        )
        return
    rows = []
    for m in specs:
        moe = f"{m.num_moe_layers}/{m.num_layers}"
        groups = f"{m.n_group}/{m.topk_group}" if m.n_group > 1 else "-"
        shared = (
            f"{m.num_shared_experts} x {m.shared_expert_intermediate_size // max(m.num_shared_experts, 1)}"
            if m.num_shared_experts
            else "-"
        )
        rows.append(
            [
                m.slug,
                moe,
                str(m.hidden_size),
                str(m.moe_intermediate_size),
                str(m.num_experts),
                str(m.top_k),
                shared,
                groups,
                m.score_function,
                f"{m.expert_params / 1e6:.1f}M",
            ]
        )
    _table(
        "MoE models",
        [
            "slug",
            "MoE/layers",
            "hidden",
            "expert inter",
            "experts",
            "top-k",
            "shared",
            "groups",
            "score",
            "params/expert",
        ],
        rows,
    )


def gpus_cmd(
    path: str = typer.Option(None, "--path", help=_PATH_HELP),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """List the shipped GPUs (datasheet peaks and default efficiencies).

    Example: moesim gpus
    """
    from moesim.specs import list_gpus, load_gpu

    specs = [load_gpu(path)] if path else [load_gpu(s) for s in list_gpus()]
    if as_json:
        _print_json([dataclasses.asdict(g) for g in specs])
        return
    rows = [
        [
            g.slug,
            _fmt(g.bf16_tflops),
            _fmt(g.fp8_tflops),
            _fmt(g.hbm_gb),
            _fmt(g.hbm_bw_gb_s),
            _fmt(g.nvlink_bw_gb_s),
            str(g.sm_count),
            f"{_fmt(g.smem_per_sm_kb)}/{_fmt(g.smem_per_block_kb)}",
            _fmt(g.l2_mb),
            f"{g.gemm_efficiency:.3f}",
            f"{g.hbm_efficiency:.3f}",
        ]
        for g in specs
    ]
    _table(
        "GPUs (dense peaks; NVLink per direction)",
        [
            "slug",
            "bf16 TFLOPS",
            "fp8 TFLOPS",
            "HBM GB",
            "HBM GB/s",
            "NVLink GB/s",
            "SMs",
            "smem KB SM/block",
            "L2 MB",
            "gemm eff",
            "hbm eff",
        ],
        rows,
    )


def _cluster_doc(c: Any) -> dict[str, Any]:
    doc = dataclasses.asdict(c)
    doc["gpu"] = c.gpu.slug
    doc.update(num_gpus=c.num_gpus, gpus_per_node=c.gpus_per_node, num_nodes=c.num_nodes)
    return doc


def clusters_cmd(
    path: str = typer.Option(None, "--path", help=_PATH_HELP),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """List the shipped clusters (per-level bandwidth per GPU per direction, NIC layout, fabric).

    Example: moesim clusters --path profiles/clusters/h800-2x8-ib400.yaml
    """
    from moesim.specs import list_clusters, load_cluster

    specs = [load_cluster(path)] if path else [load_cluster(s) for s in list_clusters()]
    if as_json:
        _print_json([_cluster_doc(c) for c in specs])
        return
    rows = []
    for c in specs:
        intra = c.levels[0]
        inter = c.levels[1] if len(c.levels) > 1 else None
        rows.append(
            [
                c.slug,
                c.gpu.slug,
                f"{c.num_nodes}x{c.gpus_per_node}",
                f"{intra.kind} {_fmt(intra.bw_gb_s)} ({intra.efficiency[-1][1]:.2f})",
                f"{inter.kind} {_fmt(inter.bw_gb_s)} ({inter.efficiency[-1][1]:.2f})" if inter else "-",
                f"{c.nic.layout} {c.nic.nics_per_node}x{_fmt(c.nic.bw_gb_s)}" if c.nic else "-",
                f"{c.fabric.kind} {_fmt(c.fabric.oversubscription)}:1" if c.fabric else "-",
            ]
        )
    _table(
        "Clusters (GB/s per GPU per direction; large-message efficiency in brackets)",
        ["slug", "gpu", "nodes x gpus", "intra-node", "inter-node", "NICs", "fabric"],
        rows,
    )


def register(app: typer.Typer) -> None:
    """Add ``models``, ``gpus`` and ``clusters`` to the ``moesim`` app."""
    app.command(
        "models", help=f"List the shipped MoE models.\n\nExample: {MODELS_EXAMPLE}", epilog=f"Example: {MODELS_EXAMPLE}"
    )(models_cmd)
    app.command("gpus", help=f"List the shipped GPUs.\n\nExample: {GPUS_EXAMPLE}", epilog=f"Example: {GPUS_EXAMPLE}")(
        gpus_cmd
    )
    app.command(
        "clusters",
        help=f"List the shipped clusters.\n\nExample: {CLUSTERS_EXAMPLE}",
        epilog=f"Example: {CLUSTERS_EXAMPLE}",
    )(clusters_cmd)

"""Reader of AIConfigurator's measured tables (PyPI ``aiconfigurator-core``, Apache-2.0) into moesim records.

The package ships, per GPU, parquet tables under ``aiconfigurator_core/systems/data/<gpu>/``. What each column
means is defined by the collector that wrote it (repository ai-dynamo/aiconfigurator, ``collector/``); the
facts this reader relies on, per table:

``moe/<framework>/<version>/moe_perf.parquet`` (``collector/vllm/collect_moe.py``,
``collector/sglang/collect_moe.py``): one row per (model shape, ``num_tokens``, ``moe_tp_size``,
``moe_ep_size``, ``distribution``); ``num_tokens`` are the tokens of one rank; ``inter_size`` is the model's
per-expert intermediate size before the TP split; ``latency`` is in **ms**, the CUDA-graph time of the whole
fused-MoE forward (top-k routing included, the gate GEMM excluded). EP is emulated on one rank that routes all
tokens over all E experts and keeps experts ``[0, E/ep)`` local. vLLM's collector gives that rank every token,
so the kernels walk every token's ``k`` rows (moesim's ``allgather`` EP mode; ``ep_emulation`` ``all_tokens``);
SGLang's (``build_rank0_workloads``) gives it only the tokens with at least one local expert, their remote slots
as id -1, with no expert map (``ep_emulation`` ``local_tokens``). ``distribution`` is ``balanced`` or ``power_law_<a>``
(:mod:`moesim.traces.collector_routing`).

``comm/sglang/<v>/wideep_deepep_normal_perf.parquet`` (``collector/sglang/collect_deepep*.py``): DeepEP normal
(intranode, ``node_num`` 1 = 8 ranks) ``dispatch_transmit_us`` / ``combine_transmit_us`` in **us** for
``num_token`` tokens per rank, with ``dispatch_sms`` / ``combine_sms`` SMs. ``wideep_deepep_ll_perf.parquet``:
DeepEP low-latency ``dispatch_avg_t_us`` / ``combine_avg_t_us`` in us.

``comm/nccl/<v>/nccl_perf.parquet`` (``collector/collect_nccl.py``, nccl-tests): ``message_size`` is in
**elements** of ``nccl_dtype`` (half: 2 bytes, int8: 1), ``latency`` in **ms**, out-of-place.

Every record carries its provenance (package and version, table path, framework and version, kernel source,
device, the table's ``collection_meta.yaml`` provenance and date when it has one). Rows moesim cannot model are
returned as skipped with the reason, never dropped silently. Whether an expert MLP is gated (SwiGLU) or not
(``relu2``), and the MoE hidden size of latent-MoE models, come from the package's own model configs
(``aiconfigurator_core/model_configs/``), matched by shape.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from moesim.errors import MoesimError, field_error

__all__ = ["TABLE_KINDS", "MeasuredTable", "device_gpu", "read_table"]

PACKAGE = "aiconfigurator-core"
TABLE_KINDS = {
    "moe_perf.parquet": "fused_moe",
    "wideep_deepep_normal_perf.parquet": "deepep_normal",
    "wideep_deepep_ll_perf.parquet": "deepep_ll",
    "nccl_perf.parquet": "nccl",
}
MOE_COLUMNS = (
    "framework", "version", "device", "kernel_source", "moe_dtype", "num_tokens", "hidden_size", "inter_size",
    "topk", "num_experts", "moe_tp_size", "moe_ep_size", "distribution", "latency",
)  # fmt: skip
DEEPEP_NORMAL_COLUMNS = (
    "framework", "version", "device", "node_num", "hidden_size", "num_token", "num_topk", "num_experts",
    "dispatch_sms", "dispatch_transmit_us", "combine_sms", "combine_transmit_us",
)  # fmt: skip
DEEPEP_LL_COLUMNS = (
    "framework", "version", "device", "node_num", "hidden_size", "num_token", "num_topk", "num_experts",
    "dispatch_avg_t_us", "combine_avg_t_us",
)  # fmt: skip
NCCL_COLUMNS = ("version", "device", "op_name", "nccl_dtype", "num_gpus", "message_size", "latency")
NCCL_DTYPE_BYTES = {"half": 2, "int8": 1, "float": 4, "bfloat16": 2}
# BF16 Triton fused-MoE kernels this model describes (kernel_source values of the moe tables).
BF16_TRITON_SOURCES = {
    "vllm_unquantizedfusedmoe_triton_tritonexperts": "vllm",
    "sglang_fused_moe_triton": "sglang",
    "vllm_fused_moe": "vllm",  # the same Triton kernel in the older (vLLM 0.14.0, A100) tables
}
# SGLang's collector runs these shapes through the raw ``fused_moe`` path, which for EP > 1 maps the rows of
# non-local experts to local expert 0 (they do GEMM work); moesim's allgather mode does not model that.
# Shapes as (hidden, inter, experts, top_k): Mixtral 8x7B / 8x22B, Gemma-4 26B-A4B, Llama-4 Scout.
SGLANG_RAW_PATH_SHAPES = {(4096, 14336, 8, 2), (6144, 16384, 8, 2), (2816, 704, 128, 8), (5120, 8192, 16, 1)}


@dataclass(frozen=True)
class MeasuredTable:
    """One table read: its records (moesim's measured-record schema, docs/ARCHITECTURE.md) and skipped rows."""

    path: str
    kind: str  # "fused_moe" | "deepep_normal" | "deepep_ll" | "nccl"
    provenance: dict[str, Any]
    records: list[dict[str, Any]]
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (row index in the table, reason)


def _require_pandas(path: str) -> Any:
    try:
        import pandas as pd
        import pyarrow  # noqa: F401 -- pandas needs it to read parquet; fail here with the extra's name
    except ImportError as exc:
        raise MoesimError(
            f"{path}: parquet: reading AIConfigurator tables needs pandas and pyarrow "
            f"({exc.name} is missing): pip install -e '.[measured]'"
        ) from None
    return pd


def _package_version() -> str | None:
    try:
        from importlib.metadata import version

        return version(PACKAGE)
    except Exception:  # not installed: the table was copied out of the wheel
        return None


def _collection_meta(path: Path) -> dict[str, Any]:
    """Provenance fields of the table's ``collection_meta.yaml`` (next to it), when there is one."""
    meta_file = path.parent / "collection_meta.yaml"
    if not meta_file.is_file():
        return {}
    import yaml

    try:
        meta = yaml.safe_load(meta_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    out: dict[str, Any] = {"collection_provenance": meta.get("provenance")}
    text = meta_file.read_text(encoding="utf-8")
    collected = meta.get("collected_at") or (meta.get("collection") or {}).get("collected_at")
    if collected is None:  # legacy tables: the latest dated note in the file's comments
        dates = re.findall(r"\b(20\d\d-\d\d-\d\d)\b", text)
        collected = max(dates) if dates else None
    out["collected"] = str(collected) if collected is not None else None
    return out


@lru_cache(maxsize=1)
def _model_shapes() -> dict[tuple[int, int, int, int], tuple[bool, tuple[str, ...]]]:
    """``(hidden, inter, experts, top_k) -> (gated, model names)`` from the package's model configs; the
    hidden size is the MoE's own (``moe_latent_size`` when the model projects into a latent space)."""
    try:
        import aiconfigurator_core
    except ImportError:
        return {}
    shapes: dict[tuple[int, int, int, int], tuple[bool, tuple[str, ...]]] = {}
    for f in sorted((Path(aiconfigurator_core.__file__).parent / "model_configs").glob("*_config.json")):
        try:
            cfg = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        cfg = cfg.get("text_config", cfg)
        hidden = cfg.get("moe_latent_size") or cfg.get("hidden_size")
        inter = cfg.get("moe_intermediate_size")
        experts = cfg.get("n_routed_experts") or cfg.get("num_experts") or cfg.get("num_local_experts")
        top_k = cfg.get("num_experts_per_tok") or cfg.get("top_k_experts")
        if not all(isinstance(v, int) for v in (hidden, inter, experts, top_k)):
            continue
        act = str(cfg.get("mlp_hidden_act") or cfg.get("hidden_act") or cfg.get("hidden_activation") or "")
        gated = act not in ("relu2",)  # relu2 experts have one up projection, no gate
        key = (hidden, inter, experts, top_k)
        old = shapes.get(key, (gated, ()))
        shapes[key] = (old[0] and gated, (*old[1], f.name.removesuffix("_config.json")))
    return shapes


@lru_cache(maxsize=1)
def _device_map() -> dict[str, str]:
    import yaml

    from moesim.specs import profiles_dir

    doc = yaml.safe_load((profiles_dir() / "measured" / "devices.yaml").read_text(encoding="utf-8"))
    return {str(k): str(v) for k, v in (doc.get("devices") or {}).items()}


def device_gpu(device: str) -> str | None:
    """The moesim GPU profile slug of a CUDA device name as the tables spell it (``NVIDIA H200``), or None."""
    return _device_map().get(device)


def _check_columns(path: str, df: Any, columns: Iterable[str]) -> None:
    for c in columns:
        if c not in df.columns:
            raise field_error(path, c, f"missing column (a {Path(path).name} table has {', '.join(columns)})")


def _check_positive(path: str, df: Any, column: str) -> None:
    values = np.asarray(df[column], dtype=np.float64)
    bad = ~(np.isfinite(values) & (values > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise field_error(path, column, f"row {i}: latency must be a positive number, got {values[i]!r}")


def _provenance(path: Path, df: Any, kind: str) -> dict[str, Any]:
    first = df.iloc[0] if len(df) else {}
    parts = path.parts
    rel = "/".join(parts[parts.index("data") + 1 :]) if "data" in parts else path.name
    prov = {
        "package": PACKAGE,
        "package_version": _package_version(),
        "table": rel,
        "kind": kind,
        "framework": str(first.get("framework", "")) if len(df) else None,
        "framework_version": str(first.get("version", "")) if len(df) else None,
        "device": str(first.get("device", "")) if len(df) else None,
    }
    prov.update(_collection_meta(path))
    return prov


def read_table(path: str | Path) -> MeasuredTable:
    """Read one AIConfigurator parquet table into moesim records.

    Raises:
        MoesimError: pandas/pyarrow missing (names the ``measured`` extra), an unknown table, a missing column,
            a non-positive latency: ``FILE: COLUMN: PROBLEM``.
    """
    p = Path(path)
    src = str(p)
    kind = TABLE_KINDS.get(p.name)
    if kind is None:
        raise field_error(src, "table", f"unknown AIConfigurator table (known: {', '.join(TABLE_KINDS)})")
    if not p.is_file():
        raise field_error(src, "table", "no such file")
    pd = _require_pandas(src)
    try:
        df = pd.read_parquet(p)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise field_error(src, "parquet", f"cannot read: {exc}") from None
    prov = _provenance(p, df, kind)
    reader = {"fused_moe": _moe, "deepep_normal": _deepep_normal, "deepep_ll": _deepep_ll, "nccl": _nccl}[kind]
    records, skipped = reader(src, df, prov)
    return MeasuredTable(src, kind, prov, records, skipped)


def _base(prov: dict[str, Any], i: int, device: str) -> dict[str, Any]:
    return {"schema": 1, "device_name": device, "gpu": device_gpu(device), "table": prov["table"], "row": i}


def _moe(src: str, df: Any, prov: dict[str, Any]) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    _check_columns(src, df, MOE_COLUMNS)
    _check_positive(src, df, "latency")
    shapes = _model_shapes()
    cols = {c: df[c].to_numpy() for c in MOE_COLUMNS}
    records: list[dict[str, Any]] = []
    skipped: list[tuple[int, str]] = []
    for i in range(len(df)):
        source = str(cols["kernel_source"][i])
        engine = BF16_TRITON_SOURCES.get(source)
        if engine is None or str(cols["moe_dtype"][i]) not in ("bfloat16", "float16"):
            skipped.append((i, f"kernel {source} ({cols['moe_dtype'][i]}): only the BF16 Triton fused MoE is modelled"))
            continue
        h, inter, e, k = (int(cols[c][i]) for c in ("hidden_size", "inter_size", "num_experts", "topk"))
        tp, ep = int(cols["moe_tp_size"][i]), int(cols["moe_ep_size"][i])
        if engine == "sglang" and ep > 1 and (h, inter, e, k) in SGLANG_RAW_PATH_SHAPES:
            skipped.append((i, "SGLang raw fused_moe path with EP > 1 computes non-local rows on expert 0"))
            continue
        if e % ep or inter % tp:
            skipped.append((i, f"E={e} or I={inter} does not split over ep={ep}, tp={tp}"))
            continue
        gated, models = shapes.get((h, inter, e, k), (True, ()))
        rec = _base(prov, i, str(cols["device"][i]))
        rec.update(
            kind="fused_moe",
            framework=str(cols["framework"][i]),
            framework_version=str(cols["version"][i]),
            kernel_source=source,
            dtype="bf16",
            tokens=int(cols["num_tokens"][i]),
            hidden=h,
            intermediate=inter,
            num_experts=e,
            top_k=k,
            tp=tp,
            ep=ep,
            distribution=str(cols["distribution"][i]),
            gated=bool(gated),
            models=list(models),
            ep_mode="allgather",
            # vLLM's collector gives rank 0 every token; SGLang's only those with a local expert (module docstring)
            ep_emulation="local_tokens" if engine == "sglang" and ep > 1 else "all_tokens",
            median_us=float(cols["latency"][i]) * 1e3,
        )
        records.append(rec)
    return records, skipped


def _deepep(
    src: str, df: Any, prov: dict[str, Any], kind: str, phases: dict[str, str], sms: dict[str, str] | None
) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    for col in phases.values():
        _check_positive(src, df, col)
    records: list[dict[str, Any]] = []
    skipped: list[tuple[int, str]] = []
    arr = {c: df[c].to_numpy() for c in df.columns}
    for i in range(len(df)):
        nodes = int(arr["node_num"][i])
        if nodes != 1:
            skipped.append((i, f"node_num={nodes}: only intranode (one 8-GPU node) DeepEP is modelled"))
            continue
        for phase, col in phases.items():
            rec = _base(prov, i, str(arr["device"][i]))
            rec.update(
                kind=kind,
                phase=phase,
                framework=str(arr["framework"][i]),
                framework_version=str(arr["version"][i]),
                num_ranks=8 * nodes,
                tokens=int(arr["num_token"][i]),
                hidden=int(arr["hidden_size"][i]),
                top_k=int(arr["num_topk"][i]),
                num_experts=int(arr["num_experts"][i]),
                median_us=float(arr[col][i]),
            )
            if sms is not None:
                rec["num_sms"] = int(arr[sms[phase]][i])
            records.append(rec)
    return records, skipped


def _deepep_normal(src: str, df: Any, prov: dict[str, Any]) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    _check_columns(src, df, DEEPEP_NORMAL_COLUMNS)
    phases = {"dispatch": "dispatch_transmit_us", "combine": "combine_transmit_us"}
    return _deepep(src, df, prov, "deepep_normal", phases, {"dispatch": "dispatch_sms", "combine": "combine_sms"})


def _deepep_ll(src: str, df: Any, prov: dict[str, Any]) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    _check_columns(src, df, DEEPEP_LL_COLUMNS)
    phases = {"dispatch": "dispatch_avg_t_us", "combine": "combine_avg_t_us"}
    return _deepep(src, df, prov, "deepep_ll", phases, None)


def _nccl(src: str, df: Any, prov: dict[str, Any]) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    _check_columns(src, df, NCCL_COLUMNS)
    _check_positive(src, df, "latency")
    records: list[dict[str, Any]] = []
    skipped: list[tuple[int, str]] = []
    arr = {c: df[c].to_numpy() for c in NCCL_COLUMNS}
    for i in range(len(df)):
        dtype = str(arr["nccl_dtype"][i])
        if dtype not in NCCL_DTYPE_BYTES:
            skipped.append((i, f"nccl_dtype {dtype!r}: element size unknown"))
            continue
        rec = _base(prov, i, str(arr["device"][i]))
        rec.update(
            kind="nccl",
            op=str(arr["op_name"][i]),
            nccl_version=str(arr["version"][i]),
            dtype=dtype,
            num_gpus=int(arr["num_gpus"][i]),
            message_bytes=int(arr["message_size"][i]) * NCCL_DTYPE_BYTES[dtype],
            median_us=float(arr["latency"][i]) * 1e3,
        )
        records.append(rec)
    return records, skipped

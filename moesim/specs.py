"""Model, GPU and cluster specs: frozen dataclasses loaded from ``profiles/{models,gpus,clusters}/*.yaml``.

This module is the one place where spec files are parsed and validated. Every problem becomes a
:class:`moesim.errors.SpecError` with the one-line message ``FILE: FIELD: PROBLEM`` (malformed YAML, a missing,
unknown or mistyped field, a negative bandwidth, ``top_k > num_experts``, ``n_group`` not dividing the experts,
MoE layers out of range ...).

Names: every loader takes a lower-case slug (``deepseek-v3``, ``h100-sxm``, ``dgx-h100``) or a path to a YAML
file. An unknown slug lists the shipped ones.

Units live in the field names: ``_gb_s`` gigabytes (1e9 bytes) per second, ``_tflops`` 1e12 FLOP/s, ``_gb``
1e9 bytes, ``_kb`` 1024 bytes, ``_mb`` 1e6 bytes (L2 as NVIDIA quotes it), ``_ns`` nanoseconds.

Which layers are MoE is written in the YAML as the rule the model's config uses and turned into a tuple here:

- ``moe_layers: all``
- ``moe_layers: {first_k_dense_replace: 3, moe_layer_freq: 1}`` (DeepSeek: layer i is MoE when
  ``i >= first_k_dense_replace and i % moe_layer_freq == 0``)
- ``moe_layers: {every: 2, offset: 1}`` (layer i is MoE when ``i % every == offset``; Switch Transformer)
- ``moe_layers: [3, 4, 5]`` (explicit 0-based indices)

Example::

    >>> from moesim.specs import load_model
    >>> m = load_model("deepseek-v3")
    >>> (m.num_layers, m.num_moe_layers, m.moe_layers[0])
    (61, 58, 3)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from moesim.errors import SpecError, field_error
from moesim.schema import Fields

__all__ = [
    "ClusterSpec",
    "FabricSpec",
    "GPUSpec",
    "LinkLevel",
    "ModelSpec",
    "NicSpec",
    "PcieSpec",
    "list_clusters",
    "list_gpus",
    "list_models",
    "load_cluster",
    "load_gpu",
    "load_model",
    "profiles_dir",
    "sglang_configs_dir",
    "vllm_configs_dir",
]

SCORE_FUNCTIONS = ("softmax", "sigmoid")
LEVEL_KINDS = ("nvswitch", "nvlink", "pcie", "ib", "roce")
NIC_LAYOUTS = ("rail", "shared")
FABRIC_KINDS = ("fat-tree", "none")

# Sizes moesim accepts: limits, not measurements, far above the shipped models and clusters and low enough that
# their arrays fit in memory. Per-layer transitions are [E, E] float64: 8,192 experts make 512 MB (DeepSeek-V3
# has 256, Kimi K2 384); 1,024 hidden layers (DeepSeek-V3: 61); widths up to 2^20 (DeepSeek-V3 hidden: 7,168);
# 2^17 GPUs in one cluster, checked per level and for their product (the largest shipped profile has 64; the
# placement benchmark scales one to 256).
MAX_EXPERTS = 8192
MAX_LAYERS = 1024
MAX_WIDTH = 1 << 20
MAX_GPUS = 1 << 17
# Tokens one GPU routes in one step (--tokens-per-gpu, a scenario's tokens_per_gpu): 2^24 = 16.8 M, a limit far
# above any batch (serving steps and prefill chunks are 1-64 k tokens per GPU, training micro-batches up to a few
# 100 k); a larger value is a typo (10^30 used to overflow the simulator's int64 counts with a warning).
MAX_TOKENS_PER_GPU = 1 << 24


# --------------------------------------------------------------------------------------------- dataclasses
@dataclass(frozen=True)
class ModelSpec:
    """An MoE transformer as far as the cost model needs it (numbers from the model's published config)."""

    slug: str
    name: str
    source: str
    num_layers: int  # all hidden layers (dense + MoE)
    moe_layers: tuple[int, ...]  # 0-based indices of the MoE layers, e.g. DeepSeek-V3: 3..60
    hidden_size: int
    moe_intermediate_size: int  # per routed expert
    dense_intermediate_size: int  # MLP of dense layers (0 if none)
    num_experts: int  # routed experts
    top_k: int
    num_shared_experts: int
    shared_expert_intermediate_size: int  # total for all shared experts
    n_group: int  # group-limited routing; 1 when none
    topk_group: int  # groups kept per token; 1 when none
    score_function: str  # "softmax" | "sigmoid"
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int

    @property
    def num_moe_layers(self) -> int:
        """Number of MoE layers."""
        return len(self.moe_layers)

    @property
    def expert_params(self) -> int:
        """Parameters of one routed expert: ``3 * hidden * moe_intermediate`` (gate, up, down projections)."""
        return 3 * self.hidden_size * self.moe_intermediate_size

    def expert_weight_bytes(self, dtype_bytes: float = 2) -> float:
        """Bytes of one routed expert's weights at ``dtype_bytes`` per parameter (2 = bf16, 1 = fp8)."""
        return float(self.expert_params) * float(dtype_bytes)


@dataclass(frozen=True)
class GPUSpec:
    """One GPU: datasheet peaks plus the default fractions of peak the cost model assumes before calibration."""

    slug: str
    name: str
    source: str
    bf16_tflops: float  # dense peak
    fp8_tflops: float  # dense peak (0 when the GPU has no FP8 tensor cores)
    hbm_gb: float
    hbm_bw_gb_s: float
    nvlink_bw_gb_s: float  # per direction, whole GPU (0 = no NVLink)
    sm_count: int
    smem_per_sm_kb: float
    smem_per_block_kb: float
    l2_mb: float
    gemm_efficiency: float  # default achievable fraction of peak (before calibration)
    hbm_efficiency: float  # default achievable fraction of HBM bandwidth


@dataclass(frozen=True)
class LinkLevel:
    """One dimension of the cluster, ASTRA-sim style, innermost first."""

    kind: str  # "nvswitch" | "nvlink" | "pcie" | "ib" | "roce"
    size: int  # GPUs (level 0) or nodes (level 1) in this dimension
    bw_gb_s: float  # per GPU, per direction
    latency_ns: float
    efficiency: tuple[tuple[float, float], ...]  # (message_bytes, fraction of bw) points, log-interpolated


@dataclass(frozen=True)
class NicSpec:
    """How GPUs reach the inter-node network."""

    layout: str  # "rail" (one NIC per GPU, rail-optimised) | "shared" (gpus_per_nic share one)
    nics_per_node: int
    bw_gb_s: float  # per NIC, per direction
    gpus_per_nic: int


@dataclass(frozen=True)
class FabricSpec:
    """The inter-node fabric."""

    kind: str  # "fat-tree" | "none"
    oversubscription: float  # 1.0 = full bisection; 2.0 = leaf uplinks carry half the downlink bandwidth


@dataclass(frozen=True)
class PcieSpec:
    """The PCIe tree of a node whose GPUs talk over PCIe (no NVLink): GPUs sit behind PCIe switches whose
    uplinks to the host root complex are shared by ``gpus_per_switch`` GPUs."""

    gpus_per_switch: int
    switch_uplink_gb_s: float  # per switch uplink, per direction


@dataclass(frozen=True)
class ClusterSpec:
    """A cluster: GPUs, per-dimension link levels, NIC layout and fabric."""

    slug: str
    name: str
    source: str
    gpu: GPUSpec
    levels: tuple[LinkLevel, ...]  # [intra-node, inter-node]; a single-node cluster has one level
    nic: NicSpec | None
    fabric: FabricSpec | None
    pcie: PcieSpec | None = None  # only for PCIe-connected nodes

    @property
    def gpus_per_node(self) -> int:
        return self.levels[0].size

    @property
    def num_nodes(self) -> int:
        return self.levels[1].size if len(self.levels) > 1 else 1

    @property
    def num_gpus(self) -> int:
        return self.gpus_per_node * self.num_nodes

    def with_nodes(self, num_nodes: int) -> ClusterSpec:
        """The same cluster with another node count; one node keeps only the intra-node level."""
        if num_nodes == 1:
            return replace(self, slug=f"{self.slug}@1node", levels=self.levels[:1], nic=None, fabric=None)
        if len(self.levels) < 2:
            raise field_error(self.slug, "levels", f"{num_nodes} nodes asked of a single-node cluster")
        inter = replace(self.levels[1], size=num_nodes)
        return replace(self, slug=f"{self.slug}@{num_nodes}nodes", levels=(self.levels[0], inter))

    def efficiency(self, level: int, message_bytes: float | np.ndarray) -> float | np.ndarray:
        """Fraction of ``levels[level].bw_gb_s`` reached at a message size, interpolated linearly in
        ``log(message_bytes)`` between the level's points and held constant beyond the first and last."""
        pts = self.levels[level].efficiency
        xs = np.log(np.array([p[0] for p in pts], dtype=np.float64))
        ys = np.array([p[1] for p in pts], dtype=np.float64)
        msg = np.asarray(message_bytes, dtype=np.float64)
        out = np.interp(np.log(np.maximum(msg, 1.0)), xs, ys)
        if np.ndim(message_bytes) == 0:
            return float(out)
        return out


# --------------------------------------------------------------------------------------------- locating files
def vllm_configs_dir() -> Path | None:
    """The folder of vLLM's tuned fused-MoE config files: ``$MOESIM_VLLM_CONFIG_DIR`` when set, else the copy
    shipped in ``profiles/vllm_configs/``; None when neither is a folder."""
    env = os.environ.get("MOESIM_VLLM_CONFIG_DIR")
    for d in ([Path(env)] if env else []) + [profiles_dir() / "vllm_configs"]:
        if d.is_dir():
            return d
    return None


def sglang_configs_dir() -> Path | None:
    """The folder of SGLang's tuned fused-MoE config files (``triton_<version>/`` sub-folders):
    ``$MOESIM_SGLANG_CONFIG_DIR`` when set, else the copy shipped in ``profiles/sglang_configs/``; None when
    neither is a folder."""
    env = os.environ.get("MOESIM_SGLANG_CONFIG_DIR")
    for d in ([Path(env)] if env else []) + [profiles_dir() / "sglang_configs"]:
        if d.is_dir():
            return d
    return None


def profiles_dir() -> Path:
    """The shipped ``profiles/`` directory (package data of the installed ``profiles`` package)."""
    import profiles

    return Path(profiles.__file__).parent


def _list(kind: str) -> list[str]:
    return sorted(p.stem for p in (profiles_dir() / kind).glob("*.yaml"))


def list_models() -> list[str]:
    """Slugs of the shipped models."""
    return _list("models")


def list_gpus() -> list[str]:
    """Slugs of the shipped GPUs."""
    return _list("gpus")


def list_clusters() -> list[str]:
    """Slugs of the shipped clusters."""
    return _list("clusters")


def _is_file(path: Path, directory: bool = False) -> bool:
    """``path.is_file()`` (``is_dir()`` with ``directory``), False where the name cannot be a file (``OSError``:
    longer than the system's 255-byte file name limit; ``ValueError``: a NUL byte)."""
    try:
        return path.is_dir() if directory else path.is_file()
    except (OSError, ValueError):
        return False


def _resolve(kind: str, name_or_path: str | Path, base: Path | None = None) -> Path:
    """A shipped slug or a YAML path -> the file. ``base`` resolves relative paths named inside another file."""
    text = str(name_or_path)
    path = Path(text)
    shown = text if text.isprintable() else repr(text)  # a name with a newline must not split the message
    looks_like_path = path.suffix in (".yaml", ".yml") or "/" in text or "\\" in text
    if looks_like_path:
        for candidate in ([base / path] if base is not None and not path.is_absolute() else []) + [path]:
            if _is_file(candidate):
                return candidate
            if _is_file(candidate, directory=True):
                raise SpecError(f"{shown}: {kind[:-1]}: is a directory, not a YAML file")
        raise SpecError(f"{shown}: {kind[:-1]}: no such file")
    shipped = profiles_dir() / kind / f"{text}.yaml"
    if _is_file(shipped):
        return shipped
    if _is_file(path):  # a file without a .yaml suffix in the working directory
        return path
    known = ", ".join(_list(kind)) or "none"
    raise SpecError(f"{shown}: {kind[:-1]}: unknown slug (known: {known})")


def _read_yaml(path: Path) -> dict[str, Any]:
    from moesim.fileio import read_yaml

    shipped = Path(path).resolve().is_relative_to(profiles_dir().resolve())
    return read_yaml(path, shipped=shipped)  # type: ignore[return-value]  # mapping=True checks the top level


# --------------------------------------------------------------------------------------------- field checks
# typed field access lives in moesim.schema (one walker for every loader); the name here stays for this module
_Fields = Fields


def _moe_layers(f: _Fields, num_layers: int) -> tuple[int, ...]:
    rule = f.raw("moe_layers")
    key = "moe_layers"
    if rule == "all":
        layers = list(range(num_layers))
    elif isinstance(rule, list):
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in rule):
            raise f.err(key, f"expected a list of integer layer indices, got {rule!r}")
        layers = list(rule)
        if len(set(layers)) != len(layers):
            raise f.err(key, "duplicate layer indices")
        if layers != sorted(layers):
            raise f.err(key, "layer indices must be increasing")
    elif isinstance(rule, dict):
        sub = _Fields(f.src, rule, "moe_layers.")
        if "first_k_dense_replace" in rule:
            first = sub.int_("first_k_dense_replace", minimum=0)
            freq = sub.int_("moe_layer_freq", 1, minimum=1)
            layers = [i for i in range(num_layers) if i >= first and i % freq == 0]
        elif "every" in rule:
            every = sub.int_("every", minimum=1)
            offset = sub.int_("offset", 0, minimum=0)
            if offset >= every:
                raise sub.err("offset", f"must be < every ({every}), got {offset}")
            layers = [i for i in range(num_layers) if i % every == offset]
        else:
            raise f.err(key, "rule must have first_k_dense_replace or every")
        sub.done()
    else:
        raise f.err(key, f"expected 'all', a list of indices or a rule mapping, got {rule!r}")
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise f.err(key, f"layer {bad[0]} out of range 0..{num_layers - 1}")
    if not layers:
        raise f.err(key, "no MoE layers")
    return tuple(layers)


# --------------------------------------------------------------------------------------------- loaders
def _model_from(path: Path) -> ModelSpec:
    src = str(path)
    f = _Fields(src, _read_yaml(path))
    slug = f.str_("slug", path.stem)
    num_layers = f.int_("num_layers", minimum=1, maximum=MAX_LAYERS)
    num_experts = f.int_("num_experts", minimum=1, maximum=MAX_EXPERTS)
    top_k = f.int_("top_k", minimum=1)
    if top_k > num_experts:
        raise f.err("top_k", f"must be <= num_experts ({num_experts}), got {top_k}")
    n_group = f.int_("n_group", 1, minimum=1)
    topk_group = f.int_("topk_group", 1, minimum=1)
    if num_experts % n_group:
        raise f.err("n_group", f"must divide num_experts ({num_experts}), got {n_group}")
    if topk_group > n_group:
        raise f.err("topk_group", f"must be <= n_group ({n_group}), got {topk_group}")
    if n_group > 1 and top_k > topk_group * (num_experts // n_group):
        raise f.err("top_k", f"exceeds the {topk_group * (num_experts // n_group)} experts in topk_group groups")
    num_shared = f.int_("num_shared_experts", 0, minimum=0)
    shared_size = f.int_("shared_expert_intermediate_size", 0, minimum=0)
    if (num_shared == 0) != (shared_size == 0):
        raise f.err(
            "shared_expert_intermediate_size",
            f"must be 0 exactly when num_shared_experts is 0 (num_shared_experts={num_shared}, "
            f"shared_expert_intermediate_size={shared_size})",
        )
    moe_layers = _moe_layers(f, num_layers)
    dense = f.int_("dense_intermediate_size", 0, minimum=0)
    if dense == 0 and len(moe_layers) < num_layers:
        raise f.err("dense_intermediate_size", "missing: the model has dense layers")
    spec = ModelSpec(
        slug=slug,
        name=f.str_("name"),
        source=f.str_("source"),
        num_layers=num_layers,
        moe_layers=moe_layers,
        hidden_size=f.int_("hidden_size", minimum=1, maximum=MAX_WIDTH),
        moe_intermediate_size=f.int_("moe_intermediate_size", minimum=1, maximum=MAX_WIDTH),
        dense_intermediate_size=dense,
        num_experts=num_experts,
        top_k=top_k,
        num_shared_experts=num_shared,
        shared_expert_intermediate_size=shared_size,
        n_group=n_group,
        topk_group=topk_group,
        score_function=f.str_("score_function", choices=SCORE_FUNCTIONS),
        num_attention_heads=f.int_("num_attention_heads", minimum=1),
        num_kv_heads=f.int_("num_kv_heads", minimum=1),
        head_dim=f.int_("head_dim", minimum=1),
        vocab_size=f.int_("vocab_size", minimum=1),
    )
    if spec.num_attention_heads % spec.num_kv_heads:
        raise f.err(
            "num_kv_heads",
            f"must divide num_attention_heads ({spec.num_attention_heads}), got {spec.num_kv_heads}",
        )
    # `notes` and `config` hold free-form provenance (raw config keys we do not model); never read as numbers.
    f.done(optional=("notes", "config"))
    return spec


def _gpu_from(path: Path) -> GPUSpec:
    f = _Fields(str(path), _read_yaml(path))
    spec = GPUSpec(
        slug=f.str_("slug", path.stem),
        name=f.str_("name"),
        source=f.str_("source"),
        bf16_tflops=f.float_("bf16_tflops", positive=True),
        fp8_tflops=f.float_("fp8_tflops", 0.0),
        hbm_gb=f.float_("hbm_gb", positive=True),
        hbm_bw_gb_s=f.float_("hbm_bw_gb_s", positive=True),
        nvlink_bw_gb_s=f.float_("nvlink_bw_gb_s", 0.0),
        sm_count=f.int_("sm_count", minimum=1),
        smem_per_sm_kb=f.float_("smem_per_sm_kb", positive=True),
        smem_per_block_kb=f.float_("smem_per_block_kb", positive=True),
        l2_mb=f.float_("l2_mb", positive=True),
        gemm_efficiency=f.float_("gemm_efficiency", positive=True, maximum=1.0),
        hbm_efficiency=f.float_("hbm_efficiency", positive=True, maximum=1.0),
    )
    if spec.smem_per_block_kb > spec.smem_per_sm_kb:
        raise f.err(
            "smem_per_block_kb",
            f"must be <= smem_per_sm_kb ({spec.smem_per_sm_kb:g}), got {spec.smem_per_block_kb:g}",
        )
    f.done(optional=("notes",))
    return spec


def _efficiency_curve(f: _Fields, key: str) -> tuple[tuple[float, float], ...]:
    pts = f.raw(key)
    if not isinstance(pts, list) or not pts:
        raise f.err(key, f"expected a non-empty list of [message_bytes, fraction] points, got {pts!r}")
    out: list[tuple[float, float]] = []
    for i, p in enumerate(pts):
        ok = (
            isinstance(p, (list, tuple))
            and len(p) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
        )
        if not ok:
            raise f.err(f"{key}[{i}]", f"expected [message_bytes, fraction], got {p!r}")
        nbytes, frac = float(p[0]), float(p[1])
        if nbytes <= 0:
            raise f.err(f"{key}[{i}]", f"message_bytes must be > 0, got {nbytes:g}")
        if not 0 < frac <= 1:
            raise f.err(f"{key}[{i}]", f"fraction must be in (0, 1], got {frac:g}")
        if out and nbytes <= out[-1][0]:
            raise f.err(f"{key}[{i}]", "message sizes must be increasing")
        out.append((nbytes, frac))
    return tuple(out)


def _level_from(f: _Fields, i: int, raw: Any) -> LinkLevel:
    if not isinstance(raw, dict):
        raise f.err(f"levels[{i}]", f"expected a mapping, got {raw!r}")
    lf = _Fields(f.src, raw, f"levels[{i}].")
    level = LinkLevel(
        kind=lf.str_("kind", choices=LEVEL_KINDS),
        size=lf.int_("size", minimum=1, maximum=MAX_GPUS),
        bw_gb_s=lf.float_("bw_gb_s", positive=True),
        latency_ns=lf.float_("latency_ns", 0.0),
        efficiency=_efficiency_curve(lf, "efficiency"),
    )
    lf.done(optional=("notes",))
    return level


def _cluster_from(path: Path) -> ClusterSpec:
    src = str(path)
    f = _Fields(src, _read_yaml(path))
    slug = f.str_("slug", path.stem)
    name = f.str_("name")
    source = f.str_("source")
    gpu_name = f.str_("gpu")
    try:
        gpu = load_gpu(_resolve("gpus", gpu_name, base=path.parent))
    except SpecError as exc:
        raise f.err("gpu", str(exc)) from None
    raw_levels = f.raw("levels")
    if not isinstance(raw_levels, list) or not 1 <= len(raw_levels) <= 2:
        raise f.err("levels", f"expected a list of 1 (one node) or 2 (nodes) levels, got {raw_levels!r}")
    levels = tuple(_level_from(f, i, lv) for i, lv in enumerate(raw_levels))
    total = int(np.prod([lv.size for lv in levels], dtype=object))
    if total > MAX_GPUS:
        raise f.err("levels", f"{total:,} GPUs in all, more than moesim's limit of {MAX_GPUS:,}")
    if levels[0].kind not in ("nvswitch", "nvlink", "pcie"):
        raise f.err("levels[0].kind", f"the intra-node level must be nvswitch, nvlink or pcie, got {levels[0].kind}")
    if len(levels) == 2 and levels[1].kind not in ("ib", "roce"):
        raise f.err("levels[1].kind", f"the inter-node level must be ib or roce, got {levels[1].kind}")
    multi = len(levels) == 2 and levels[1].size > 1

    nic: NicSpec | None = None
    nf = f.section("nic", "a multi-node cluster needs its NIC layout" if multi else None)
    if nf is not None:
        nic = NicSpec(
            layout=nf.str_("layout", choices=NIC_LAYOUTS),
            nics_per_node=nf.int_("nics_per_node", minimum=1),
            bw_gb_s=nf.float_("bw_gb_s", positive=True),
            gpus_per_nic=nf.int_("gpus_per_nic", 1, minimum=1),
        )
        nf.done(optional=("notes",))
        if nic.layout == "rail" and nic.gpus_per_nic != 1:
            raise nf.err("gpus_per_nic", f"a rail layout has one NIC per GPU, got {nic.gpus_per_nic}")
        if nic.nics_per_node * nic.gpus_per_nic != levels[0].size:
            raise nf.err(
                "nics_per_node",
                f"nics_per_node * gpus_per_nic must equal the GPUs per node "
                f"({levels[0].size}), got {nic.nics_per_node} * {nic.gpus_per_nic}",
            )

    fabric: FabricSpec | None = None
    ff = f.section("fabric", "a multi-node cluster needs its fabric" if multi else None)
    if ff is not None:
        fabric = FabricSpec(
            kind=ff.str_("kind", choices=FABRIC_KINDS),
            oversubscription=ff.float_("oversubscription", 1.0, minimum=1.0),
        )
        ff.done(optional=("notes", "nodes_per_leaf"))

    pcie: PcieSpec | None = None
    pcie_node = levels[0].kind == "pcie"
    pf = f.section(
        "pcie", "a PCIe node needs its switch layout (gpus_per_switch, switch_uplink_gb_s)" if pcie_node else None
    )
    if pf is not None:
        pcie = PcieSpec(
            gpus_per_switch=pf.int_("gpus_per_switch", minimum=1),
            switch_uplink_gb_s=pf.float_("switch_uplink_gb_s", positive=True),
        )
        pf.done(optional=("notes",))
        if levels[0].size % pcie.gpus_per_switch:
            raise pf.err(
                "gpus_per_switch",
                f"must divide the GPUs per node ({levels[0].size}), got {pcie.gpus_per_switch}",
            )
    f.done(optional=("notes",))
    return ClusterSpec(slug=slug, name=name, source=source, gpu=gpu, levels=levels, nic=nic, fabric=fabric, pcie=pcie)


def load_model(name_or_path: str | Path) -> ModelSpec:
    """Load a model by slug (``deepseek-v3``) or YAML path; :class:`SpecError` on any problem."""
    return _model_from(_resolve("models", name_or_path))


def load_gpu(name_or_path: str | Path) -> GPUSpec:
    """Load a GPU by slug (``h100-sxm``) or YAML path; :class:`SpecError` on any problem."""
    return _gpu_from(_resolve("gpus", name_or_path))


def load_cluster(name_or_path: str | Path) -> ClusterSpec:
    """Load a cluster by slug (``dgx-h100``) or YAML path; its ``gpu`` field is a GPU slug or a path
    (relative to the cluster file). :class:`SpecError` on any problem."""
    return _cluster_from(_resolve("clusters", name_or_path))

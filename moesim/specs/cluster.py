"""The cluster spec: GPUs, per-dimension link levels (ASTRA-sim style), NIC layout, fabric and PCIe tree, loaded
from ``profiles/clusters/*.yaml``. Every dataclass checks itself in ``__post_init__``, so no invalid instance
exists (``ClusterSpec.with_nodes(-3)`` raises instead of returning -24 GPUs).

Units live in the field names: ``_gb_s`` gigabytes (1e9 bytes) per second, ``_ns`` nanoseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from moesim.errors import SpecError, field_error
from moesim.schema import FieldError, Fields, choice_problem, float_problem, int_problem, require
from moesim.specs.files import read_spec_yaml, resolve
from moesim.specs.gpu import GPUSpec, load_gpu
from moesim.specs.limits import MAX_GPUS

__all__ = [
    "FABRIC_KINDS",
    "LEVEL_KINDS",
    "NIC_LAYOUTS",
    "ClusterSpec",
    "FabricSpec",
    "LinkLevel",
    "NicSpec",
    "PcieSpec",
    "load_cluster",
]

LEVEL_KINDS = ("nvswitch", "nvlink", "pcie", "ib", "roce")
NIC_LAYOUTS = ("rail", "shared")
FABRIC_KINDS = ("fat-tree", "none")


def _is_point(p: Any) -> bool:
    return (
        isinstance(p, (list, tuple))
        and len(p) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
    )


def _curve_problem(pts: Any) -> tuple[str, str] | None:
    """(field, problem) of a bad efficiency curve: increasing message sizes > 0, fractions in (0, 1]."""
    if not isinstance(pts, (list, tuple)) or not pts:
        return "efficiency", f"expected a non-empty list of [message_bytes, fraction] points, got {pts!r}"
    last = 0.0
    for i, p in enumerate(pts):
        if not _is_point(p):
            return f"efficiency[{i}]", f"expected [message_bytes, fraction], got {p!r}"
        nbytes, frac = float(p[0]), float(p[1])
        if nbytes <= 0:
            return f"efficiency[{i}]", f"message_bytes must be > 0, got {nbytes:g}"
        if not 0 < frac <= 1:
            return f"efficiency[{i}]", f"fraction must be in (0, 1], got {frac:g}"
        if i and nbytes <= last:
            return f"efficiency[{i}]", "message sizes must be increasing"
        last = nbytes
    return None


@dataclass(frozen=True)
class LinkLevel:
    """One dimension of the cluster, ASTRA-sim style, innermost first."""

    kind: str  # "nvswitch" | "nvlink" | "pcie" | "ib" | "roce"
    size: int  # GPUs (level 0) or nodes (level 1) in this dimension
    bw_gb_s: float  # per GPU, per direction
    latency_ns: float
    efficiency: tuple[tuple[float, float], ...]  # (message_bytes, fraction of bw) points, log-interpolated

    def __post_init__(self) -> None:
        src = "link level"
        require(src, "kind", choice_problem(self.kind, LEVEL_KINDS))
        require(src, "size", int_problem(self.size, 1, MAX_GPUS))
        require(src, "bw_gb_s", float_problem(self.bw_gb_s, positive=True))
        require(src, "latency_ns", float_problem(self.latency_ns))
        bad = _curve_problem(self.efficiency)
        if bad:
            raise FieldError(src, *bad)


@dataclass(frozen=True)
class NicSpec:
    """How GPUs reach the inter-node network."""

    layout: str  # "rail" (one NIC per GPU, rail-optimised) | "shared" (gpus_per_nic share one)
    nics_per_node: int
    bw_gb_s: float  # per NIC, per direction
    gpus_per_nic: int

    def __post_init__(self) -> None:
        src = "nic"
        require(src, "layout", choice_problem(self.layout, NIC_LAYOUTS))
        require(src, "nics_per_node", int_problem(self.nics_per_node, 1))
        require(src, "bw_gb_s", float_problem(self.bw_gb_s, positive=True))
        require(src, "gpus_per_nic", int_problem(self.gpus_per_nic, 1))
        if self.layout == "rail" and self.gpus_per_nic != 1:
            require(src, "gpus_per_nic", f"a rail layout has one NIC per GPU, got {self.gpus_per_nic}")


@dataclass(frozen=True)
class FabricSpec:
    """The inter-node fabric."""

    kind: str  # "fat-tree" | "none"
    oversubscription: float  # 1.0 = full bisection; 2.0 = leaf uplinks carry half the downlink bandwidth

    def __post_init__(self) -> None:
        require("fabric", "kind", choice_problem(self.kind, FABRIC_KINDS))
        require("fabric", "oversubscription", float_problem(self.oversubscription, minimum=1.0))


@dataclass(frozen=True)
class PcieSpec:
    """The PCIe tree of a node whose GPUs talk over PCIe (no NVLink): GPUs sit behind PCIe switches whose
    uplinks to the host root complex are shared by ``gpus_per_switch`` GPUs."""

    gpus_per_switch: int
    switch_uplink_gb_s: float  # per switch uplink, per direction

    def __post_init__(self) -> None:
        require("pcie", "gpus_per_switch", int_problem(self.gpus_per_switch, 1))
        require("pcie", "switch_uplink_gb_s", float_problem(self.switch_uplink_gb_s, positive=True))


@dataclass(frozen=True)
class ClusterSpec:
    """A cluster: GPUs, per-dimension link levels, NIC layout and fabric.

    ``__post_init__`` checks that the parts fit: 1 or 2 levels (intra-node nvswitch/nvlink/pcie, inter-node
    ib/roce), at most :data:`~moesim.specs.limits.MAX_GPUS` GPUs, a NIC layout and fabric when there are
    several nodes with ``nics_per_node * gpus_per_nic`` = GPUs per node, PCIe switches that divide the node."""

    slug: str
    name: str
    source: str
    gpu: GPUSpec
    levels: tuple[LinkLevel, ...]  # [intra-node, inter-node]; a single-node cluster has one level
    nic: NicSpec | None
    fabric: FabricSpec | None
    pcie: PcieSpec | None = None  # only for PCIe-connected nodes

    def __post_init__(self) -> None:
        src, levels = self.slug, self.levels
        if not isinstance(levels, (list, tuple)) or not 1 <= len(levels) <= 2:
            require(src, "levels", f"expected a list of 1 (one node) or 2 (nodes) levels, got {levels!r}")
        total = int(np.prod([lv.size for lv in levels], dtype=object))
        if total > MAX_GPUS:
            require(src, "levels", f"{total:,} GPUs in all, more than moesim's limit of {MAX_GPUS:,}")
        if levels[0].kind not in ("nvswitch", "nvlink", "pcie"):
            require(
                src, "levels[0].kind", f"the intra-node level must be nvswitch, nvlink or pcie, got {levels[0].kind}"
            )
        if len(levels) == 2 and levels[1].kind not in ("ib", "roce"):
            require(src, "levels[1].kind", f"the inter-node level must be ib or roce, got {levels[1].kind}")
        self._check_parts()

    def _check_parts(self) -> None:
        """The NIC layout, fabric and PCIe tree against the levels."""
        src, per_node = self.slug, self.levels[0].size
        multi = len(self.levels) == 2 and self.levels[1].size > 1
        if multi and self.nic is None:
            require(src, "nic", "missing: a multi-node cluster needs its NIC layout")
        if self.nic is not None and self.nic.nics_per_node * self.nic.gpus_per_nic != per_node:
            require(
                src,
                "nic.nics_per_node",
                f"nics_per_node * gpus_per_nic must equal the GPUs per node "
                f"({per_node}), got {self.nic.nics_per_node} * {self.nic.gpus_per_nic}",
            )
        if multi and self.fabric is None:
            require(src, "fabric", "missing: a multi-node cluster needs its fabric")
        if self.pcie is not None and per_node % self.pcie.gpus_per_switch:
            require(
                src,
                "pcie.gpus_per_switch",
                f"must divide the GPUs per node ({per_node}), got {self.pcie.gpus_per_switch}",
            )

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
        """The same cluster with another node count (>= 1); one node keeps only the intra-node level."""
        if isinstance(num_nodes, bool) or not isinstance(num_nodes, (int, np.integer)) or num_nodes < 1:
            raise field_error(self.slug, "num_nodes", f"must be an integer >= 1, got {num_nodes!r}")
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


# --------------------------------------------------------------------------------------------- loading
def _curve(pts: Any) -> Any:
    """A file's efficiency points as float pairs; anything malformed passes through for LinkLevel to name."""
    if not isinstance(pts, list) or not pts:
        return pts
    return tuple((float(p[0]), float(p[1])) if _is_point(p) else p for p in pts)


def _level_from(f: Fields, i: int, raw: Any) -> LinkLevel:
    if not isinstance(raw, dict):
        raise f.err(f"levels[{i}]", f"expected a mapping, got {raw!r}")
    lf = Fields(f.src, raw, f"levels[{i}].")
    level = lf.build(
        LinkLevel,
        kind=lf.str_("kind", choices=LEVEL_KINDS),
        size=lf.int_("size", minimum=1, maximum=MAX_GPUS),
        bw_gb_s=lf.float_("bw_gb_s", positive=True),
        latency_ns=lf.float_("latency_ns", 0.0),
        efficiency=_curve(lf.raw("efficiency")),
    )
    lf.done(optional=("notes",))
    return level


def _parts_from(f: Fields, pcie_node: bool) -> dict[str, Any]:
    """The ``nic``, ``fabric`` and ``pcie`` sections (ClusterSpec says when a cluster needs a NIC and a
    fabric; a file of a PCIe node must describe its switches, which a ClusterSpec may leave out)."""
    parts: dict[str, Any] = {"nic": None, "fabric": None, "pcie": None}
    nf = f.section("nic")
    if nf is not None:
        parts["nic"] = nf.build(
            NicSpec,
            layout=nf.str_("layout", choices=NIC_LAYOUTS),
            nics_per_node=nf.int_("nics_per_node", minimum=1),
            bw_gb_s=nf.float_("bw_gb_s", positive=True),
            gpus_per_nic=nf.int_("gpus_per_nic", 1, minimum=1),
        )
        nf.done(optional=("notes",))
    ff = f.section("fabric")
    if ff is not None:
        parts["fabric"] = ff.build(
            FabricSpec,
            kind=ff.str_("kind", choices=FABRIC_KINDS),
            oversubscription=ff.float_("oversubscription", 1.0, minimum=1.0),
        )
        ff.done(optional=("notes", "nodes_per_leaf"))
    pf = f.section(
        "pcie", "a PCIe node needs its switch layout (gpus_per_switch, switch_uplink_gb_s)" if pcie_node else None
    )
    if pf is not None:
        parts["pcie"] = pf.build(
            PcieSpec,
            gpus_per_switch=pf.int_("gpus_per_switch", minimum=1),
            switch_uplink_gb_s=pf.float_("switch_uplink_gb_s", positive=True),
        )
        pf.done(optional=("notes",))
    return parts


def _cluster_from(path: Path) -> ClusterSpec:
    f = Fields(str(path), read_spec_yaml(path))
    slug = f.str_("slug", path.stem)
    name = f.str_("name")
    source = f.str_("source")
    gpu_name = f.str_("gpu")
    try:
        gpu = load_gpu(resolve("gpus", gpu_name, base=path.parent))
    except SpecError as exc:
        raise f.err("gpu", str(exc)) from None
    raw_levels = f.raw("levels")
    if not isinstance(raw_levels, list) or not 1 <= len(raw_levels) <= 2:
        raise f.err("levels", f"expected a list of 1 (one node) or 2 (nodes) levels, got {raw_levels!r}")
    levels = tuple(_level_from(f, i, lv) for i, lv in enumerate(raw_levels))
    parts = _parts_from(f, levels[0].kind == "pcie")
    f.done(optional=("notes",))
    return f.build(ClusterSpec, slug=slug, name=name, source=source, gpu=gpu, levels=levels, **parts)


def load_cluster(name_or_path: str | Path) -> ClusterSpec:
    """Load a cluster by slug (``dgx-h100``) or YAML path; its ``gpu`` field is a GPU slug or a path
    (relative to the cluster file). :class:`SpecError` on any problem."""
    return _cluster_from(resolve("clusters", name_or_path))

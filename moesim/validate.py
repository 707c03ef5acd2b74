"""``moesim validate``: the cost model's error against measured kernel timings.

Inputs are measured tables: AIConfigurator parquet files (:mod:`moesim.aiconfigurator`), moesim JSONL record
files, or folders of either. Every record is predicted once, per device (its GPU profile and calibration):

- ``calibration="auto"``: the device's shipped ``profiles/measured/<gpu>/calibration.json``; ``"none"``: the
  uncalibrated model; else a calibration file.
- ``folds=K``: rows of the kinds a calibration is fitted on (vLLM fused MoE, DeepEP, NCCL) are split into K
  folds **by shape** (:func:`moesim.measured_rows.shape_key`, assigned by a seeded permutation of the
  distinct shapes); each fold is predicted by a calibration fitted on the other K - 1. Rows that are never
  fitted (SGLang's table) keep the base calibration, and say so (``fold`` empty).

Error of a row: ``e = predicted / measured - 1``. Per family: MAPE ``mean |e|``, median and p90 of ``|e|``, bias
``mean e``, broken down by token bucket, EP and TP.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from moesim.errors import field_error

if TYPE_CHECKING:
    from moesim.calibration.model import Calibration

__all__ = ["Validation", "family", "load_measured", "run_validation", "summarise"]

TOKEN_BUCKETS = ((1, 16), (17, 128), (129, 1024), (1025, 4096), (4097, 1 << 40))
RECORD_KINDS = {
    "fused_moe": ("tokens", "hidden", "intermediate", "num_experts", "top_k", "tp", "ep", "distribution"),
    "deepep_normal": ("phase", "tokens", "hidden", "top_k", "num_experts", "num_sms"),
    "deepep_ll": ("phase", "tokens", "hidden", "top_k", "num_experts"),
    "nccl": ("op", "num_gpus", "message_bytes"),
}


@dataclass
class Loaded:
    """The tables read: records (each with ``table`` and ``row``), skipped rows per table, provenance."""

    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)  # table -> reason -> rows
    tables: list[dict[str, Any]] = field(default_factory=list)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    src = str(path)
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise field_error(src, "records", f"cannot read: {exc}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise field_error(src, f"line {n}", f"bad JSON: {exc.msg}") from None
        if not isinstance(rec, dict):
            raise field_error(src, f"line {n}", "expected a JSON object")
        kind = rec.get("kind")
        if kind not in RECORD_KINDS:
            continue  # other measured kinds (matmul, copy, ...) feed the GEMM curves, not this check
        for key in (*RECORD_KINDS[kind], "median_us", "device_name"):
            if key not in rec:
                raise field_error(src, f"line {n}.{key}", "missing")
        v = rec["median_us"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise field_error(src, f"line {n}.median_us", f"latency must be a positive number, got {v!r}")
        rec.setdefault("table", path.name)
        rec.setdefault("row", n - 1)
        out.append(rec)
    return out


def load_measured(paths: Sequence[str | Path]) -> Loaded:
    """Read every table named (file or folder); errors name the file and field (``SpecError``)."""
    from moesim.aiconfigurator import TABLE_KINDS, read_table

    loaded = Loaded()
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.name in TABLE_KINDS or f.suffix == ".jsonl")
            if not found:
                raise field_error(str(p), "measured", "folder holds no measured tables (*.jsonl or known parquet)")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise field_error(str(p), "measured", "no such file or folder")
    for f in files:
        if f.suffix == ".jsonl":
            recs = _read_jsonl(f)
            loaded.records.extend(recs)
            loaded.tables.append({"table": str(f), "kind": "records", "rows": len(recs)})
            continue
        table = read_table(f)
        loaded.records.extend(table.records)
        reasons: dict[str, int] = {}
        for _, why in table.skipped:
            reasons[why] = reasons.get(why, 0) + 1
        loaded.skipped[table.provenance["table"]] = reasons
        loaded.tables.append({**table.provenance, "rows": len(table.records), "skipped": len(table.skipped)})
    return loaded


def family(rec: dict[str, Any]) -> str:
    """The family a record's error is reported under."""
    kind = rec["kind"]
    if kind == "fused_moe":
        return f"fused_moe {str(rec.get('framework', '?')).lower()} {rec.get('dtype', 'bf16')} {rec['distribution']}"
    if kind in ("deepep_normal", "deepep_ll"):
        return f"{kind} {rec['phase']}"
    return f"nccl {rec['op']} {rec['num_gpus']}gpu {rec.get('dtype', '')}".rstrip()


def _fold_ids(records: Sequence[dict[str, Any]], folds: int, seed: int = 0) -> np.ndarray:
    """Fold of each fittable record (-1: never fitted); shapes of each kind are spread over the folds."""
    from moesim.measured_fit import fits_kind
    from moesim.measured_rows import shape_key

    out = np.full(len(records), -1)
    by_kind: dict[str, dict[tuple[Any, ...], list[int]]] = {}
    for i, r in enumerate(records):
        k = fits_kind(r)
        if k is not None:
            by_kind.setdefault(k, {}).setdefault(shape_key(r), []).append(i)
    for kind in sorted(by_kind):
        shapes = sorted(by_kind[kind])
        if len(shapes) < 2:
            continue  # one shape cannot be held out from itself: predicted by the base calibration
        perm = np.random.default_rng(seed).permutation(len(shapes))
        k = min(folds, len(shapes))
        for rank, s in zip(perm, shapes, strict=True):
            out[by_kind[kind][s]] = rank % k
    return out


def _base_calibration(spec: str, gpu_slug: str) -> Calibration | None:
    from moesim.calibration.file_format import load_calibration
    from moesim.calibration.resolve import shipped_calibration_path

    if spec == "none":
        return None
    if spec == "auto":
        path = shipped_calibration_path(gpu_slug)
        if not path.is_file():
            return None  # no shipped calibration: fold fits still run; the report says "uncalibrated"
        return load_calibration(path)
    return load_calibration(spec)


@dataclass
class Validation:
    """Every predicted row, and where each device's predictions came from."""

    rows: list[dict[str, Any]]
    skipped: dict[str, dict[str, int]]
    calibrations: dict[str, str]  # device -> description
    tables: list[dict[str, Any]]
    folds: int | None


def run_validation(
    paths: Sequence[str | Path],
    calibration: str = "auto",
    folds: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    seed: int = 0,
) -> Validation:
    """Predict every record of ``paths`` (module docstring); ``progress(label, done, total)`` per step."""
    from moesim.measured_fit import fit_calibration_from_records, predict
    from moesim.specs import load_gpu

    loaded = load_measured(paths)
    by_gpu: dict[str, list[int]] = {}
    for i, r in enumerate(loaded.records):
        slug = r.get("gpu")
        if not slug:
            raise field_error(str(r.get("table")), "device", f"no GPU profile for device {r.get('device_name')!r}")
        by_gpu.setdefault(slug, []).append(i)
    pred = np.full(len(loaded.records), np.nan)
    fold_of = np.full(len(loaded.records), -1)
    used: dict[str, str] = {}
    steps = sum(1 + (folds or 0) for _ in by_gpu)
    done = 0
    for slug, idx in sorted(by_gpu.items()):
        gpu = load_gpu(slug)
        recs = [loaded.records[i] for i in idx]
        base = _base_calibration(calibration, slug)
        if calibration != "none" and base is None and not folds:
            raise field_error(
                f"profiles/measured/{slug}/calibration.json", "calibration",
                f"no shipped calibration for {slug}: give --calibration FILE, --calibration none or --folds K",
            )  # fmt: skip
        used[slug] = "uncalibrated" if base is None else f"{base.describe}"
        p = predict(recs, base, gpu)
        done += 1
        if progress:
            progress(f"{slug}: predict", done, steps)
        f_ids = _fold_ids(recs, folds) if folds else np.full(len(recs), -1)
        if folds:
            used[slug] += f"; fitted rows: {folds}-fold by shape"
            for f in range(folds):
                test = f_ids == f
                if test.any():
                    train = [r for r, fid in zip(recs, f_ids, strict=True) if fid >= 0 and fid != f]
                    cal = fit_calibration_from_records(
                        train, gpu, device_name=recs[0]["device_name"], source=f"fold {f}", base=base
                    )
                    sel = np.flatnonzero(test)
                    p[sel] = predict([recs[i] for i in sel], cal, gpu)
                done += 1
                if progress:
                    progress(f"{slug}: fold {f + 1}/{folds}", done, steps)
        pred[idx] = p
        fold_of[idx] = f_ids
    rows = []
    for i, r in enumerate(loaded.records):
        row = {
            "table": Path(str(r["table"])).name if "/" not in str(r["table"]) else str(r["table"]),
            "row": int(r["row"]),
            "family": family(r),
            "gpu": r.get("gpu"),
            "measured_us": float(r["median_us"]),
            "predicted_us": float(pred[i]),
            "fold": int(fold_of[i]) if fold_of[i] >= 0 else None,
        }
        for key in (*RECORD_KINDS[r["kind"]], "framework"):
            if key in r:
                row[key] = r[key]
        rows.append(row)
    return Validation(rows, loaded.skipped, used, loaded.tables, folds)


def _stats(err: np.ndarray) -> dict[str, float]:
    a = np.abs(err)
    return {
        "rows": int(err.size),
        "mape_pct": float(100 * a.mean()),
        "median_pct": float(100 * np.median(a)),
        "p90_pct": float(100 * np.quantile(a, 0.9)),
        "bias_pct": float(100 * err.mean()),
    }


def _bucket(tokens: int) -> str:
    for lo, hi in TOKEN_BUCKETS:
        if lo <= tokens <= hi:
            return f"{lo}-{hi}" if hi < (1 << 40) else f">={lo}"
    return "?"


def summarise(val: Validation, worst: int = 10) -> dict[str, Any]:
    """Per (GPU, family): stats, breakdowns by token bucket / EP / TP, unpredicted rows; the worst rows."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in val.rows:
        groups.setdefault((str(r["gpu"]), r["family"]), []).append(r)
    families = []
    for (gpu, fam), rs in sorted(groups.items()):
        ok = [r for r in rs if np.isfinite(r["predicted_us"])]
        entry: dict[str, Any] = {"gpu": gpu, "family": fam, "unpredicted": len(rs) - len(ok)}
        if ok:
            err = np.array([r["predicted_us"] / r["measured_us"] - 1 for r in ok])
            entry.update(_stats(err))
            by: dict[str, dict[str, dict[str, float]]] = {}
            for key, fn in (
                ("tokens", lambda r: _bucket(int(r["tokens"])) if "tokens" in r else None),
                ("ep", lambda r: r.get("ep")),
                ("tp", lambda r: r.get("tp")),
                ("bytes", lambda r: f"2^{int(math.log2(r['message_bytes']))}" if "message_bytes" in r else None),
            ):
                labels = [fn(r) for r in ok]
                if any(v is None for v in labels) or len(set(labels)) < 2:
                    continue
                by[key] = {
                    str(v): _stats(err[[lab == v for lab in labels]])
                    for v in sorted(set(labels), key=lambda x: (str(type(x)), x))
                }
            entry["by"] = by
        families.append(entry)
    finite = [r for r in val.rows if np.isfinite(r["predicted_us"])]
    finite.sort(key=lambda r: -abs(r["predicted_us"] / r["measured_us"] - 1))
    worst_rows = [{**r, "error_pct": 100 * (r["predicted_us"] / r["measured_us"] - 1)} for r in finite[:worst]]
    return {
        "folds": val.folds,
        "calibrations": val.calibrations,
        "tables": val.tables,
        "skipped": val.skipped,
        "families": families,
        "worst": worst_rows,
    }


def write_rows_csv(val: Validation, path: str | Path) -> None:
    """One line per predicted row: table, row, family, measured_us, predicted_us, fold (atomic write)."""
    import csv
    import io

    from moesim.fileio import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["table", "row", "family", "gpu", "measured_us", "predicted_us", "fold"])
    for r in val.rows:
        pred = "" if not np.isfinite(r["predicted_us"]) else f"{r['predicted_us']:.4f}"
        fold = "" if r["fold"] is None else r["fold"]
        w.writerow([r["table"], r["row"], r["family"], r["gpu"], f"{r['measured_us']:.4f}", pred, fold])
    atomic_write_text(Path(path), buf.getvalue())


def write_plot(val: Validation, path: str | Path) -> None:
    """Predicted vs measured, log-log, one panel per family (PNG, written atomically)."""
    import os
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = sorted({(str(r["gpu"]), r["family"]) for r in val.rows})
    cols = min(4, len(fams)) or 1
    nrows = math.ceil(len(fams) / cols) or 1
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.6 * nrows), squeeze=False)
    for ax, (gpu, fam) in zip(axes.ravel(), fams, strict=False):
        rs = [r for r in val.rows if (str(r["gpu"]), r["family"]) == (gpu, fam) and np.isfinite(r["predicted_us"])]
        m = np.array([r["measured_us"] for r in rs])
        p = np.array([r["predicted_us"] for r in rs])
        if m.size:
            ax.loglog(m, p, ".", ms=2, alpha=0.4)
            lo, hi = min(m.min(), p.min()), max(m.max(), p.max())
            ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
            mape = 100 * np.mean(np.abs(p / m - 1))
            ax.set_title(f"{gpu} {fam}\nMAPE {mape:.1f}% ({m.size} rows)", fontsize=8)
        ax.set_xlabel("measured (us)", fontsize=7)
        ax.set_ylabel("predicted (us)", fontsize=7)
    for ax in axes.ravel()[len(fams) :]:
        ax.axis("off")
    fig.tight_layout()
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent or ".", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, target)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)

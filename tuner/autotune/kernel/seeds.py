"""Seed configs of a study: the vLLM config shipped for the nearest shape, and our batch-size default.

Enqueued first (``enqueue_trial``), so a study never ends worse than either.
"""

from __future__ import annotations

import math
from pathlib import Path

from tuner.autotune import space
from tuner.autotune.space import Config


def nearest_shipped_file(
    E: int, N: int, device_name: str, dtype: str | None = None, reference_dir: Path | None = None
) -> Path | None:
    """The shipped vLLM config file whose (E, N) is nearest in log space, same device preferred.

    distance = |log2 E - log2 E'| + |log2 N - log2 N'|, plus 10 for another device (so any file of the same
    device wins) and plus 10 for another dtype tag (bf16 files carry none; ``dtype=fp8_w8a8`` ones do).
    """
    from kernels import configs as kconfigs

    folder = Path(reference_dir) if reference_dir is not None else kconfigs.reference_dir()
    if folder is None or not folder.is_dir():
        return None
    want_device = kconfigs.normalize_device_name(device_name)
    best: tuple[float, str] | None = None
    for path in sorted(folder.glob("E=*,N=*.json")):
        fields = kconfigs.parse_config_file_name(path.name)
        try:
            e, n = int(fields["E"]), int(fields["N"])
        except (KeyError, ValueError):
            continue
        dist = abs(math.log2(e) - math.log2(E)) + abs(math.log2(n) - math.log2(N))
        dist += 0 if fields.get("device_name", "") == want_device else 10
        file_dtype = fields.get("dtype")
        dist += 0 if (file_dtype in (None, "bf16") and dtype in (None, "bf16", "fp16")) or file_dtype == dtype else 10
        if best is None or dist < best[0]:
            best = (dist, str(path))
    return Path(best[1]) if best else None


def seed_configs(
    E: int,
    N: int,
    K: int,
    m: int,
    device_name: str,
    dtype: str = "bf16",
    reference_dir: Path | None = None,
    top_k: int = 2,
) -> list[tuple[str, Config]]:
    """[(label, config)]: the vLLM shipped config for the nearest shape at batch size ``m`` (label
    ``vllm:<file>``) and ``kernels.configs.default_config`` (label ``default``: what ``fused_moe`` runs without
    a tuned file, which depends on ``top_k``), grid-valid ones only."""
    from kernels import configs as kconfigs

    out: list[tuple[str, Config]] = []
    path = nearest_shipped_file(E, N, device_name, dtype, reference_dir)
    if path is not None:
        shipped = kconfigs.pick_config(kconfigs.load_configs(str(path)), m)
        out.append((f"vllm:{path.name}", space.normalize_config(shipped)))
    out.append(("default", space.normalize_config(kconfigs.default_config(m, E, N, K, top_k))))
    return [(label, cfg) for label, cfg in out if space.in_grid(cfg)]

"""Regenerate profiles/traces/*.npz (and the JSON copies) from the OLMoE routing analysis.

Usage: python tools/make_shipped_traces.py [SRC_DIR] [DST_DIR]
Defaults: ../shared/data/routing/olmoe_analysis  ->  profiles/traces
"""

from __future__ import annotations

import sys
from pathlib import Path

from moesim.traces.formats import load_trace
from moesim.traces.shipped import convert_olmoe_analysis, shipped_traces_dir

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    src = Path(argv[0]) if argv else ROOT.parent / "shared" / "data" / "routing" / "olmoe_analysis"
    dst = Path(argv[1]) if len(argv) > 1 else shipped_traces_dir()
    for path in convert_olmoe_analysis(src, dst):
        t = load_trace(path)
        imb = t.load_stats()["max_over_mean"]
        print(
            f"{path.relative_to(dst.parent) if path.is_relative_to(dst.parent) else path}: {t.model} "
            f"layers {list(t.layers)} tokens {t.num_tokens} max/mean {' '.join(f'{x:.2f}' for x in imb)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

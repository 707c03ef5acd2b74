"""The OLMoE routing analysis (allenai/OLMoE ``scripts/routing_output``, converted to JSON; see
``profiles/traces/README.md``) as a trace.

Dimension legend: L recorded layers (model layers ``[0, 7, 15]``), E logical experts, k top-k.

``expert_counts [3][E]`` for the recorded layers and rank-paired ``expert_counts_crosslayer.counts [2][E][E]``
between recorded layers (7 apart, not adjacent). Read as part of the ``json`` format
(:mod:`moesim.traces.formats.json_doc`).
"""

from __future__ import annotations

import itertools
from typing import Any

from moesim.errors import TraceError
from moesim.schema import Fields
from moesim.specs.limits import MAX_EXPERTS, MAX_LAYERS
from moesim.traces.trace import RoutingTrace, int_array, trace_error

OLMOE_ATTRIBUTION = (
    "allenai/OLMoE scripts/routing_output/ (commit 357454f, Apache-2.0, Copyright Allen Institute for AI)"
)
# Hugging Face model ids in the OLMoE analysis JSON -> our model slugs
HF_TO_SLUG = {"allenai/olmoe-1b-7b-0924": "olmoe-1b-7b", "mistralai/mixtral-8x7b-v0.1": "mixtral-8x7b"}


def from_olmoe_json(doc: dict[str, Any], origin: str) -> RoutingTrace:
    """Convert one OLMoE routing-analysis document (one model, one text domain).

    counts = ``expert_counts`` [3, E] (all top-k choices); transitions = ``expert_counts_crosslayer.counts``
    [2, E, E], rank-paired, between recorded layers 0->7 and 7->15.
    """
    f = Fields(origin, doc, error=TraceError)
    E = f.int_("num_experts", minimum=1, maximum=MAX_EXPERTS)
    k = f.int_("top_k", minimum=1, maximum=E)
    layers = tuple(int(x) for x in int_array(f.raw("layers"), origin, "layers", 0, MAX_LAYERS - 1, ndim=1))
    counts = int_array(f.raw("expert_counts"), origin, "expert_counts", minimum=0, ndim=2)
    cross = doc.get("expert_counts_crosslayer")
    if cross is not None and not isinstance(cross, dict):
        raise trace_error(origin, "expert_counts_crosslayer", f"expected a mapping, got {type(cross).__name__}")
    if counts.shape != (len(layers), E):
        raise trace_error(origin, "expert_counts", f"shape {counts.shape}, expected [{len(layers)}, {E}]")
    sums = counts.sum(axis=1)
    if sums.min() != sums.max() or sums[0] % k:
        raise trace_error(origin, "expert_counts", f"row sums {sums.tolist()} are not one multiple of top_k={k}")
    transitions = None
    if cross is not None:
        raw_pairs = int_array(cross.get("layer_pairs", []), origin, "expert_counts_crosslayer.layer_pairs", 0)
        pairs = [tuple(int(x) for x in pr) for pr in raw_pairs.reshape(-1, 2)] if raw_pairs.size % 2 == 0 else []
        want = list(itertools.pairwise(layers))
        if pairs != want:
            raise trace_error(
                origin, "expert_counts_crosslayer.layer_pairs", f"{pairs}, expected consecutive recorded layers {want}"
            )
        if "counts" not in cross:
            raise trace_error(origin, "expert_counts_crosslayer.counts", "missing")
        transitions = int_array(cross["counts"], origin, "expert_counts_crosslayer.counts", minimum=0, ndim=3)
    hf = str(doc.get("model", ""))
    slug = HF_TO_SLUG.get(hf.lower(), "")
    domain = doc.get("domain", "")
    source = f"{hf} routing on {domain} text, {OLMOE_ATTRIBUTION}" if hf else origin
    return RoutingTrace(
        model=slug,
        num_experts=E,
        top_k=k,
        layers=layers,
        counts=counts,
        origin=origin,
        num_tokens=int(sums[0]) // k,
        transitions=transitions,
        topk_ids=None,
        source=source,
    )

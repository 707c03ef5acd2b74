"""Routing traces: which logical experts the router picked, per MoE layer, and where they come from.

Modules, bottom up (each imports only those above it in this list):

* :mod:`.trace`: the :class:`~moesim.traces.trace.RoutingTrace` dataclass, its derivations
  (``counts_from_topk``, ``transitions_from_topk``, ``top_successor_share``) and the shared error helper.
* :mod:`.native`: moesim's own ``.npz`` / JSON format (``save_trace``, the native readers).
* :mod:`.formats`: importers, one module per file format (native, OLMoE analysis JSON, SGLang dumps, vLLM
  ``routed_experts``), registered by the format :func:`~moesim.traces.formats.detect_format` finds;
  :func:`~moesim.traces.formats.load_trace` reads any of them.
* :mod:`.shipped`: the shipped ``profiles/traces/`` folder, trace names, and its regeneration.
* :mod:`.synthetic` (with :mod:`.inclusion`, :mod:`.synthetic_sampling`, :mod:`.synthetic_counts`): seeded
  synthetic traces and popularity drift.
* :mod:`.collector_routing`: AIConfigurator's synthetic collector routings (per-expert counts of its kernels).

This ``__init__`` imports nothing, so importing one module does not load the others.
"""

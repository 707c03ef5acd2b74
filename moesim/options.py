"""The simulator's options, defined once: :class:`SimOptions`, whose every field carries its metadata.

Each field is declared with :func:`option`: its default plus an :class:`OptionMeta` (help text, unit, range,
choices from the family's registry, the CLI flag and its aliases, and whether ``moesim simulate`` and what-if
scenarios expose it). Everything else is derived from these definitions:

- ``SimOptions.__post_init__`` validates every field (:meth:`OptionMeta.problem`), so no invalid
  ``SimOptions`` exists;
- ``cli.simulate_cmd`` builds the command's flags from the fields with ``cli=True`` (:func:`cli_fields`);
- ``whatif.scenario`` takes its scenario keys and their checks from the fields with ``scenario=True``
  (:func:`scenario_fields`, :meth:`OptionMeta.parse`).

Adding a simulator option is one :func:`option` field below.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from moesim.capacity import DROP_POLICIES
from moesim.dispatch import ALLTOALL, DTYPES
from moesim.engine_dispatch import ENGINES
from moesim.errors import field_error
from moesim.fused_moe import EP_MODES
from moesim.placement import DEFAULT_MEMORY_RESERVE
from moesim.specs.limits import MAX_TOKENS_PER_GPU

# bytes per weight element of the expert, dense and attention matmuls
WEIGHT_DTYPES = {"bf16": 2.0, "fp8": 1.0}

ENGINE_HELP = "whose replica choice splits a replicated expert's tokens: " + "; ".join(
    f"{rule.name} ({rule.summary})" for rule in ENGINES.values()
)

META_KEY = "moesim"  # the key of a field's OptionMeta in ``dataclasses.Field.metadata``


@dataclass(frozen=True)
class OptionMeta:
    """What an option field is, for people and for the derived CLI flags and scenario checks.

    ``minimum``: inclusive lower bound (integers, and floats unless ``exclusive``); ``maximum`` with
    ``maximum_note`` (why the limit). ``choices``: the allowed strings (a registry's names). ``none_means``:
    the field takes None, meaning this. ``flags``: the CLI flag and its aliases (default ``--name``; a bool
    option's flag sets it to ``not default``, ``--no-name`` for a default of True). ``cli`` / ``scenario``:
    whether ``moesim simulate`` / what-if scenarios expose it. ``short``: its name in generated scenario names.
    ``parse``: a scenario value's own check (returns the value, raises ``ValueError(problem)``) for fields the
    generic kinds do not cover.
    """

    help: str
    unit: str = ""
    minimum: float | None = None
    exclusive: bool = False
    maximum: float | None = None
    maximum_note: str = ""
    choices: tuple[str, ...] = ()
    none_means: str = ""
    flags: tuple[str, ...] = ()
    cli: bool = True
    scenario: bool = True
    short: str = ""
    parse: Callable[[Any], Any] | None = None

    def problem(self, value: Any) -> str | None:
        """What is wrong with a typed ``value`` (``SimOptions``' messages), None when nothing is."""
        if value is None or isinstance(value, bool):
            return None
        if self.choices:
            return None if value in self.choices else f"must be one of {', '.join(self.choices)}, got {value!r}"
        if self.exclusive:  # a finite number > minimum
            if math.isfinite(value) and value > self.minimum:
                return None
            omit = f" (omit it for {self.none_means})" if self.none_means else ""
            return f"must be a finite number > {self.minimum:g}{omit}, got {value}"
        if self.minimum is not None and value < self.minimum:
            return f"must be >= {self.minimum:g}, got {value}"
        return self._above_maximum(value)

    def parse_value(self, value: Any, kind: type) -> Any:
        """A scenario file's ``value`` checked and normalised for a field of type ``kind`` (``int``,
        ``float``, ``bool`` or ``str``); raises ``ValueError(problem)`` (the scenario's messages)."""
        if self.parse is not None:
            return self.parse(value)
        if value is None and self.none_means:
            return None
        if kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"must be true or false, got {value!r}")
            return value
        if self.choices:
            if value not in self.choices:
                raise ValueError(f"must be one of {', '.join(self.choices)}, got {value!r}")
            return str(value)
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"must be an integer, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"must be a number, got {value!r}")
        lo = self.minimum  # the messages show the value as written (0, not 0.0)
        if lo is not None and (value < lo or (self.exclusive and value == lo)):
            raise ValueError(f"must be {'>' if self.exclusive else '>='} {lo:g}, got {value}")
        problem = self._above_maximum(value)
        if problem:
            raise ValueError(problem)
        return int(value) if kind is int else float(value)

    def _above_maximum(self, value: float) -> str | None:
        if self.maximum is None or value <= self.maximum:
            return None
        if self.maximum_note:
            return f"must be <= {self.maximum:,} ({self.maximum_note}), got {value:,}"
        return f"must be in [{self.minimum:g}, {self.maximum:g}], got {value}"


def option(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field with ``default`` and its :class:`OptionMeta` (``help`` and the ``meta`` keywords)."""
    return field(default=default, metadata={META_KEY: OptionMeta(help=help, **meta)})


def meta_of(f: Any) -> OptionMeta:
    """The :class:`OptionMeta` of a dataclass field declared with :func:`option`."""
    return f.metadata[META_KEY]


def field_kind(cls: type, name: str) -> type:
    """``int``, ``float``, ``bool`` or ``str``: the field's annotation without ``| None``."""
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def cli_flags(f: Any) -> tuple[str, ...]:
    """The field's CLI flag and aliases: ``OptionMeta.flags``, else ``--name`` (``--no-name`` for a bool
    defaulting to True)."""
    meta = meta_of(f)
    if meta.flags:
        return meta.flags
    name = f.name.replace("_", "-")
    return (f"--no-{name}",) if f.default is True else (f"--{name}",)


@dataclass(frozen=True)
class SimOptions:
    """How to run a layer. The first eight fields are the contract in docs/ARCHITECTURE.md.

    ``T = tokens_per_gpu`` tokens on each GPU per layer; capacity ``ceil(T * k / E * capacity_factor)``
    assignments per expert (``moesim.capacity``); the other fields pick a member of a family (drop policy,
    all-to-all scheme, EP mode, engine rule) or a dtype (bytes per element, ``WEIGHT_DTYPES``).
    """

    # The numeric defaults are assumptions, not measurements: 4096 tokens per GPU and a 4096-token sequence (a
    # prefill-sized step), 64-row tiles (the BLOCK_SIZE_M of vLLM's default config for 96 < M <= 512,
    # moesim.vllm_configs.vllm_default_config). Pass the deployment's own values.
    tokens_per_gpu: int = option(
        4096,
        "tokens on each GPU per layer",
        unit="tokens",
        minimum=1,
        maximum=MAX_TOKENS_PER_GPU,
        maximum_note="moesim's limit, see moesim.specs",
        short="tok/gpu",
    )
    capacity_factor: float | None = option(
        None,
        "capacity = ceil(tokens x top_k / E x F) per expert (Megatron's --moe-expert-capacity-factor); "
        "omit for dropless",
        minimum=0.0,
        exclusive=True,
        none_means="no capacity limit",
        flags=("--capacity-factor", "--moe-expert-capacity-factor"),
        short="cf",
    )
    drop_policy: str = option(
        "probs",
        "probs | position (Megatron's --moe-token-drop-policy) | reroute (overflow to the least-loaded "
        "expert with room on the same GPU)",
        choices=tuple(DROP_POLICIES),
        flags=("--drop-policy", "--moe-token-drop-policy"),
        short="drop",
    )
    overlap_chunks: int = option(1, "pipeline chunks (1 = sequential)", minimum=1, short="chunks")
    # fp8 adds per-128-channel FP32 scales (moesim.dispatch.bytes_per_token)
    dispatch_dtype: str = option("bf16", "fp8 | bf16", choices=tuple(DTYPES), short="dispatch")
    combine_dtype: str = option("bf16", "fp8 | bf16", choices=tuple(DTYPES), short="combine")
    # True: a token going to several experts on one GPU is sent once; the flag --no-dedup sends it per expert
    dedup: bool = option(True, "send a token once per expert, not once per GPU")
    alltoall: str = option(
        "flat",
        "flat (NCCL all-to-all) | hierarchical (DeepEP: RDMA + NVLink forwarding)",
        choices=tuple(ALLTOALL),
        short="a2a",
    )
    block_size_m: int = option(
        64,
        "rows per tile of the fused MoE kernel (BLOCK_SIZE_M): each expert's rows are padded to a multiple",
        unit="rows",
        minimum=1,
        short="block_m",
    )
    weight_dtype: str = option("bf16", "bf16 | fp8 weights", choices=tuple(WEIGHT_DTYPES), short="weights")
    seq_len: int = option(
        4096,
        "sequence length behind the attention roofline (dense.py)",
        unit="tokens",
        minimum=1,
        short="seq",
    )
    check_memory: bool = option(
        True,
        "do not refuse placements whose expert weights overflow the planner's HBM budget "
        f"({1 - DEFAULT_MEMORY_RESERVE:.0%} of HBM)",
        short="memcheck",
    )
    ep_mode: str = option(
        "dispatched",
        "dispatched (all-to-all: each GPU gets only its experts' rows, as DeepEP) | allgather (every GPU "
        "sees all tokens and walks all rows, as vLLM EP without an all-to-all backend)",
        choices=tuple(EP_MODES),
        short="ep",
    )
    engine: str = option("placement", ENGINE_HELP, choices=tuple(ENGINES), scenario=False)

    def __post_init__(self) -> None:
        """One-line ``SpecError`` ``options: FIELD: PROBLEM`` naming the first bad option (in field order)."""
        for f in fields(self):
            problem = meta_of(f).problem(getattr(self, f.name))
            if problem:
                raise field_error("options", f.name, problem)


def cli_fields() -> list[Any]:
    """The ``SimOptions`` fields ``moesim simulate`` exposes as flags, in field order."""
    return [f for f in fields(SimOptions) if meta_of(f).cli]


def scenario_fields() -> list[Any]:
    """The ``SimOptions`` fields a what-if scenario may set, in field order."""
    return [f for f in fields(SimOptions) if meta_of(f).scenario]


def options_from(values: Mapping[str, Any], names: Iterable[str] | None = None) -> SimOptions:
    """``SimOptions`` from the ``values`` that name its fields (others ignored; ``names`` restricts further)."""
    keep = {f.name for f in fields(SimOptions)} if names is None else set(names)
    return SimOptions(**{k: v for k, v in values.items() if k in keep})


__all__ = [
    "ENGINE_HELP",
    "OptionMeta",
    "SimOptions",
    "WEIGHT_DTYPES",
    "cli_fields",
    "cli_flags",
    "field_kind",
    "meta_of",
    "option",
    "options_from",
    "scenario_fields",
]

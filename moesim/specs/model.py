"""The model spec: an MoE transformer as far as the cost model needs it, loaded from ``profiles/models/*.yaml``.

Which layers are MoE is written in the YAML as the rule the model's config uses and turned into a tuple here:

- ``moe_layers: all``
- ``moe_layers: {first_k_dense_replace: 3, moe_layer_freq: 1}`` (DeepSeek: layer i is MoE when
  ``i >= first_k_dense_replace and i % moe_layer_freq == 0``)
- ``moe_layers: {every: 2, offset: 1}`` (layer i is MoE when ``i % every == offset``; Switch Transformer)
- ``moe_layers: [3, 4, 5]`` (explicit 0-based indices)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moesim.schema import Fields, choice_problem, int_problem, require
from moesim.specs.files import read_spec_yaml, resolve
from moesim.specs.limits import MAX_EXPERTS, MAX_LAYERS, MAX_WIDTH

__all__ = ["SCORE_FUNCTIONS", "ModelSpec", "load_model"]

SCORE_FUNCTIONS = ("softmax", "sigmoid")

# The range of every integer field, (minimum, maximum or None): the loader and ModelSpec.__post_init__ both read it.
_INT_RANGES: dict[str, tuple[int, int | None]] = {
    "num_layers": (1, MAX_LAYERS),
    "num_experts": (1, MAX_EXPERTS),
    "top_k": (1, None),
    "n_group": (1, None),
    "topk_group": (1, None),
    "num_shared_experts": (0, None),
    "shared_expert_intermediate_size": (0, None),
    "dense_intermediate_size": (0, None),
    "hidden_size": (1, MAX_WIDTH),
    "moe_intermediate_size": (1, MAX_WIDTH),
    "num_attention_heads": (1, None),
    "num_kv_heads": (1, None),
    "head_dim": (1, None),
    "vocab_size": (1, None),
}


@dataclass(frozen=True)
class ModelSpec:
    """An MoE transformer as far as the cost model needs it (numbers from the model's published config).

    Every instance is valid: ``__post_init__`` raises :class:`moesim.schema.FieldError` (a ``SpecError``)
    ``SLUG: FIELD: PROBLEM`` for an out-of-range field or fields that disagree (``top_k > num_experts``,
    ``n_group`` not dividing the experts, MoE layers out of range ...)."""

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

    def __post_init__(self) -> None:
        src = self.slug
        for key, (lo, hi) in _INT_RANGES.items():
            require(src, key, int_problem(getattr(self, key), lo, hi))
        require(src, "score_function", choice_problem(self.score_function, SCORE_FUNCTIONS))
        e, k, groups, kept = self.num_experts, self.top_k, self.n_group, self.topk_group
        if k > e:
            require(src, "top_k", f"must be <= num_experts ({e}), got {k}")
        if e % groups:
            require(src, "n_group", f"must divide num_experts ({e}), got {groups}")
        if kept > groups:
            require(src, "topk_group", f"must be <= n_group ({groups}), got {kept}")
        if groups > 1 and k > kept * (e // groups):
            require(src, "top_k", f"exceeds the {kept * (e // groups)} experts in topk_group groups")
        shared, shared_size = self.num_shared_experts, self.shared_expert_intermediate_size
        if (shared == 0) != (shared_size == 0):
            require(
                src,
                "shared_expert_intermediate_size",
                f"must be 0 exactly when num_shared_experts is 0 (num_shared_experts={shared}, "
                f"shared_expert_intermediate_size={shared_size})",
            )
        require(src, "moe_layers", _layers_problem(self.moe_layers, self.num_layers))
        if self.dense_intermediate_size == 0 and len(self.moe_layers) < self.num_layers:
            require(src, "dense_intermediate_size", "missing: the model has dense layers")
        if self.num_attention_heads % self.num_kv_heads:
            require(
                src,
                "num_kv_heads",
                f"must divide num_attention_heads ({self.num_attention_heads}), got {self.num_kv_heads}",
            )

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


def _layers_problem(layers: object, num_layers: int) -> str | None:
    """What is wrong with ``layers`` as the increasing, distinct MoE layer indices of ``num_layers`` layers."""
    ok = isinstance(layers, (list, tuple)) and all(
        isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in layers
    )
    if not ok:
        return f"expected a list of integer layer indices, got {layers!r}"
    seq = list(layers)  # type: ignore[arg-type]
    if len(set(seq)) != len(seq):
        return "duplicate layer indices"
    if seq != sorted(seq):
        return "layer indices must be increasing"
    bad = [i for i in seq if not 0 <= i < num_layers]
    if bad:
        return f"layer {bad[0]} out of range 0..{num_layers - 1}"
    if not seq:
        return "no MoE layers"
    return None


def _moe_layers(f: Fields, num_layers: int) -> tuple[int, ...]:
    """The MoE layer indices a file's ``moe_layers`` rule names (see the module docstring); ModelSpec checks
    them."""
    rule = f.raw("moe_layers")
    key = "moe_layers"
    if rule == "all":
        return tuple(range(num_layers))
    if isinstance(rule, list):
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in rule):
            raise f.err(key, f"expected a list of integer layer indices, got {rule!r}")
        return tuple(rule)
    if not isinstance(rule, dict):
        raise f.err(key, f"expected 'all', a list of indices or a rule mapping, got {rule!r}")
    sub = Fields(f.src, rule, "moe_layers.")
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
    return tuple(layers)


def _model_from(path: Path) -> ModelSpec:
    f = Fields(str(path), read_spec_yaml(path))
    defaults = {"n_group": 1, "topk_group": 1, "num_shared_experts": 0, "shared_expert_intermediate_size": 0}

    def int_(key: str) -> int:
        lo, hi = _INT_RANGES[key]
        return f.int_(key, defaults.get(key, ...), minimum=lo, maximum=hi)

    slug = f.str_("slug", path.stem)
    ints = {key: int_(key) for key in ("num_layers", "num_experts", "top_k", "n_group", "topk_group")}
    ints.update({key: int_(key) for key in ("num_shared_experts", "shared_expert_intermediate_size")})
    moe_layers = _moe_layers(f, ints["num_layers"])
    dense = f.int_("dense_intermediate_size", 0, minimum=0)
    spec = f.build(
        ModelSpec,
        slug=slug,
        name=f.str_("name"),
        source=f.str_("source"),
        moe_layers=moe_layers,
        dense_intermediate_size=dense,
        hidden_size=int_("hidden_size"),
        moe_intermediate_size=int_("moe_intermediate_size"),
        score_function=f.str_("score_function", choices=SCORE_FUNCTIONS),
        num_attention_heads=int_("num_attention_heads"),
        num_kv_heads=int_("num_kv_heads"),
        head_dim=int_("head_dim"),
        vocab_size=int_("vocab_size"),
        **ints,
    )
    # `notes` and `config` hold free-form provenance (raw config keys we do not model); never read as numbers.
    f.done(optional=("notes", "config"))
    return spec


def load_model(name_or_path: str | Path) -> ModelSpec:
    """Load a model by slug (``deepseek-v3``) or YAML path; :class:`SpecError` on any problem."""
    return _model_from(resolve("models", name_or_path))

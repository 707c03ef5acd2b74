"""Routing traces: which logical experts the router picked, per MoE layer.

Dimension legend: T tokens, L recorded MoE layers (in ``RoutingTrace.layers`` order), E logical experts,
k top-k.

A trace holds up to three views of the same routing, from coarse to fine:

* ``counts[L, E]``: assignments per expert (all k choices of every token), so ``counts[l].sum() == T * k``.
* ``transitions[L-1, E, E]``: ``transitions[l, i, j]`` = number of (token, rank r) pairs whose rank-r choice
  was expert i in recorded layer l and expert j in recorded layer l+1. Choices are paired *by rank* (the
  convention of the OLMoE routing analysis), so rows sum to ``counts[l]`` and columns to ``counts[l+1]``.
  Recorded layers need not be adjacent model layers (the shipped OLMoE traces record layers 0, 7, 15).
* ``topk_ids[T, L, k]``: per-token choices, from which both others derive (:func:`counts_from_topk`,
  :func:`transitions_from_topk`).

Files: :func:`moesim.traces.formats.load_trace` auto-detects the format; :func:`moesim.traces.native.save_trace`
writes the native ``.npz``. Every trace problem is a ``TraceError`` ``ORIGIN: FIELD: PROBLEM``
(:func:`trace_error`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from moesim.errors import TraceError
from moesim.schema import int_array as _schema_int_array

if TYPE_CHECKING:  # moesim.specs is light, but keep the import graph one-way at runtime too
    from moesim.specs import ModelSpec


def int_array(value: Any, source: str, field: str, *args: Any, **kwargs: Any) -> np.ndarray:
    """:func:`moesim.schema.int_array` raising ``TraceError`` (every trace loader's error)."""
    return _schema_int_array(value, source, field, *args, error=TraceError, **kwargs)


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its type name when it has none (for one-line errors)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def trace_error(origin: str, fld: str, problem: str) -> TraceError:
    """The one-line ``TraceError`` ``ORIGIN: FIELD: PROBLEM`` every trace module raises."""
    return TraceError(f"{origin}: {fld}: {problem}")


# ----------------------------------------------------------------------------------------------------------
# derivations (pure, vectorised)
# ----------------------------------------------------------------------------------------------------------
def counts_from_topk(topk_ids: np.ndarray, num_experts: int) -> np.ndarray:
    """Assignments per expert from per-token choices.

    topk_ids: [T, L, k] int, values in [0, E). Returns counts [L, E] int64 with
    ``counts[l, e] = #{(t, r) : topk_ids[t, l, r] == e}``.
    """
    ids = np.asarray(topk_ids)
    _T, L, _k = ids.shape
    out = np.empty((L, num_experts), dtype=np.int64)
    for l in range(L):  # one layer at a time: no int64 copy of all the ids (T * L * k * 8 bytes)
        out[l] = np.bincount(ids[:, l, :].ravel(), minlength=num_experts)
    return out


def transitions_from_topk(topk_ids: np.ndarray, num_experts: int) -> np.ndarray:
    """Rank-paired transition counts between consecutive recorded layers.

    topk_ids: [T, L, k]. Returns [L-1, E, E] int64 with
    ``trans[l, i, j] = #{(t, r) : topk_ids[t, l, r] == i and topk_ids[t, l+1, r] == j}``.
    Row sums equal ``counts[l]``, column sums ``counts[l+1]``.
    """
    ids = np.asarray(topk_ids)
    _T, L, _k = ids.shape
    E = num_experts
    out = np.empty((max(L - 1, 0), E, E), dtype=np.int64)
    for l in range(L - 1):  # one layer pair at a time: [T, k] keys, not [T, L-1, k]
        key = ids[:, l, :].astype(np.int64) * E + ids[:, l + 1, :]
        out[l] = np.bincount(key.ravel(), minlength=E * E).reshape(E, E)
    return out


def top_successor_share(transitions: np.ndarray, n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """How concentrated transitions are.

    transitions: [L-1, E, E]. For each layer pair, the share of (token, rank) pairs whose next-layer expert is
    among the ``n`` most frequent successors of their current expert:
    ``share[l] = sum_i sum_{j in top_n(trans[l, i, :])} trans[l, i, j] / sum trans[l]``.
    Also returns the same share if the next layer were independent of the current one (successor rows
    proportional to the next layer's counts), as a baseline: ``sum_{j in top_n(colsum)} colsum[j] / total``.
    Returns (share[L-1], independent_share[L-1]), floats in [0, 1].
    """
    tr = np.asarray(transitions, dtype=np.int64)
    if tr.shape[0] == 0:
        return np.zeros(0), np.zeros(0)
    E = tr.shape[-1]
    n = min(n, E)
    total = tr.sum(axis=(1, 2)).astype(np.float64)
    top = -np.sort(-tr, axis=2)[:, :, :n].sum(axis=(1, 2))
    col = tr.sum(axis=1)  # [L-1, E]: next-layer counts
    base = -np.sort(-col, axis=1)[:, :n].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, top / total, 0.0)
        ind = np.where(total > 0, base / total, 0.0)
    return share, ind


# ----------------------------------------------------------------------------------------------------------
# the trace
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RoutingTrace:
    """Routing of ``num_tokens`` tokens through the recorded MoE layers of one model.

    counts: [L, E] int64, rows sum to ``num_tokens * top_k``.
    transitions: [L-1, E, E] int64 or None, rank-paired (see module docstring).
    topk_ids: [T, L, k] int32 or None; when given, counts and transitions must agree with it.
    layers: model layer index of each recorded layer (0-based, in the model's numbering).
    """

    model: str
    num_experts: int
    top_k: int
    layers: tuple[int, ...]
    counts: np.ndarray
    num_tokens: int
    transitions: np.ndarray | None = None
    topk_ids: np.ndarray | None = None
    source: str = ""
    # the file it was read from, for error messages only (the embedded ``source`` may describe its origin);
    # not data: it is left out of equality and of the saved file
    origin: str = field(default="", repr=False, compare=False)
    # not part of equality: arrays compare elementwise
    __hash__ = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        origin = self.origin or self.source or "trace"
        set_ = object.__setattr__
        E, k = int(self.num_experts), int(self.top_k)
        set_(self, "num_experts", E)
        set_(self, "top_k", k)
        set_(self, "num_tokens", int(self.num_tokens))
        set_(self, "layers", tuple(int(x) for x in self.layers))
        set_(self, "model", str(self.model or ""))
        if E < 1:
            raise trace_error(origin, "num_experts", f"must be >= 1, got {E}")
        if not 1 <= k <= E:
            raise trace_error(origin, "top_k", f"must be in [1, num_experts={E}], got {k}")
        if self.num_tokens < 0:
            raise trace_error(origin, "num_tokens", f"must be >= 0, got {self.num_tokens}")
        L = len(self.layers)
        if L < 1:
            raise trace_error(origin, "layers", "no recorded layers")
        if len(set(self.layers)) != L or any(x < 0 for x in self.layers):
            raise trace_error(origin, "layers", f"must be distinct non-negative indices, got {list(self.layers)}")

        counts = np.asarray(self.counts)
        if counts.shape != (L, E):
            raise trace_error(origin, "counts", f"shape {counts.shape}, expected [L={L}, E={E}]")
        if not np.issubdtype(counts.dtype, np.integer) and not np.all(np.equal(np.mod(counts, 1), 0)):
            raise trace_error(origin, "counts", "must be integers")
        counts = counts.astype(np.int64)
        if (counts < 0).any():
            raise trace_error(origin, "counts", "negative count")
        want = self.num_tokens * k
        bad = np.nonzero(counts.sum(axis=1) != want)[0]
        if bad.size:
            l0 = int(bad[0])
            raise trace_error(
                origin,
                "counts",
                f"layer {self.layers[l0]} sums to {int(counts[l0].sum())}, "
                f"expected num_tokens*top_k = {self.num_tokens}*{k} = {want}",
            )
        counts.setflags(write=False)
        set_(self, "counts", counts)

        if self.transitions is not None:
            tr = np.asarray(self.transitions)
            if tr.shape != (L - 1, E, E):
                raise trace_error(origin, "transitions", f"shape {tr.shape}, expected [L-1={L - 1}, E={E}, E={E}]")
            tr = tr.astype(np.int64)
            if (tr < 0).any():
                raise trace_error(origin, "transitions", "negative count")
            bad = np.nonzero((tr.sum(axis=2) != counts[:-1]).any(axis=1))[0]
            if bad.size:
                l0 = int(bad[0])
                raise trace_error(
                    origin, "transitions", f"rows of pair {l0} do not sum to the counts of layer {self.layers[l0]}"
                )
            tr.setflags(write=False)
            set_(self, "transitions", tr)

        if self.topk_ids is not None:
            ids = np.asarray(self.topk_ids)
            if ids.ndim != 3 or ids.shape != (self.num_tokens, L, k):
                raise trace_error(
                    origin, "topk_ids", f"shape {ids.shape}, expected [T={self.num_tokens}, L={L}, k={k}]"
                )
            if not np.issubdtype(ids.dtype, np.integer):
                raise trace_error(origin, "topk_ids", f"must be integers, got {ids.dtype}")
            if ids.size and (ids.min() < 0 or ids.max() >= E):
                raise trace_error(origin, "topk_ids", f"ids must be in [0, {E}), got [{ids.min()}, {ids.max()}]")
            ids = ids.astype(np.int32)
            if k > 1 and (np.diff(np.sort(ids, axis=2), axis=2) == 0).any():
                raise trace_error(origin, "topk_ids", "a token picks the same expert twice in one layer")
            if not np.array_equal(counts_from_topk(ids, E), counts):
                raise trace_error(origin, "counts", "disagree with topk_ids")
            if self.transitions is not None and not np.array_equal(transitions_from_topk(ids, E), self.transitions):
                raise trace_error(origin, "transitions", "disagree with topk_ids")
            ids.setflags(write=False)
            set_(self, "topk_ids", ids)

    # -- constructors -----------------------------------------------------------------------------------
    @classmethod
    def from_topk_ids(
        cls,
        topk_ids: np.ndarray,
        num_experts: int,
        layers: Sequence[int] | None = None,
        model: str = "",
        source: str = "",
        keep_topk_ids: bool = True,
    ) -> RoutingTrace:
        """Build a trace (counts and transitions derived) from topk_ids [T, L, k]."""
        ids = np.asarray(topk_ids)
        if ids.ndim != 3:
            raise trace_error(source or "trace", "topk_ids", f"expected [T, L, k], got shape {ids.shape}")
        T, L, k = ids.shape
        if ids.size and (ids.min() < 0 or ids.max() >= num_experts):
            raise trace_error(
                source or "trace", "topk_ids", f"ids must be in [0, {num_experts}), got [{ids.min()}, {ids.max()}]"
            )
        return cls(
            model=model,
            num_experts=num_experts,
            top_k=k,
            layers=tuple(layers) if layers is not None else tuple(range(L)),
            counts=counts_from_topk(ids, num_experts),
            num_tokens=T,
            transitions=transitions_from_topk(ids, num_experts),
            topk_ids=ids.astype(np.int32) if keep_topk_ids else None,
            source=source,
        )

    # -- queries ----------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def layer_index(self, model_layer: int) -> int:
        """Position in ``layers`` of a model layer index."""
        try:
            return self.layers.index(int(model_layer))
        except ValueError:
            raise trace_error(
                self.source or "trace", "layers", f"layer {model_layer} not recorded {list(self.layers)}"
            ) from None

    def load_stats(self) -> dict[str, np.ndarray]:
        """Per-layer load statistics over experts: max, mean, max/mean, coefficient of variation (std/mean)."""
        c = self.counts.astype(np.float64)
        mean = c.mean(axis=1)
        mx = c.max(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            imb = np.where(mean > 0, mx / mean, 0.0)
            cv = np.where(mean > 0, c.std(axis=1) / mean, 0.0)
        return {"max": mx, "mean": mean, "max_over_mean": imb, "cv": cv}

    def with_model(self, model: str) -> RoutingTrace:
        return replace(self, model=model)

    def without_topk_ids(self) -> RoutingTrace:
        return replace(self, topk_ids=None)

    def check_model(self, model: ModelSpec, origin: str) -> None:
        """Raise TraceError (``ORIGIN: FIELD: PROBLEM``) unless this trace fits ``model``: same expert count and
        top-k, and every recorded layer is one of the model's MoE layers."""
        slug = getattr(model, "slug", "?")
        if self.num_experts != model.num_experts:
            raise trace_error(
                origin, "num_experts", f"trace has {self.num_experts} experts but model {slug} has {model.num_experts}"
            )
        if self.top_k != model.top_k:
            raise trace_error(origin, "top_k", f"trace has top_k {self.top_k} but model {slug} has {model.top_k}")
        moe = {int(x) for x in model.moe_layers}
        extra = [x for x in self.layers if x not in moe]
        if extra:
            raise trace_error(
                origin,
                "layers",
                f"trace layers {extra} are not MoE layers of model {slug} (MoE layers {min(moe)}..{max(moe)})"
                if moe
                else f"model {slug} has no MoE layers",
            )
        # a trace recorded on another model of the same shape (experts, top-k, layers) is accepted on purpose:
        # the cost model needs the shape, and e.g. Mixtral-8x7B routing is the usual stand-in for Mixtral-8x22B

    def __eq__(self, other: object) -> bool:  # arrays compared by value
        if not isinstance(other, RoutingTrace):
            return NotImplemented

        def same(a: Any, b: Any) -> bool:
            if a is None or b is None:
                return a is None and b is None
            return np.array_equal(a, b)

        return (
            self.model == other.model
            and self.num_experts == other.num_experts
            and self.top_k == other.top_k
            and self.layers == other.layers
            and self.num_tokens == other.num_tokens
            and self.source == other.source
            and same(self.counts, other.counts)
            and same(self.transitions, other.transitions)
            and same(self.topk_ids, other.topk_ids)
        )


__all__ = [
    "RoutingTrace",
    "counts_from_topk",
    "first_line",
    "int_array",
    "top_successor_share",
    "trace_error",
    "transitions_from_topk",
]

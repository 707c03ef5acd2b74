"""What-if scenario files: a base configuration and the axes (or named variants) to sweep.

A scenario file is YAML, loaded with ``yaml.safe_load`` and validated here, in one place::

    title: EP degree for DeepSeek-V3            # optional, shown in the report
    description: ...                            # optional, one paragraph
    objective: step_latency_us                  # or tokens_per_s_per_gpu (higher is better)
    baseline: dgx-h100                          # optional: name of the scenario the others are compared to
    include_base: false                         # true: evaluate the base itself too, as scenario "base"
    base:                                       # every field of ``Scenario`` except ``name``
      model: deepseek-v3                        # slug or path (relative to this file)
      cluster: dgx-h100
      trace: synthetic:zipf:1.2                 # or a trace file path (relative to this file)
      tokens_per_gpu: 4096
      placement: contiguous                     # contiguous | round-robin | eplb | eplb-global | ilp ...
    axes:                                       # the sweep is the product of these lists
      cluster: [dgx-h100, h100-2x8-ib400]
      capacity_factor: [null, 1.0, 1.25]
    scenarios:                                  # or/and named variants: overrides of the base
      - {name: pcie, cluster: h100-pcie-8}

With both ``scenarios`` and ``axes`` the sweep is every named variant times the axis product. With neither the
base alone is evaluated; ``include_base: true`` puts the base first as a scenario named ``base`` (handy when
the base, e.g. dropless, is not a point of the sweep, e.g. capacity factor x drop policy). The baseline is the
scenario named by ``baseline``; without it, the scenario whose settings equal the base (if the sweep contains
it), else the first one.

Every error is one line, ``FILE: FIELD: PROBLEM`` (``moesim.errors.field_error``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from moesim.capacity import DROP_POLICIES
from moesim.errors import field_error
from moesim.placement import PlacementMethod

# the placement family's names (moesim.placement.PlacementMethod); "round_robin" is accepted for "round-robin"
PLACEMENT_METHODS = tuple(m.value for m in PlacementMethod)

DTYPES = ("bf16", "fp8")
ALLTOALL_SCHEMES = ("flat", "hierarchical")
EP_MODES = ("dispatched", "allgather")
OBJECTIVES = {"step_latency_us": "min", "tokens_per_s_per_gpu": "max"}
SYNTHETIC_PREFIX = "synthetic:"
# Most scenarios one file may expand to: a limit that stops a mistyped sweep, not a comfortable size. results.json
# held 19.6 MB for 100 DeepSeek-V3 scenarios (issue 17's measurement), so 100,000 would be about 20 GB.
MAX_SCENARIOS = 100_000

# Short names used in generated scenario names ("cf=1.25 drop=probs").
_SHORT = {
    "capacity_factor": "cf",
    "drop_policy": "drop",
    "tokens_per_gpu": "tok/gpu",
    "redundant_experts": "redundant",
    "overlap_chunks": "chunks",
    "dispatch_dtype": "dispatch",
    "combine_dtype": "combine",
    "placement": "placement",
    "alltoall": "a2a",
    "trace_seed": "seed",
    "weight_dtype": "weights",
    "ep_mode": "ep",
    "calibration": "cal",
}


@dataclass(frozen=True)
class Scenario:
    """One fully specified what-if point. Paths are stored as given; ``resolve`` makes them absolute.

    ``trace`` is a trace file, a shipped trace's slug (``olmoe_c4``) or ``synthetic:SPEC`` with SPEC as in
    ``moesim.trace.parse_synthetic`` (``zipf:1.2``, ``dirichlet:0.3``, ``uniform``). A synthetic trace has
    ``trace_tokens`` tokens per layer (default: ``min(tokens_per_gpu * num_gpus, 2^18)``, as ``moesim simulate``
    draws) with ``trace_seed``.
    ``layers`` restricts the step to these model layer indices (None: every layer of the trace).
    """

    name: str = "base"
    model: str = ""
    cluster: str = ""
    trace: str = "synthetic:zipf:1.2"
    trace_tokens: int | None = None
    trace_seed: int = 0
    trace_affinity: float = 0.0
    layers: tuple[int, ...] | None = None
    tokens_per_gpu: int = 4096
    placement: str = "contiguous"
    redundant_experts: int = 0
    ilp_time_limit_s: float = 30.0
    capacity_factor: float | None = None
    drop_policy: str = "probs"
    overlap_chunks: int = 1
    dispatch_dtype: str = "bf16"
    combine_dtype: str = "bf16"
    alltoall: str = "flat"
    dedup: bool = True
    weight_dtype: str = "bf16"
    ep_mode: str = "dispatched"
    calibration: str = "auto"  # auto (the GPU's shipped calibration) | none | a calibration.json
    axis_values: tuple[tuple[str, Any], ...] = field(default=(), compare=False)  # what the sweep set

    @property
    def is_synthetic(self) -> bool:
        return self.trace.startswith(SYNTHETIC_PREFIX)

    @property
    def synthetic_spec(self) -> str:
        return self.trace[len(SYNTHETIC_PREFIX) :]

    def settings(self) -> dict[str, Any]:
        """Every field but ``name`` and ``axis_values``: what determines the result."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("name", "axis_values")}

    def resolve(self, base_dir: Path) -> Scenario:
        """Make the model, cluster and trace paths absolute when they name files relative to ``base_dir``.

        Slugs (``deepseek-v3``) are left alone: ``moesim.specs`` resolves them.
        """

        def fix(value: str) -> str:
            if _looks_like_path(value):
                p = Path(value).expanduser()
                if not p.is_absolute():
                    # relative to the scenario file, else to the working directory, else to the directory
                    # holding the installed `profiles` package (the shipped examples name profiles/...)
                    from moesim.specs import profiles_dir

                    roots = (base_dir, Path.cwd(), profiles_dir().resolve().parent)
                    found = [(r / p).resolve() for r in roots if (r / p).exists()]
                    p = found[0] if found else (base_dir / p).resolve()
                return str(p)
            return value

        if self.is_synthetic:
            trace = self.trace
        elif _looks_like_path(self.trace):
            trace = fix(self.trace)
        else:  # a shipped trace's slug, as `moesim simulate --trace olmoe_c4` accepts
            from moesim.trace import shipped_traces_dir

            trace = str(shipped_traces_dir().resolve() / f"{self.trace}.npz")
        return dataclasses.replace(self, model=fix(self.model), cluster=fix(self.cluster), trace=trace)


@dataclass(frozen=True)
class ScenarioFile:
    """A parsed scenario file: the expanded list of scenarios and which one is the baseline."""

    path: str
    title: str
    description: str
    objective: str
    base: Scenario
    axes: tuple[tuple[str, tuple[Any, ...]], ...]
    scenarios: tuple[Scenario, ...]  # expanded, in sweep order, unique names
    baseline_index: int
    named_variants: bool = False  # the file lists `scenarios:` (names chosen by a person, not generated)

    @property
    def baseline(self) -> Scenario:
        return self.scenarios[self.baseline_index]

    @property
    def base_dir(self) -> Path:
        return Path(self.path).resolve().parent

    @property
    def minimize(self) -> bool:
        return OBJECTIVES[self.objective] == "min"


_SCENARIO_FIELDS = {f.name: f for f in fields(Scenario) if f.name != "axis_values"}
_TOP_KEYS = ("title", "description", "objective", "baseline", "include_base", "base", "axes", "scenarios")


def _looks_like_path(value: str) -> bool:
    return "/" in value or value.endswith((".yaml", ".yml", ".npz", ".json", ".jsonl"))


def _check_value(src: str, where: str, name: str, value: Any) -> Any:
    """Validate and normalise one scenario field; raise a one-line SpecError naming SRC and WHERE."""
    fname = f"{where}.{name}" if where else name
    if name not in _SCENARIO_FIELDS:
        known = ", ".join(k for k in _SCENARIO_FIELDS if k != "name")
        raise field_error(src, fname, f"unknown field (known: {known})")

    def bad(problem: str) -> Exception:
        return field_error(src, fname, problem)

    def as_int(lo: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(f"must be an integer, got {value!r}")
        if value < lo:
            raise bad(f"must be >= {lo}, got {value}")
        return int(value)

    def as_float(lo: float, strict: bool) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad(f"must be a number, got {value!r}")
        if value < lo or (strict and value == lo):
            raise bad(f"must be {'>' if strict else '>='} {lo:g}, got {value}")
        return float(value)

    def as_choice(choices: tuple[str, ...], v: Any = value) -> str:
        if v not in choices:
            raise bad(f"must be one of {', '.join(choices)}, got {value!r}")
        return str(v)

    if name in ("name", "model", "cluster", "trace"):
        if not isinstance(value, str) or not value.strip():
            raise bad(f"must be a non-empty string, got {value!r}")
        value = value.strip()
        if name == "trace" and value.startswith(SYNTHETIC_PREFIX) and not value[len(SYNTHETIC_PREFIX) :]:
            raise bad("synthetic trace needs a spec, e.g. synthetic:zipf:1.2")
        return value
    if name == "trace_tokens":
        return None if value is None else as_int(1)
    if name in ("trace_seed", "redundant_experts"):
        return as_int(0)
    if name == "tokens_per_gpu":
        from moesim.specs import MAX_TOKENS_PER_GPU

        v = as_int(1)
        if v > MAX_TOKENS_PER_GPU:
            raise bad(f"must be <= {MAX_TOKENS_PER_GPU:,} (moesim's limit, see moesim.specs), got {v:,}")
        return v
    if name == "overlap_chunks":
        return as_int(1)
    if name == "trace_affinity":
        v = as_float(0.0, False)
        if v > 1.0:
            raise bad(f"must be in [0, 1], got {value}")
        return v
    if name == "ilp_time_limit_s":
        return as_float(0.0, True)
    if name == "capacity_factor":
        return None if value is None else as_float(0.0, True)
    if name == "layers":
        if value is None:
            return None
        if not isinstance(value, list) or not value:
            raise bad(f"must be a non-empty list of layer indices or null, got {value!r}")
        out = []
        for v in value:
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise bad(f"layer indices must be integers >= 0, got {v!r}")
            out.append(int(v))
        if len(set(out)) != len(out):
            raise bad(f"repeated layer index in {out}")
        return tuple(out)
    if name == "placement":
        return as_choice(PLACEMENT_METHODS, value.replace("_", "-") if isinstance(value, str) else value)
    if name == "drop_policy":
        return as_choice(DROP_POLICIES)
    if name in ("dispatch_dtype", "combine_dtype", "weight_dtype"):
        return as_choice(DTYPES)
    if name == "alltoall":
        return as_choice(ALLTOALL_SCHEMES)
    if name == "ep_mode":
        return as_choice(EP_MODES)
    if name == "calibration":
        if not isinstance(value, str) or not value:
            raise bad(f"must be auto, none or a calibration.json path, got {value!r}")
        return value
    if name == "dedup":
        if not isinstance(value, bool):
            raise bad(f"must be true or false, got {value!r}")
        return value
    raise AssertionError(name)  # every field is handled above


def _overrides(src: str, where: str, raw: Any, allow_name: bool) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise field_error(src, where, f"must be a mapping, got {type(raw).__name__}")
    out = {}
    for key, value in raw.items():
        if key == "name" and not allow_name:
            raise field_error(src, f"{where}.name", "the base has no name; name the scenarios instead")
        out[str(key)] = _check_value(src, where, str(key), value)
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, str) and _looks_like_path(value):
        return Path(value).stem
    return str(value)


def _axis_label(axes: tuple[tuple[str, tuple[Any, ...]], ...], values: tuple[Any, ...]) -> str:
    if len(axes) == 1:
        name = axes[0][0]
        # A lone string axis reads best as the bare value ("dgx-h100"); numbers need their name.
        return _fmt(values[0]) if isinstance(values[0], str) else f"{_SHORT.get(name, name)}={_fmt(values[0])}"
    return " ".join(f"{_SHORT.get(n, n)}={_fmt(v)}" for (n, _), v in zip(axes, values))


def parse_scenarios(data: Any, source: str = "<scenarios>") -> ScenarioFile:
    """Validate a loaded YAML document and expand it into scenarios. ``source`` names the file in errors."""
    src = source
    if not isinstance(data, dict):
        raise field_error(src, "<document>", f"must be a mapping with a 'base', got {type(data).__name__}")
    for key in data:
        if key not in _TOP_KEYS:
            raise field_error(src, str(key), f"unknown field (known: {', '.join(_TOP_KEYS)})")
    if "base" not in data:
        raise field_error(src, "base", "missing (model, cluster, trace, ...)")
    base_over = _overrides(src, "base", data["base"], allow_name=False)
    for required in ("model", "cluster"):
        if required not in base_over:
            raise field_error(src, f"base.{required}", "missing")
    base = Scenario(**base_over)

    title = data.get("title", Path(source).stem)
    description = data.get("description", "")
    for key, val in (("title", title), ("description", description)):
        if not isinstance(val, str):
            raise field_error(src, key, f"must be a string, got {val!r}")
    objective = data.get("objective", "step_latency_us")
    if not isinstance(objective, str) or objective not in OBJECTIVES:
        raise field_error(src, "objective", f"must be one of {', '.join(OBJECTIVES)}, got {objective!r}")

    axes: list[tuple[str, tuple[Any, ...]]] = []
    raw_axes = data.get("axes") or {}
    if not isinstance(raw_axes, dict):
        raise field_error(src, "axes", f"must be a mapping of field: [values], got {type(raw_axes).__name__}")
    for name, values in raw_axes.items():
        name = str(name)
        if name == "name":
            raise field_error(src, "axes.name", "cannot sweep the scenario name")
        if not isinstance(values, list) or not values:
            raise field_error(src, f"axes.{name}", f"must be a non-empty list of values, got {values!r}")
        checked = tuple(_check_value(src, "axes", name, v) for v in values)
        if len(set(map(repr, checked))) != len(checked):
            raise field_error(src, f"axes.{name}", f"repeated value in {list(values)}")
        axes.append((name, checked))

    variants: list[dict[str, Any]] = []
    raw_sc = data.get("scenarios")
    if raw_sc is not None:
        if not isinstance(raw_sc, list) or not raw_sc:
            raise field_error(src, "scenarios", "must be a non-empty list of mappings")
        for i, item in enumerate(raw_sc):
            over = _overrides(src, f"scenarios[{i}]", item, allow_name=True)
            if "name" not in over:
                raise field_error(src, f"scenarios[{i}].name", "missing")
            clash = [n for n, _ in axes if n in over]
            if clash:
                raise field_error(src, f"scenarios[{i}].{clash[0]}", "is also an axis; set it in one place")
            variants.append(over)
    else:
        variants.append({})

    include_base = data.get("include_base", False)
    if not isinstance(include_base, bool):
        raise field_error(src, "include_base", f"must be true or false, got {include_base!r}")
    expanded: list[Scenario] = (
        [dataclasses.replace(base, name="base")] if include_base and (axes or raw_sc is not None) else []
    )
    axis_names = tuple(n for n, _ in axes)
    points = math.prod(len(v) for _, v in axes) * max(1, len(variants))
    if points > MAX_SCENARIOS:
        raise field_error(src, "axes", f"{points:,} scenarios, more than moesim's limit of {MAX_SCENARIOS:,}")
    combos = list(itertools.product(*(v for _, v in axes))) if axes else [()]
    for over in variants:
        for combo in combos:
            settings = {**base_over, **over, **dict(zip(axis_names, combo))}
            label = _axis_label(tuple(axes), combo) if axes else ""
            vname = over.get("name")
            if vname and label:
                name = f"{vname} / {label}"
            else:
                name = vname or label or "base"
            settings["name"] = name
            settings["axis_values"] = tuple(zip(axis_names, combo))
            expanded.append(Scenario(**settings))

    seen: dict[str, int] = {}
    for i, sc in enumerate(expanded):
        if sc.name in seen:
            raise field_error(src, "scenarios", f"two scenarios are named {sc.name!r}")
        seen[sc.name] = i

    if "baseline" in data:
        bl = data["baseline"]
        if not isinstance(bl, str) or bl not in seen:
            raise field_error(src, "baseline", f"no scenario is named {bl!r} (have: {', '.join(seen)})")
        baseline_index = seen[bl]
    else:
        base_settings = base.settings()
        baseline_index = next((i for i, sc in enumerate(expanded) if sc.settings() == base_settings), 0)

    return ScenarioFile(
        path=source,
        title=title,
        description=description.strip(),
        objective=objective,
        base=base,
        axes=tuple(axes),
        scenarios=tuple(expanded),
        baseline_index=baseline_index,
        named_variants=raw_sc is not None,
    )


def load_scenarios(path: str | Path) -> ScenarioFile:
    """Read and validate a scenario YAML file. Raises ``SpecError`` (one line, naming the file) when bad."""
    from moesim.fileio import read_yaml

    src = str(path)
    return parse_scenarios(read_yaml(path, src, mapping=False), source=src)

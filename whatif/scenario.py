"""What-if scenario files: a base configuration and the axes (or named variants) to sweep.

A scenario file is YAML, loaded with ``yaml.safe_load`` and validated here, in one place::

    title: EP degree for DeepSeek-V3            # optional, shown in the report
    description: ...                            # optional, one paragraph
    objective: step_latency_us                  # or tokens_per_s_per_gpu (higher is better)
    baseline: dgx-h100                          # optional: name of the scenario the others are compared to
    include_base: false                         # true: evaluate the base itself too, as scenario "base"
    base:                                       # every scenario key except ``name`` (inputs, options)
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

The keys are ``Scenario``'s input fields and the simulator options of ``moesim.options.SimOptions`` marked
``scenario=True``; each is checked by its field's metadata (``OptionMeta.parse_value``: kind, range, choices).
Every error is one line, ``FILE: FIELD: PROBLEM`` (``moesim.errors.field_error``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from moesim.errors import field_error
from moesim.options import SimOptions, field_kind, meta_of, option, scenario_fields
from moesim.placement import PlacementMethod

# the placement family's names (moesim.placement.PlacementMethod); "round_robin" is accepted for "round-robin"
PLACEMENT_METHODS = tuple(m.value for m in PlacementMethod)

OBJECTIVES = {"step_latency_us": "min", "tokens_per_s_per_gpu": "max"}
SYNTHETIC_PREFIX = "synthetic:"
# Most scenarios one file may expand to: a limit that stops a mistyped sweep, not a comfortable size. results.json
# holds 0.3 MB for the 100 DeepSeek-V3 scenarios of benchmarks/bench_whatif.py, 8.3 MB with --detail
# (docs/WHATIF.md), so 100,000 would be about 0.3 GB, or 8 GB with --detail.
MAX_SCENARIOS = 100_000


# ------------------------------------------------------------------------- checks of the fields the kinds miss
def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, got {value!r}")
    return value.strip()


def _trace(value: Any) -> str:
    value = _text(value)
    if value.startswith(SYNTHETIC_PREFIX) and not value[len(SYNTHETIC_PREFIX) :]:
        raise ValueError("synthetic trace needs a spec, e.g. synthetic:zipf:1.2")
    return value


def _layers(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise ValueError(f"must be a non-empty list of layer indices or null, got {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"layer indices must be integers >= 0, got {v!r}")
    out = tuple(int(v) for v in value)
    if len(set(out)) != len(out):
        raise ValueError(f"repeated layer index in {list(out)}")
    return out


def _placement(value: Any) -> str:
    v = value.replace("_", "-") if isinstance(value, str) else value
    if v not in PLACEMENT_METHODS:
        raise ValueError(f"must be one of {', '.join(PLACEMENT_METHODS)}, got {value!r}")
    return str(v)


def _calibration(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be auto, none or a calibration.json path, got {value!r}")
    return value


@dataclass(frozen=True)
class Scenario:
    """One fully specified what-if point: its inputs, and ``options``, the simulator's ``SimOptions``.

    Paths are stored as given; ``resolve`` makes them absolute. ``trace`` is a trace file, a shipped trace's
    slug (``olmoe_c4``) or ``synthetic:SPEC`` with SPEC as in ``moesim.traces.synthetic.parse_synthetic`` (``zipf:1.2``,
    ``dirichlet:0.3``, ``uniform``). A synthetic trace has ``trace_tokens`` tokens per layer (default:
    ``min(tokens_per_gpu * num_gpus, 2^18)``, as ``moesim simulate`` draws) with ``trace_seed``.
    ``layers`` restricts the step to these model layer indices (None: every layer of the trace).

    A scenario file's keys are these input fields plus the ``SimOptions`` fields marked ``scenario=True``
    (``moesim.options``); an option reads as an attribute too (``scenario.capacity_factor``).
    """

    name: str = option("base", "the scenario's name in the report", parse=_text)
    model: str = option("", "model slug or YAML path (relative to the scenario file)", parse=_text)
    cluster: str = option("", "cluster slug or YAML path (relative to the scenario file)", parse=_text)
    trace: str = option("synthetic:zipf:1.2", "trace file, shipped trace slug or synthetic:SPEC", parse=_trace)
    trace_tokens: int | None = option(
        None, "tokens per layer of a synthetic trace", unit="tokens", minimum=1, none_means="as simulate draws"
    )
    trace_seed: int = option(0, "seed of a synthetic trace", minimum=0, short="seed")
    trace_affinity: float = option(0.0, "layer-to-layer affinity of a synthetic trace", minimum=0.0, maximum=1.0)
    layers: tuple[int, ...] | None = option(None, "model layer indices to simulate (null: all)", parse=_layers)
    placement: str = option("contiguous", "placement method (moesim.placement.PlacementMethod)", parse=_placement)
    redundant_experts: int = option(0, "extra expert replicas to place", minimum=0, short="redundant")
    ilp_time_limit_s: float = option(30.0, "time limit of the ilp placement", unit="s", minimum=0.0, exclusive=True)
    calibration: str = option(
        "auto", "auto (the GPU's shipped calibration) | none | a calibration.json", parse=_calibration, short="cal"
    )
    options: SimOptions = field(default_factory=SimOptions)
    axis_values: tuple[tuple[str, Any], ...] = field(default=(), compare=False)  # what the sweep set

    @classmethod
    def from_settings(cls, **settings: Any) -> Scenario:
        """A scenario from flat settings: input fields and scenario-settable ``SimOptions`` fields by name."""
        opts = {k: settings.pop(k) for k in list(settings) if k in _OPTION_FIELDS}
        return cls(**settings, options=SimOptions(**opts))

    def __getattr__(self, name: str) -> Any:
        # only reached for names that are not fields: the options read as attributes of the scenario
        if name in _OPTION_FIELDS:
            return getattr(object.__getattribute__(self, "options"), name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def is_synthetic(self) -> bool:
        return self.trace.startswith(SYNTHETIC_PREFIX)

    @property
    def synthetic_spec(self) -> str:
        return self.trace[len(SYNTHETIC_PREFIX) :]

    def settings(self) -> dict[str, Any]:
        """What determines the result, flat: every input but ``name`` and every scenario option.

        In ``RECORD_COLUMNS`` order (results.csv's columns); an option not in it follows, and only when set
        away from its default, so records of scenarios that do not use it stay as they were.
        """
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name in _INPUT_FIELDS}
        values.update({f.name: getattr(self.options, f.name) for f in _OPTION_FIELDS.values()})
        out = {k: values[k] for k in RECORD_COLUMNS}
        for f in _OPTION_FIELDS.values():
            if f.name not in out and values[f.name] != f.default:
                out[f.name] = values[f.name]
        return out

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
            from moesim.traces.shipped import shipped_traces_dir

            trace = str(shipped_traces_dir().resolve() / f"{self.trace}.npz")
        return dataclasses.replace(self, model=fix(self.model), cluster=fix(self.cluster), trace=trace)


# The settings of a record, in results.csv's column order since issue 17 (inputs and options interleaved). Kept
# as is so the files of earlier sweeps and these compare column by column; options added since follow.
RECORD_COLUMNS = (
    "model", "cluster", "trace", "trace_tokens", "trace_seed", "trace_affinity", "layers", "tokens_per_gpu",
    "placement", "redundant_experts", "ilp_time_limit_s", "capacity_factor", "drop_policy", "overlap_chunks",
    "dispatch_dtype", "combine_dtype", "alltoall", "dedup", "weight_dtype", "ep_mode", "calibration",
)  # fmt: skip
_INPUT_FIELDS = {f.name: f for f in fields(Scenario) if f.name not in ("options", "axis_values")}
_OPTION_FIELDS = {f.name: f for f in scenario_fields()}
# every key a scenario may set: (its metadata, its kind), inputs first, then the options in field order
_SCENARIO_KEYS = {
    **{n: (meta_of(f), field_kind(Scenario, n)) for n, f in _INPUT_FIELDS.items()},
    **{n: (meta_of(f), field_kind(SimOptions, n)) for n, f in _OPTION_FIELDS.items()},
}
_TOP_KEYS = ("title", "description", "objective", "baseline", "include_base", "base", "axes", "scenarios")


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


def _looks_like_path(value: str) -> bool:
    return "/" in value or value.endswith((".yaml", ".yml", ".npz", ".json", ".jsonl"))


def _check_value(src: str, where: str, name: str, value: Any) -> Any:
    """Validate and normalise one scenario field by its metadata; raise a one-line SpecError naming SRC and
    WHERE."""
    fname = f"{where}.{name}" if where else name
    if name not in _SCENARIO_KEYS:
        known = ", ".join(k for k in _SCENARIO_KEYS if k != "name")
        raise field_error(src, fname, f"unknown field (known: {known})")
    meta, kind = _SCENARIO_KEYS[name]
    try:
        return meta.parse_value(value, kind)
    except ValueError as exc:
        raise field_error(src, fname, str(exc)) from None


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


def _short(name: str) -> str:
    """A field's name in generated scenario names (``OptionMeta.short``, else the name)."""
    meta = _SCENARIO_KEYS[name][0] if name in _SCENARIO_KEYS else None
    return meta.short if meta is not None and meta.short else name


def _axis_label(axes: tuple[tuple[str, tuple[Any, ...]], ...], values: tuple[Any, ...]) -> str:
    if len(axes) == 1:
        name = axes[0][0]
        # A lone string axis reads best as the bare value ("dgx-h100"); numbers need their name.
        return _fmt(values[0]) if isinstance(values[0], str) else f"{_short(name)}={_fmt(values[0])}"
    return " ".join(f"{_short(n)}={_fmt(v)}" for (n, _), v in zip(axes, values))


def _header(src: str, data: dict, source: str) -> tuple[str, str, str]:
    """``(title, description, objective)`` of a scenario document."""
    title = data.get("title", Path(source).stem)
    description = data.get("description", "")
    for key, val in (("title", title), ("description", description)):
        if not isinstance(val, str):
            raise field_error(src, key, f"must be a string, got {val!r}")
    objective = data.get("objective", "step_latency_us")
    if not isinstance(objective, str) or objective not in OBJECTIVES:
        raise field_error(src, "objective", f"must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    return title, description, objective


def _axes(src: str, raw_axes: Any) -> list[tuple[str, tuple[Any, ...]]]:
    """The ``axes`` mapping as ``[(field, checked values)]``, in file order."""
    raw_axes = raw_axes or {}
    if not isinstance(raw_axes, dict):
        raise field_error(src, "axes", f"must be a mapping of field: [values], got {type(raw_axes).__name__}")
    axes: list[tuple[str, tuple[Any, ...]]] = []
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
    return axes


def _variants(src: str, raw_sc: Any, axes: list[tuple[str, tuple[Any, ...]]]) -> list[dict[str, Any]]:
    """The named variants of ``scenarios:`` (overrides of the base), or one empty variant without them."""
    if raw_sc is None:
        return [{}]
    if not isinstance(raw_sc, list) or not raw_sc:
        raise field_error(src, "scenarios", "must be a non-empty list of mappings")
    variants = []
    for i, item in enumerate(raw_sc):
        over = _overrides(src, f"scenarios[{i}]", item, allow_name=True)
        if "name" not in over:
            raise field_error(src, f"scenarios[{i}].name", "missing")
        clash = [n for n, _ in axes if n in over]
        if clash:
            raise field_error(src, f"scenarios[{i}].{clash[0]}", "is also an axis; set it in one place")
        variants.append(over)
    return variants


def _expand(
    base_over: dict[str, Any], variants: list[dict[str, Any]], axes: list[tuple[str, tuple[Any, ...]]]
) -> list[Scenario]:
    """Every variant times the axis product, named ``VARIANT / AXIS LABEL`` (either alone, else ``base``)."""
    axis_names = tuple(n for n, _ in axes)
    combos = list(itertools.product(*(v for _, v in axes))) if axes else [()]
    out = []
    for over in variants:
        for combo in combos:
            settings = {**base_over, **over, **dict(zip(axis_names, combo))}
            label = _axis_label(tuple(axes), combo) if axes else ""
            vname = over.get("name")
            settings["name"] = f"{vname} / {label}" if vname and label else vname or label or "base"
            settings["axis_values"] = tuple(zip(axis_names, combo))
            out.append(Scenario.from_settings(**settings))
    return out


def _baseline_index(src: str, data: dict, base: Scenario, expanded: list[Scenario]) -> int:
    """The scenario named by ``baseline``; else the one whose settings equal the base's; else the first."""
    seen: dict[str, int] = {}
    for i, sc in enumerate(expanded):
        if sc.name in seen:
            raise field_error(src, "scenarios", f"two scenarios are named {sc.name!r}")
        seen[sc.name] = i
    if "baseline" in data:
        bl = data["baseline"]
        if not isinstance(bl, str) or bl not in seen:
            raise field_error(src, "baseline", f"no scenario is named {bl!r} (have: {', '.join(seen)})")
        return seen[bl]
    base_settings = base.settings()
    return next((i for i, sc in enumerate(expanded) if sc.settings() == base_settings), 0)


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
    base = Scenario.from_settings(**base_over)
    title, description, objective = _header(src, data, source)
    axes = _axes(src, data.get("axes"))
    raw_sc = data.get("scenarios")
    variants = _variants(src, raw_sc, axes)

    include_base = data.get("include_base", False)
    if not isinstance(include_base, bool):
        raise field_error(src, "include_base", f"must be true or false, got {include_base!r}")
    points = math.prod(len(v) for _, v in axes) * max(1, len(variants))
    if points > MAX_SCENARIOS:
        raise field_error(src, "axes", f"{points:,} scenarios, more than moesim's limit of {MAX_SCENARIOS:,}")
    expanded = [dataclasses.replace(base, name="base")] if include_base and (axes or raw_sc is not None) else []
    expanded += _expand(base_over, variants, axes)
    return ScenarioFile(
        path=source,
        title=title,
        description=description.strip(),
        objective=objective,
        base=base,
        axes=tuple(axes),
        scenarios=tuple(expanded),
        baseline_index=_baseline_index(src, data, base, expanded),
        named_variants=raw_sc is not None,
    )


def load_scenarios(path: str | Path) -> ScenarioFile:
    """Read and validate a scenario YAML file. Raises ``SpecError`` (one line, naming the file) when bad."""
    from moesim.fileio import read_yaml

    src = str(path)
    return parse_scenarios(read_yaml(path, src, mapping=False), source=src)

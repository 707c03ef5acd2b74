"""The architecture's rules, read from the source (AST only: nothing under test is imported).

Layers, bottom to top, and what each may import (issue 16)::

    moesim   <- tuner, kernels   <- whatif   <- cli

- (a) imports point down only: ``moesim`` imports none of ``tuner``, ``kernels``, ``whatif``, ``cli``;
  ``tuner`` and ``kernels`` import neither ``whatif`` nor ``cli``; ``whatif`` imports no ``cli``. Every import
  counts: module level, inside functions (lazy), under ``if TYPE_CHECKING:``, and ``importlib.import_module("...")``
  with a literal name. ``torch`` and ``triton`` are optional extras, not layers: ``moesim`` never imports them at
  module level, and only inside a function that needs them (reading an SGLang ``.pt`` dump needs ``torch.load``).
- (b) the module graph has no cycle: an edge A -> B when A imports module B, or imports a name from package B that
  is not itself a module (the name resolves to B's ``__init__.py``). Imports under ``if TYPE_CHECKING:`` never run,
  so they make no edge here.
- (c) no module is above :data:`MAX_LINES` physical lines.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("moesim", "tuner", "kernels", "whatif", "cli")
LINE_COUNTED = (*PACKAGES, "tests", "benchmarks", "tools")
MAX_LINES = 500

# the top-level packages (and third-party roots) each layer must not import
FORBIDDEN: dict[str, frozenset[str]] = {
    "moesim": frozenset({"tuner", "kernels", "whatif", "cli"}),
    "tuner": frozenset({"whatif", "cli"}),
    "kernels": frozenset({"whatif", "cli"}),
    "whatif": frozenset({"cli"}),
    "cli": frozenset(),
}
# optional extras a layer may import only inside a function (the import-time test in tests/moesim checks the rest)
LAZY_ONLY: dict[str, frozenset[str]] = {"moesim": frozenset({"torch", "triton"})}


@dataclass(frozen=True)
class Import:
    """One import statement's target: ``module`` (absolute, dotted), the ``names`` taken from it (empty for
    ``import module``), the line, whether it sits under ``if TYPE_CHECKING:`` and whether inside a function."""

    module: str
    names: tuple[str, ...]
    line: int
    type_checking: bool
    in_function: bool = False


def module_name(path: Path) -> str:
    """``moesim/traces/__init__.py`` -> ``moesim.traces``; ``moesim/specs.py`` -> ``moesim.specs``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> dict[str, Path]:
    """Every module of the five packages, by dotted name."""
    files = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            files[module_name(path)] = path
    return files


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve_relative(current: str, is_package: bool, level: int, module: str | None) -> str:
    """The absolute name of ``from {'.' * level}{module} import ...`` written in module ``current``."""
    base = current.split(".") if is_package else current.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


class _Collector(ast.NodeVisitor):
    def __init__(self, current: str, is_package: bool) -> None:
        self.current, self.is_package = current, is_package
        self.imports: list[Import] = []
        self._tc_depth = 0
        self._fn_depth = 0

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._fn_depth += 1
        self.generic_visit(node)
        self._fn_depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._tc_depth += 1
            for child in node.body:
                self.visit(child)
            self._tc_depth -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.imports.append(Import(alias.name, (), node.lineno, self._tc_depth > 0, self._fn_depth > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            module = _resolve_relative(self.current, self.is_package, node.level, node.module)
        else:
            module = node.module or ""
        names = tuple(alias.name for alias in node.names)
        self.imports.append(Import(module, names, node.lineno, self._tc_depth > 0, self._fn_depth > 0))

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in ("import_module", "__import__") and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("."):
                self.imports.append(Import(arg.value, (), node.lineno, self._tc_depth > 0, self._fn_depth > 0))
        self.generic_visit(node)


def imports_of(path: Path) -> list[Import]:
    """Every import in ``path``, at any depth, relative ones made absolute."""
    current = module_name(path)
    collector = _Collector(current, path.name == "__init__.py")
    collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return collector.imports


def _known(module: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``module`` that is one of ours (``import a.b.c`` of a name ``c`` -> ``a.b``)."""
    parts = module.split(".")
    while parts:
        name = ".".join(parts)
        if name in modules:
            return name
        parts.pop()
    return None


def targets(imp: Import, modules: dict[str, Path]) -> set[str]:
    """The modules of ours an import binds: each ``from pkg import name`` that names a submodule goes to that
    submodule's file, any other name to the package's own ``__init__.py``."""
    found: set[str] = set()
    for name in imp.names:
        sub = f"{imp.module}.{name}"
        if name != "*" and sub in modules:
            found.add(sub)
        elif (known := _known(imp.module, modules)) is not None:
            found.add(known)
    if not imp.names and (known := _known(imp.module, modules)) is not None:
        found.add(known)
    return found


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_layers_point_down_only() -> None:
    offenders = []
    for name, path in source_files().items():
        layer = name.split(".")[0]
        banned, lazy_only = FORBIDDEN[layer], LAZY_ONLY.get(layer, frozenset())
        for imp in imports_of(path):
            root = imp.module.split(".")[0]
            if root in banned or (root in lazy_only and not imp.in_function):
                where = " (TYPE_CHECKING)" if imp.type_checking else ""
                offenders.append(f"{_rel(path)}:{imp.line}: imports {imp.module}{where}")
    assert not offenders, "imports that point up a layer:\n" + "\n".join(offenders)


def import_graph() -> nx.DiGraph:
    """Our modules and the runtime edges between them (TYPE_CHECKING imports left out; no self-loops)."""
    modules = source_files()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        for imp in imports_of(path):
            if imp.type_checking:
                continue
            for target in targets(imp, modules) - {name}:
                graph.add_edge(name, target, line=imp.line)
    return graph


def test_no_import_cycle() -> None:
    graph = import_graph()
    cycles = []
    for component in nx.strongly_connected_components(graph):
        if len(component) < 2:
            continue
        sub = graph.subgraph(component)
        edges = sorted(f"{a} -> {b} (line {sub.edges[a, b]['line']})" for a, b in sub.edges)
        cycles.append(f"{{{', '.join(sorted(component))}}}: " + "; ".join(edges))
    assert not cycles, f"{len(cycles)} import cycle(s):\n" + "\n".join(sorted(cycles))


def test_no_module_above_max_lines() -> None:
    offenders = []
    for top in LINE_COUNTED:
        for path in sorted((ROOT / top).rglob("*.py")):
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > MAX_LINES:
                offenders.append(f"{_rel(path)}: {lines} lines")
    assert not offenders, f"modules above {MAX_LINES} lines:\n" + "\n".join(offenders)


def test_the_walker_sees_the_packages() -> None:
    """A guard for the three tests above: they walk real files and resolve relative imports."""
    modules = source_files()
    assert {"moesim", "moesim.simulate", "tuner", "cli.main"} <= set(modules)
    assert _resolve_relative("tuner.placers.ilp", False, 1, "base") == "tuner.placers.base"
    assert _resolve_relative("tuner.placers", True, 1, "base") == "tuner.placers.base"
    assert _resolve_relative("tuner.placers.ilp", False, 2, None) == "tuner"
    assert targets(Import("moesim", ("specs",), 1, False), modules) == {"moesim.specs"}
    assert import_graph().number_of_edges() > 0
    lazy = _Collector("moesim.x", False)
    lazy.visit(ast.parse("import torch\ndef f():\n    import torch\n"))
    assert [imp.in_function for imp in lazy.imports] == [False, True]


def _covers(stem: str, parts: list[str]) -> bool:
    """Whether test module ``test_<stem>`` names one of ``parts`` (the module and its packages below the layer):
    the name itself, a split of it (``test_formats_vllm`` for the ``formats`` package, ``test_synthetic`` for
    ``synthetic_counts``, split out of it for size)."""
    return any(stem == p or stem.startswith(p + "_") or p.startswith(stem + "_") for p in parts)


def test_every_module_has_a_test_module() -> None:
    """Tests mirror the packages: every module has a ``test_<module>.py``, or belongs to a family package whose
    ``test_<package>.py`` tests its members through the registry."""
    stems = {p.stem.removeprefix("test_") for p in (ROOT / "tests").rglob("test_*.py")}
    missing = []
    for name, path in source_files().items():
        parts = name.split(".")[1:]
        if path.name in ("__init__.py", "__main__.py") or not parts:
            continue
        if not any(_covers(stem, parts) for stem in stems):
            missing.append(_rel(path))
    assert not missing, "modules without a test module:\n" + "\n".join(missing)

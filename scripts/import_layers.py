"""saehealth's import graph (read with `ast`, function-level imports included) against the layers declared in
pyproject.toml's `[[tool.saehealth.layers]]`: modules in no layer, imports that go up a layer, import cycles.

    python scripts/import_layers.py      # prints each problem with what to do; exit 1 if any, silent and 0 if none

tests/unit/test_import_layers.py runs the same checks; scripts/architecture_diagram.py draws the graph by layer.
An import counts the way Python executes it: `from saehealth.advice import knobs` runs saehealth/advice/__init__.py
as well as knobs.py, so it is an edge to both (write `import saehealth.advice.knobs as knobs` inside the package).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

try:  # Python ≥ 3.11; 3.10 has the tomli backport (as saehealth/thresholds.py)
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - depends on the interpreter
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "saehealth"
DECLARATION = "pyproject.toml's [[tool.saehealth.layers]]"


@dataclass(frozen=True)
class Layer:
    name: str
    owns: str
    modules: tuple[str, ...]  # names inside the package ("metrics", "activations.scoring", "__init__")


@dataclass(frozen=True)
class Import:
    """`importer` imports `imported` at `path`:`line` (the first such line of that module)."""

    importer: str
    imported: str
    path: str
    line: int


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name), e.g. saehealth.report.html."""
    modules = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph(root: Path = ROOT) -> dict[str, dict[str, Import]]:
    """importer -> {imported module: Import} over the package's own modules (imports of the bare package, whose
    public names load lazily, are left out)."""
    modules = module_files(root)
    graph: dict[str, dict[str, Import]] = {}
    for name, path in modules.items():
        edges: dict[str, Import] = {}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for target in _targets(node, package):
                while target and target not in modules:  # `from a.b import name`: a.b, unless name is a module
                    target = target.rpartition(".")[0]
                if target and target not in (name, PACKAGE) and target not in edges:
                    edges[target] = Import(name, target, str(path.relative_to(root)), node.lineno)
        graph[name] = edges
    return graph


def _targets(node: ast.AST, package: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: `from . import x` inside package a.b is a.b.x
            parts = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(parts + ([base] if base else []))
        return [base] + [f"{base}.{alias.name}" for alias in node.names]
    return []


def declared_layers(root: Path = ROOT) -> list[Layer]:
    """The layers, bottom first, as pyproject.toml declares them."""
    with open(root / "pyproject.toml", "rb") as file:
        table = tomllib.load(file).get("tool", {}).get("saehealth", {}).get("layers", [])
    return [Layer(entry["name"], entry.get("owns", ""), tuple(entry["modules"])) for entry in table]


def layer_of(module: str, layers: list[Layer]) -> int | None:
    """Index of the layer whose longest declared name covers `module` (saehealth.x.y is covered by "x.y" and "x");
    None when no layer does."""
    relative = "__init__" if module == PACKAGE else module.removeprefix(PACKAGE + ".")
    best, best_length = None, -1
    for index, layer in enumerate(layers):
        for declared in layer.modules:
            covers = relative == declared or (declared != "__init__" and relative.startswith(declared + "."))
            if covers and len(declared) > best_length:
                best, best_length = index, len(declared)
    return best


def duplicate_declarations(layers: list[Layer]) -> list[str]:
    """A name declared twice (in one layer or two): which layer wins would depend on the order."""
    seen: dict[str, str] = {}
    problems = []
    for layer in layers:
        for declared in layer.modules:
            if declared in seen:
                problems.append(f'"{declared}" is declared in layer {seen[declared]} and again in {layer.name}')
            seen[declared] = layer.name
    return problems


def undeclared(graph: dict[str, dict[str, Import]], layers: list[Layer], root: Path = ROOT) -> list[str]:
    """One line per module in no layer, saying where to declare it."""
    files = module_files(root)
    order = " < ".join(layer.name for layer in layers)
    problems = []
    for module in sorted(graph):
        if layer_of(module, layers) is None:
            relative = module.removeprefix(PACKAGE + ".")
            imports = sorted({_layer_name(t, layers) for t in graph[module]} - {None})
            problems.append(
                f'{files[module].relative_to(root)} ({module}) is in no layer: add "{relative}" to the `modules` '
                f"of its layer in {DECLARATION} (bottom to top: {order}; a module may import only from its own "
                f"layer and those below; it imports from: {', '.join(imports) or 'no saehealth layer'}); check with "
                "python scripts/import_layers.py"
            )
    return problems


def upward_imports(graph: dict[str, dict[str, Import]], layers: list[Layer]) -> list[str]:
    """One line per import from a lower layer to a higher one."""
    problems = []
    for module in sorted(graph):
        low = layer_of(module, layers)
        for target, edge in sorted(graph[module].items()):
            high = layer_of(target, layers)
            if low is not None and high is not None and high > low:
                problems.append(
                    f"{edge.path}:{edge.line}: {module} (layer {layers[low].name}) imports {target} (layer "
                    f"{layers[high].name}, above it): move what it needs down to layer {layers[low].name} or below, "
                    f"or pass it in from the caller; if the module itself sits in the wrong layer, move its entry "
                    f"in {DECLARATION}"
                )
    return problems


def cycles(graph: dict[str, dict[str, Import]]) -> list[list[Import]]:
    """One import loop per strongly connected group of modules (Tarjan), each as the edges that close it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # recursion depth is bounded by the number of modules (~150)
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_loop(graph, group) for group in groups]


def _loop(graph: dict[str, dict[str, Import]], group: set[str]) -> list[Import]:
    """The shortest loop through the group's first module (breadth first), as its import edges."""
    start = min(group)
    came_from: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target, edge in sorted(graph[node].items()):
                if target in group and target not in came_from:
                    came_from[target] = edge
                    following.append(target)
        if start in came_from:
            break
        frontier = following
    loop, node = [], start
    while True:
        edge = came_from[node]
        loop.append(edge)
        node = edge.importer
        if node == start:
            return loop[::-1]


def describe_cycle(loop: list[Import]) -> str:
    steps = "; ".join(f"{edge.path}:{edge.line} imports {edge.imported}" for edge in loop)
    return (
        f"import cycle {' -> '.join([loop[0].importer] + [edge.imported for edge in loop])}: {steps}. Break it "
        "where an import goes up a layer: move the shared piece down, or have the caller pass it in"
    )


def problems(root: Path = ROOT) -> list[str]:
    """Every problem the layer test fails on, one line each (none when the house is in order)."""
    graph, layers = import_graph(root), declared_layers(root)
    if not layers:
        return [f"no layers declared: {DECLARATION} lists them, bottom to top"]
    return (
        duplicate_declarations(layers)
        + undeclared(graph, layers, root)
        + upward_imports(graph, layers)
        + [describe_cycle(loop) for loop in cycles(graph)]
    )


def _layer_name(module: str, layers: list[Layer]) -> str | None:
    found = layer_of(module, layers)
    return None if found is None else layers[found].name


if __name__ == "__main__":
    found = problems()
    for problem in found:
        print(problem)
    sys.exit(1 if found else 0)

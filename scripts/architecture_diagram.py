"""The house in one picture: a Mermaid diagram of saehealth's layers (pyproject.toml's [[tool.saehealth.layers]])
and the imports between their parts, generated from the import graph (scripts/import_layers.py).

    python scripts/architecture_diagram.py                 # print the diagram
    python scripts/architecture_diagram.py --write docs/architecture.md   # replace the diagram in the page
    python scripts/architecture_diagram.py --check docs/architecture.md   # exit 1 when the page's diagram is stale

A part is a declared name ("loading", "activations.scoring"): each module is drawn as the longest declared name that
covers it. An arrow A --> B means some module of A imports some module of B; an arrow implied by a longer path of
arrows is left out (transitive reduction), so the picture stays readable while every dependency remains a path.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from import_layers import PACKAGE, declared_layers, import_graph, layer_of  # noqa: E402

BEGIN, END = "<!-- architecture diagram: begin (python scripts/architecture_diagram.py --write) -->", "<!-- end -->"


def part_of(module: str, layers) -> str | None:
    """The longest declared name covering `module` ("loading" for saehealth.loading.files)."""
    relative = "__init__" if module == PACKAGE else module.removeprefix(PACKAGE + ".")
    index = layer_of(module, layers)
    if index is None:
        return None
    covering = [d for d in layers[index].modules if relative == d or relative.startswith(d + ".")]
    return max(covering, key=len)


def part_edges(graph, layers) -> tuple[dict[str, int], set[tuple[str, str]]]:
    """({part: layer index}, {(importer part, imported part)}) over the modules that exist."""
    parts, edges = {}, set()
    for module, imports in graph.items():
        source = part_of(module, layers)
        if source is None:
            continue
        parts[source] = layer_of(module, layers)
        for target in imports:
            imported = part_of(target, layers)
            if imported is not None and imported != source:
                edges.add((source, imported))
    return parts, edges


def transitive_reduction(edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The edges not implied by a longer path (the graph has no cycle: the layer test guarantees it)."""
    following: dict[str, set[str]] = {}
    for a, b in edges:
        following.setdefault(a, set()).add(b)

    def reachable_without(start: str, skip: str) -> set[str]:
        seen, stack = set(), [n for n in following.get(start, ()) if n != skip]
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(following.get(node, ()))
        return seen

    return {(a, b) for a, b in edges if b not in reachable_without(a, b)}


def mermaid(root: Path | None = None) -> str:
    """The diagram: one box per layer, top layer first, its parts inside; arrows point to what is imported."""
    kwargs = {} if root is None else {"root": root}
    layers, graph = declared_layers(**kwargs), import_graph(**kwargs)
    parts, edges = part_edges(graph, layers)
    lines = ["```mermaid", "flowchart TB"]
    for index in reversed(range(len(layers))):
        members = sorted(p for p, i in parts.items() if i == index)
        lines.append(f'  subgraph L{index}["{layers[index].name}"]')
        lines += [f'    {_node(p)}["{_label(p)}"]' for p in members]
        lines.append("  end")
    lines += [f"  {_node(a)} --> {_node(b)}" for a, b in sorted(transitive_reduction(edges))]
    lines.append("```")
    return "\n".join(lines)


def _node(part: str) -> str:
    return "n_" + part.replace(".", "_").strip("_")


def _label(part: str) -> str:
    return f"{PACKAGE} (public API)" if part == "__init__" else part


def replaced(page: str, diagram: str) -> str:
    start, stop = page.index(BEGIN) + len(BEGIN), page.index(END, page.index(BEGIN))
    return page[:start] + "\n" + diagram + "\n" + page[stop:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, help="a page holding the diagram between its markers")
    group.add_argument("--check", type=Path, help="exit 1 when this page's diagram differs from the code's")
    args = parser.parse_args()
    diagram = mermaid()
    if args.write:
        args.write.write_text(replaced(args.write.read_text(), diagram))
    elif args.check:
        page = args.check.read_text()
        if replaced(page, diagram) != page:
            print(
                f"{args.check}: the diagram is stale; run python scripts/architecture_diagram.py --write {args.check}"
            )
            return 1
    else:
        print(diagram)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The package's layering, read from the source (every `import` and `from ... import` of `llava_manager`, module
level or inside functions): no import cycles between modules, and each area imports only the areas below it."""

from __future__ import annotations

import ast
from pathlib import Path

import llava_manager

PACKAGE = Path(llava_manager.__file__).resolve().parent  # the checkout's, or the installed wheel's in CI

# area -> the areas it may import (besides itself). Top-level modules (`__init__`, `__main__`, `cost`, `upstream`,
# `_compat`) are the package's front and may import any area.
ALLOWED = {
    "families": set(),
    "core": {"families"},
    "processing": {"families"},
    "runtime": {"core"},
    "synthetic": {"core", "families", "processing"},
    "training": {"core", "families", "processing", "runtime", "synthetic"},
    "evaluation": {"core", "families", "processing"},
    "analysis": {"core", "families", "processing", "training"},
    "tower": {"core", "processing", "runtime"},
}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules `name` imports (a `from X import y` counts as X.y when that is a module, else X)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "llava_manager":
                continue
            for alias in node.names:
                out.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "llava_manager"}
    out.discard(name)
    return {m for m in out if m in known}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def area(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read_from_the_source():
    edges = graph()
    # known edges, one per kind of import: relative module, relative name from a package, absolute
    assert "llava_manager.runtime.trainer" in edges["llava_manager.training.trainer"]
    assert "llava_manager.core.patch" in edges["llava_manager.training.trainer"]
    assert "llava_manager.runtime.commits" in edges["llava_manager.tower.training.train"]


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_each_area_imports_only_the_areas_below_it():
    areas = {a for a in (area(m) for m in graph()) if a}
    assert areas == set(ALLOWED), f"areas without a rule (add them to ALLOWED): {sorted(areas ^ set(ALLOWED))}"
    wrong = sorted(
        f"{m} imports {t}"
        for m, targets in graph().items()
        for t in targets
        if area(m) and area(t) and area(t) != area(m) and area(t) not in ALLOWED[area(m)]
    )
    assert wrong == []

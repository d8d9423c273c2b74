"""The import graph of the ``ldm`` and ``sepce`` packages has no cycles, ``ldm`` does not import ``sepce``, and no
method module (``sepce/methods/``) imports the concept world (``sepce.world``).

The graph is read from the source with :mod:`ast` (nothing is imported): every ``import``/``from ... import`` at
module level and inside functions and classes counts, with relative imports resolved and ``from pkg import name``
pointing at the submodule ``pkg.name`` when there is one (else at ``pkg`` itself, i.e. its ``__init__``). Imports
under ``if TYPE_CHECKING:`` never run and are left out. An edge to a package's ``__init__`` is only drawn when the
package itself is imported (``import pkg``, ``from pkg import attribute``), not for every submodule import: Python
imports a partly initialised parent package without trouble, so those implicit edges cannot deadlock.

A cycle is a defect even when it happens to work (deferred function-level imports): it makes the import order
matter, and it is how the checkpoint loader and ``DDPM`` once ended up loading weights two different ways.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

PACKAGES = {"ldm": REPO / "ldm-replace" / "ldm", "sepce": REPO / "sepce"}


def module_files() -> dict[str, Path]:
    """Dotted module name → source file, for every module of :data:`PACKAGES`."""
    out = {}
    for name, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            parts = [name, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST):
    """Every Import/ImportFrom node, at any depth, except the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``module`` (source ``path``) imports."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            base_parts = package[: len(package) - (node.level - 1)]
            base = ".".join(base_parts + ([node.module] if node.module else []))
        else:
            base = node.module
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            targets.add(sub if sub in known else base)
    resolved = set()
    for target in targets:
        # "import a.b.c" of a module that does not exist (an attribute path) falls back to its longest known prefix.
        parts = target.split(".")
        while parts and ".".join(parts) not in known:
            parts.pop()
        if parts:
            resolved.add(".".join(parts))
    resolved.discard(module)
    return resolved


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {m: imported_modules(m, p, known) for m, p in files.items()}


def components(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (each one holds at least one cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:  # Tarjan's algorithm
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return sorted(found)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle, as a closed path ``[a, b, ..., a]``, through the first module of each component."""
    return [_shortest_cycle(graph, set(c), c[0]) for c in components(graph)]


def _shortest_cycle(graph: dict[str, set[str]], members: set[str], start: str) -> list[str]:
    """Breadth-first search inside one strongly connected component for the shortest way back to ``start``."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is in a strongly connected component but on no cycle")


def describe(graph: dict[str, set[str]], package: str) -> str:
    """One line per cycle, with the other modules of its component when it has more than the cycle shows."""
    lines = []
    for component in components(graph):
        if component[0].split(".")[0] != package:
            continue
        cycle = _shortest_cycle(graph, set(component), component[0])
        rest = sorted(set(component) - set(cycle))
        lines.append(" -> ".join(cycle) + (f"   (same component: {', '.join(rest)})" if rest else ""))
    return "\n".join(lines)


def test_graph_sees_function_level_and_relative_imports(tmp_path):
    """The parser itself: deferred imports, relative imports, ``from pkg import submodule``, TYPE_CHECKING."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import top\n"
        "def f():\n    from ..top import g\n"
    )
    (pkg / "top.py").write_text(
        "import os\nfrom pkg import sub\nclass A:\n    def m(self):\n        import pkg.sub.leaf\n"
    )
    known = {"pkg", "pkg.sub", "pkg.sub.leaf", "pkg.top"}
    assert imported_modules("pkg.sub", pkg / "sub" / "__init__.py", known) == {"pkg.sub.leaf"}
    assert imported_modules("pkg.sub.leaf", pkg / "sub" / "leaf.py", known) == {"pkg.top"}
    assert imported_modules("pkg.top", pkg / "top.py", known) == {"pkg.sub", "pkg.sub.leaf"}
    graph = {
        m: imported_modules(m, p, known)
        for m, p in [
            ("pkg", pkg / "__init__.py"),
            ("pkg.sub", pkg / "sub" / "__init__.py"),
            ("pkg.sub.leaf", pkg / "sub" / "leaf.py"),
            ("pkg.top", pkg / "top.py"),
        ]
    }
    assert cycles(graph) == [["pkg.sub", "pkg.sub.leaf", "pkg.top", "pkg.sub"]]
    del graph["pkg.top"]
    graph["pkg.sub.leaf"] = set()
    assert cycles(graph) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_graph_covers_both_packages():
    graph = import_graph()
    assert {"ldm.checkpoint", "ldm.models.diffusion.ddpm", "sepce.increments", "sepce.records"} <= set(graph)
    assert "ldm.util" in graph["ldm.checkpoint"]


def test_ldm_does_not_import_sepce():
    graph = import_graph()
    bad = sorted(
        f"{m} -> {t}" for m, targets in graph.items() if m.startswith("ldm") for t in targets if t.startswith("sepce")
    )
    assert not bad, "ldm must stay a drop-in CompVis package; it imports sepce:\n" + "\n".join(bad)


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_cycles(package):
    found = describe(import_graph(), package)
    assert not found, f"import cycle(s) in {package}:\n{found}"


def test_methods_do_not_import_the_concept_world():
    """A method module (``sepce/methods/<method>.py``) holds that method's loss and training on any model: the concept
    world benchmark runs the methods through their scripts, never the other way round."""
    graph = import_graph()
    methods = sorted(m for m in graph if m == "sepce.methods" or m.startswith("sepce.methods."))
    assert {"sepce.methods.cie", "sepce.methods.sepce", "sepce.methods.esd", "sepce.methods.uce"} <= set(methods)
    bad = sorted(f"{m} -> {t}" for m in methods for t in graph[m] if t == "sepce.world" or t.startswith("sepce.world."))
    assert not bad, "modules under sepce/methods/ import the concept world:\n" + "\n".join(bad)


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen, stack = set(), [start]
    while stack:
        for target in graph[stack.pop()] - seen:
            seen.add(target)
            stack.append(target)
    return seen


def test_reachable_follows_chains():
    assert reachable({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a"}}, "a") == {"b", "c"}


def test_attack_imports_no_benchmark():
    """The attack picks its judge through sepce.evaluation.classifiers, not through the world benchmark (#22)."""
    graph = import_graph()
    assert "sepce.evaluation.classifiers" in graph["sepce.attack"]
    assert "sepce.world.benchmark" not in reachable(graph, "sepce.attack")

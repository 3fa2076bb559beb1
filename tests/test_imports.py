"""No import circles inside ``autoquant/``: the package is layered.

The test reads every module of the package with :mod:`ast` (nothing is imported) and
builds the graph "module A imports module B" from every ``import autoquant.x``,
``from autoquant.x import y`` and ``from autoquant import y`` (relative forms too),
wherever the statement sits:

* at module level;
* under ``if TYPE_CHECKING:`` (the issue says "type-only imports included": a type
  that two modules need belongs in a module below both, not in either);
* inside functions. A function-local import is how a circle is usually *hidden*, not
  removed: the two modules still need each other, one just waits until call time. The
  issue's intent is a layered package, so these count too. The one kind of deferred
  import that does not count is a PEP 562 re-export (see below): it is a name table, not
  a dependency of the package's own code.

Resolution:

* ``from autoquant.x import y`` is an edge to ``autoquant.x.y`` when that is a module,
  else to the module that *defines* ``y``: a package ``__init__`` that re-exports ``y``
  (``from autoquant.x.z import y`` or a PEP 562 ``_LAZY = {"y": "autoquant.x.z"}`` table)
  is looked through, so a package's public face does not make every importer depend on
  all of the package.
* An edge goes to the named module only, not to its parent packages. Python does run a
  parent's ``__init__`` first, but a package ``__init__`` that imports its own
  submodules (the backends package registers its built-ins that way) would otherwise be
  a "circle" with every one of them, which is the normal shape of a package, not a
  layering fault.
* In a package ``__init__`` that defines a module ``__getattr__`` (PEP 562), the imports
  under ``if TYPE_CHECKING:`` only mirror the lazy table for type checkers: they are not
  edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

import autoquant

ROOT = Path(autoquant.__file__).parent
PKG = "autoquant"

# Circles that could not be removed yet, each with the reason. Keep this empty.
KNOWN_CYCLES: list[tuple[str, ...]] = []


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join([PKG, *parts])] = path
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module, skip_type_checking: bool):
    """Every Import/ImportFrom node in the module, with the TYPE_CHECKING rule applied."""
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and skip_type_checking and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        todo.extend(ast.iter_child_nodes(node))


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _lazy_table(tree: ast.Module) -> dict[str, str]:
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets)
            and isinstance(node.value, ast.Dict)
        ):
            return {
                k.value: v.value
                for k, v in zip(node.value.keys, node.value.values, strict=True)
                if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)
            }
    return {}


def _has_getattr(tree: ast.Module) -> bool:
    # def __getattr__(...) or __getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
    for n in tree.body:
        if isinstance(n, ast.FunctionDef) and n.name == "__getattr__":
            return True
        if isinstance(n, ast.Assign):
            names = [
                e.id
                for t in n.targets
                for e in (t.elts if isinstance(t, ast.Tuple) else [t])
                if isinstance(e, ast.Name)
            ]
            if "__getattr__" in names:
                return True
    return False


def _absolute(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    trees = {m: ast.parse(p.read_text(), str(p)) for m, p in mods.items()}

    def defining(module: str, name: str, seen: frozenset[str] = frozenset()) -> str:
        """The module that defines ``name`` reachable as ``module.name``."""
        if f"{module}.{name}" in mods:
            return f"{module}.{name}"
        if module in seen:
            return module
        tree = trees[module]
        lazy = _lazy_table(tree)
        if name in lazy and lazy[name] in mods:
            return defining(lazy[name], name, seen | {module})
        if not _is_package(mods[module]):
            return module
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                src = _absolute(module, True, node)
                for alias in node.names:
                    if (alias.asname or alias.name) == name and src in mods:
                        return defining(src, alias.name, seen | {module})
        return module

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, tree in trees.items():
        is_pkg = _is_package(mods[mod])
        skip = is_pkg and _has_getattr(tree)
        for node in _imports(tree, skip_type_checking=skip):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                src = _absolute(mod, is_pkg, node)
                targets = [defining(src, a.name) for a in node.names] if src in mods else [src]
                if src in mods and not _is_package(mods[src]):
                    # a plain module runs whole even when the name is one of its lazy
                    # (PEP 562) re-exports, which then imports the defining module too
                    targets.append(src)
            for target in targets:
                if target in mods and target != mod:
                    graph[mod].add(target)
    return graph


def components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(comps)


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """One shortest circle per component of :func:`components`, through its first
    module (enough to name an edge to cut)."""
    comps = components(graph)
    found = []
    for comp in comps:
        members, start = set(comp), comp[0]
        # breadth-first from start back to start, inside the component
        paths = {start: (start,)}
        queue = [start]
        circle: tuple[str, ...] = ()
        while queue and not circle:
            v = queue.pop(0)
            for w in sorted(graph[v] & members):
                if w == start:
                    circle = (*paths[v], start)
                    break
                if w not in paths:
                    paths[w] = (*paths[v], w)
                    queue.append(w)
        found.append(circle)
    return found


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    # module level, a TYPE_CHECKING block, a function body: one witness each
    assert "autoquant.errors" in graph["autoquant.config"]
    assert "autoquant.stats" in graph["autoquant.backends.base"]  # under TYPE_CHECKING
    assert "autoquant.backends._selfcheck" in graph["autoquant.quantizer"]  # in a function
    # a re-export through a package __init__ resolves to the defining module ...
    assert "autoquant.backends.registry" in graph["autoquant.tuning._runner"]
    assert "autoquant.backends" not in graph["autoquant.tuning._runner"]
    # ... and the PEP 562 names of a package __init__ are not its edges
    assert "autoquant.tuning._search" not in graph["autoquant.tuning"]


def test_a_circle_is_found_and_named():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert cycles(graph) == [("a", "b", "c", "a")]
    assert components(graph) == [["a", "b", "c"]]


def test_no_import_cycles_inside_the_package():
    graph = import_graph()
    found = [c for c in cycles(graph) if c not in KNOWN_CYCLES]
    assert not found, (
        "import circles inside autoquant/:\n"
        + "\n".join("  " + " -> ".join(c) for c in found)
        + "\nmodules in each circle:\n"
        + "\n".join("  " + ", ".join(c) for c in components(graph))
    )

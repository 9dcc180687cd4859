"""The shape of the code: small modules, no import cycle, no Prefect in the library.

The import graph is read from the sources (every import statement, lazy ones included), so a
cycle hidden in a function body counts too. ``from a import b`` is an edge to ``a.b`` when that is
a module, else to ``a``; a package's ``__init__`` run implicitly by importing its submodule is not
an edge (Python runs it first, whatever the submodule does).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ntkflow", "flows")
MAX_LINES = 300


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _edges(name: str, path: Path) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            for a in node.names:
                sub = f"{base}.{a.name}"
                targets.add(sub if sub in MODULES else base)
    out = set()
    for t in targets:
        while t and t not in MODULES:  # `import a.b.c` of a name inside a.b
            t = t.rpartition(".")[0]
        if t and t != name:
            out.add(t)
    return out


GRAPH = {name: _edges(name, path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_library_or_the_flows():
    assert _cycles(GRAPH) == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_is_under_300_lines(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines < MAX_LINES, f"{MODULES[name].relative_to(ROOT)}: {lines} lines"


def test_the_library_never_imports_prefect():
    offenders = []
    for name, path in MODULES.items():
        if not name.startswith("ntkflow"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                mods = [node.module or ""]
            offenders += [f"{name}: {m}" for m in mods if m.split(".")[0].startswith("prefect")]
    assert offenders == []


def test_prefect_internals_are_used_in_one_module_only():
    """Private Prefect APIs (``prefect._internal``, ``model_construct`` on Prefect's contexts,
    patched methods) live in flows/internals.py, behind its version guard."""
    users = []
    for name, path in MODULES.items():
        text = path.read_text()
        if name != "flows.internals" and any(
            s in text for s in ("prefect._internal", "model_construct", "copyreg")
        ):
            users.append(name)
    assert users == []

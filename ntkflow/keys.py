"""Keys that mean what they say: what determines a stored item, hashed.

A run folder is named by what determines a trial's *data* (``Config.run_id``). Every item a
trial stores (its data, a Gram, a kernel's prediction, a network, the linearized predictors)
carries a ``key``: a hash of the config section that determines it and of the *code version* of
the modules that compute it. An item is reused only when its key is the one the current config
and code would give; otherwise it is recomputed (or, with ``compute.keep_stale``, kept and
listed).

The modules that compute an item are not listed by hand: they are its producer's module (the
``ntkflow/trial/`` module defining the item) and every project module it imports, directly or
through others, lazily or not (:func:`code_modules`). A new module on an item's path is covered
the day it is imported. The walk stops at :data:`BOUNDARY`: modules that carry no computation
into an item's values (storage, leases, reuse checks, the cluster), or whose effect reaches the
key another way (the config, through the hashed section; the data, through its digest).

Code version = SHA-256 of those modules' syntax trees with docstrings removed, so comments,
docstrings and formatting do not invalidate results, and any change to what the code does does.
"""

from __future__ import annotations

import ast
import functools
import gc
import hashlib
import importlib.machinery
import importlib.util
import json
from pathlib import Path

PROJECT = ("ntkflow",)  # top-level packages whose modules are versioned

# module (or package) → why the walk does not go through it
BOUNDARY: dict[str, str] = {
    "ntkflow.keys": "this module",
    "ntkflow.store": "moves bytes; every artifact is verified by its SHA-256",
    "ntkflow.lease": "decides who computes, not what",
    "ntkflow.config": "its effect on an item is the config section, hashed in the key",
    "ntkflow.cluster": "decides where an item is computed, not what",
    "ntkflow.trial.context": "paths, leases, fault hooks; the data reach keys by their digest",
    "ntkflow.trial.items": "the reuse, lease and save protocol around every item",
    "ntkflow.trial.groups": "Zarr group I/O; the data reach keys by their digest",
    "ntkflow.trial.manifest": "result.json, assembled from the records as they are",
}


def digest(obj, n: int = 12) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


@functools.cache
def _spec(module: str):
    """The module's spec, found without importing it or its parents (``find_spec`` of a dotted
    name imports the parent package: ``ntkflow.train.f`` would import torch); None when there
    is none, or a parent is a module, not a package."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    name = top
    for part in rest:
        if spec is None or not spec.submodule_search_locations:
            return None
        name = f"{name}.{part}"
        spec = importlib.machinery.PathFinder.find_spec(name, spec.submodule_search_locations)
    return spec


def _source(module: str) -> Path | None:
    spec = _spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _ours(module: str) -> bool:
    return module.split(".")[0] in PROJECT


def _bounded(module: str) -> bool:
    return any(module == b or module.startswith(b + ".") for b in BOUNDARY)


def imported_modules(module: str) -> frozenset[str]:
    """The project modules ``module`` imports anywhere in its code (function bodies and
    ``TYPE_CHECKING`` blocks included): ``from a.b import c`` names ``a.b.c`` when that is a
    module, else ``a.b``."""
    return _syntax(module)[0]


def parse(source: str) -> ast.Module:
    """``ast.parse`` that no other thread can break. CPython 3.11 counts the depth of the tree
    it converts to Python objects in one counter per interpreter: a garbage collection during
    the conversion can run a finalizer that lets another thread parse meanwhile, and the
    conversion then fails with SystemError "AST constructor recursion depth mismatch" (seen
    in a deployment's flow run, python/cpython#106905). With the collector off, nothing in the
    conversion lets another thread run."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(source)
    finally:
        if enabled:
            gc.enable()


@functools.cache
def _syntax(module: str) -> tuple[frozenset[str], str]:
    """One parse of the module per process: (:func:`imported_modules`, :func:`normalized`);
    (empty, "") when it has no Python source. Every item kind's version walks the same shared
    modules, so each is parsed once, not once per kind."""
    path = _source(module)
    if path is None:
        return frozenset(), ""
    tree = parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if _ours(sub) and _source(sub) else base)
    imports = frozenset(m for m in found if _ours(m) and m != module and _source(m) is not None)
    return imports, normalized(tree)


@functools.cache
def code_modules(root: str) -> tuple[str, ...]:
    """``root`` and every project module reachable from it by imports, short of
    :data:`BOUNDARY` (``root`` itself is always included), sorted."""
    seen, todo = {root}, [root]
    while todo:
        for m in imported_modules(todo.pop()):
            if m not in seen and not _bounded(m):
                seen.add(m)
                todo.append(m)
    return tuple(sorted(seen))


def normalized(tree: ast.Module) -> str:
    """The module's syntax tree without docstrings or positions: what its code does (``tree``
    is changed: its docstrings are dropped)."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


@functools.cache
def code_version(root: str) -> str:
    """Version (12 hex digits) of the code computing the items defined in module ``root``."""
    if _source(root) is None:  # the modules it imports are found by their sources
        raise LookupError(f"no Python source for module {root!r}")
    h = hashlib.sha256()
    for module in code_modules(root):
        h.update(module.encode())
        h.update(_syntax(module)[1].encode())
    return h.hexdigest()[:12]


def item_key(kind: str, section: dict, code: str) -> str:
    """The key of an item of ``kind`` determined by ``section`` (a JSON-able dict) and computed
    by code of version ``code``."""
    return digest({"kind": kind, "section": section, "code": code})

"""Keys that mean what they say: what determines a stored item, hashed.

A run folder is named by what determines a trial's *data* (``Config.run_id``). Every item a
trial stores (its data, a Gram, a kernel's prediction, a network, later theory curves) carries a
``key``: a hash of the config section that determines it and of the *code version* of the modules
that compute it. An item is reused only when its key is the one the current config and code
would give; otherwise it is recomputed (or, with ``compute.keep_stale``, kept and listed).

Code version = SHA-256 of the modules' syntax trees with docstrings removed, so comments,
docstrings and formatting do not invalidate results, and any change to what the code does does.
A new kind of item registers its modules in :data:`CODE_MODULES` and calls :func:`item_key`.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
from pathlib import Path

# kind → modules (or packages) whose code determines an item of that kind
CODE_MODULES: dict[str, tuple[str, ...]] = {
    "data": ("ntkflow.data", "ntkflow.kernels", "ntkflow.krr"),
    "gram": ("ntkflow.kernels", "ntkflow.gram"),
    "kernel": ("ntkflow.kernels", "ntkflow.gram", "ntkflow.krr"),
    "network": ("ntkflow.nets", "ntkflow.train"),
    "linearized": ("ntkflow.nets", "ntkflow.train", "ntkflow.linearized", "ntkflow.kernels"),
}


def digest(obj, n: int = 12) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def _sources(module: str) -> list[Path]:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ValueError(f"unknown module {module!r} in CODE_MODULES")
    origin = Path(spec.origin)
    if spec.submodule_search_locations:  # a package: every module in it
        return sorted(origin.parent.rglob("*.py"))
    return [origin]


def _normalized(path: Path) -> str:
    tree = ast.parse(path.read_text())
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
def code_version(kind: str) -> str:
    """Version of the code computing items of ``kind`` (12 hex digits)."""
    h = hashlib.sha256()
    for module in CODE_MODULES[kind]:
        for path in _sources(module):
            h.update(path.name.encode())
            h.update(_normalized(path).encode())
    return h.hexdigest()[:12]


def code_versions() -> dict[str, str]:
    return {kind: code_version(kind) for kind in CODE_MODULES}


def item_key(kind: str, section: dict) -> str:
    """The key of an item of ``kind`` determined by ``section`` (a JSON-able dict)."""
    return digest({"kind": kind, "section": section, "code": code_version(kind)})

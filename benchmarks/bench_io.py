"""What the table-printing benchmarks share: a two-column table on stdout, the figures as JSON,
the commit they were measured at."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def print_and_save(title: str, rows: list[tuple[str, str]], out: dict, path: str) -> None:
    """Print ``title`` and the (name, value) rows aligned; write ``out`` as JSON to ``path``."""
    width = max(len(name) for name, _ in rows)
    print(title)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=1))


def commit() -> str | None:
    """The checkout's short commit hash (None outside a git checkout)."""
    root = Path(__file__).resolve().parent.parent
    res = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True)
    return res.stdout.decode().strip() or None

"""The documentation a user reads: a short README, benchmark tables generated from their JSON,
no citation of a file users do not have, and no link to a file that does not exist."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TABLES = ROOT / "benchmarks" / "tables.py"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
# the internal specification, which users do not have: "SPEC §6", "SPEC.md"
SPEC_CITATION = re.compile(r"SPEC §|SPEC\.md")
# modules whose string literals end up in what a user reads: report.md, the verdict, --help
OUTPUT_MODULES = [
    "ntkflow/markdown.py",
    "ntkflow/markdown_verdict.py",
    "ntkflow/report.py",
    "ntkflow/verdict.py",
    "flows/cli.py",
]


def test_benchmark_tables_are_generated_from_the_json():
    run = subprocess.run(
        [sys.executable, str(TABLES), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr


def test_check_fails_on_a_stale_page(tmp_path, monkeypatch):
    """--check compares: a hand edit of docs/benchmarks.md is reported, not accepted."""
    spec = importlib.util.spec_from_file_location("ntkflow_doc_tables", TABLES)
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    page = tmp_path / "benchmarks.md"
    page.write_text(tables.render().replace("| trials |", "| trials (edited) |", 1))
    monkeypatch.setattr(tables, "OUT", page)
    assert tables.main(["--check"]) == 1
    assert tables.main([]) == 0  # regenerating fixes it
    assert tables.main(["--check"]) == 0


def test_readme_is_at_most_200_lines():
    n = len(README.read_text().splitlines())
    assert n <= 200, f"README.md has {n} lines; move detail to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_docs_cite_no_internal_spec(page):
    bad = [
        f"{page.name}:{i}: {line.strip()}"
        for i, line in enumerate(page.read_text().splitlines(), 1)
        if SPEC_CITATION.search(line)
    ]
    assert not bad, "cite docs/formulas.md or docs/theory.md instead:\n" + "\n".join(bad)


def _output_strings(path: Path):
    """(line, text) of every string literal that is not a docstring."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            yield node.lineno, node.value


@pytest.mark.parametrize("module", OUTPUT_MODULES)
def test_report_and_help_text_cite_no_internal_spec(module):
    path = ROOT / module
    bad = [f"{module}:{n}: {s[:80]!r}" for n, s in _output_strings(path) if SPEC_CITATION.search(s)]
    assert not bad, "user-facing text cites SPEC:\n" + "\n".join(bad)


def _links(text: str):
    for m in re.finditer(r"\[[^\]]*\]\(([^)\s]+)\)", text):
        yield m[1]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_to_files_that_exist(page):
    bad = []
    for target in _links(page.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        path = (page.parent / target.partition("#")[0]).resolve()
        if not path.exists():
            bad.append(target)
    assert not bad, f"{page.name} links to missing files: {bad}"


def test_run_ids_quoted_in_the_readme_are_todays():
    """The preset table's run ids are what ``ntkflow presets`` prints (a hash of the data
    config: no experiment runs)."""
    run = subprocess.run(
        [str(Path(sys.executable).with_name("ntkflow")), "presets"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    ids = dict(re.findall(r"^# (\S+):.*\(run id ([0-9a-f]{12})\)", run.stdout, re.M))
    assert ids, run.stdout[:500]
    rows = {m[1]: m[0] for m in re.finditer(r"^\| `([\w-]+)`.*$", README.read_text(), re.M)}
    for name, run_id in ids.items():
        assert f"`{run_id}`" in rows.get(name, ""), (name, run_id, rows.get(name))

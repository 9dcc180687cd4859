"""Write docs/benchmarks.md from benchmarks/results/*.json, so no benchmark figure is typed by hand.

    python benchmarks/tables.py            # regenerate docs/benchmarks.md
    python benchmarks/tables.py --check    # exit 1 if docs/benchmarks.md is not what the JSON gives

One section per JSON file: what the benchmark measures and how to run it (both from its script's
docstring), the command recorded in the JSON if any, the date and commit if recorded, and its
figures as compact tables. The sweeps of the theory (theory_sweep, lr_sweep) and theory_cost get
tables of their own; every other file is laid out from its structure, so a new benchmark needs no
change here.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "docs" / "benchmarks.md"

# Where the science of each section of the internal specification is documented for users: the
# scripts' docstrings still cite it, the generated page must not.
SPEC_PAGES = {"2": "formulas.md", "3": "formulas.md", "4": "formulas.md", "5": "formulas.md"}
STAMP_KEYS = ("date", "commit", "git_commit", "timestamp")
LONG = 100  # characters: a longer text in a JSON is cut, so no table row runs on
WIDE = 7  # columns: a list of records with more fields is laid out transposed


# ---- cells and tables ---------------------------------------------------------------------------
def fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):  # a mean ± SE, a paired difference [CI], or a small mapping
        if "mean" in v and "se" in v:
            # the SE to 2 significant digits: more would claim a precision it does not have
            return f"{fmt(v['mean'])} ± {v['se']:.2g}" if v.get("n", 1) else "–"
        if "mean_diff" in v:
            return f"{fmt(v['mean_diff'])} [{fmt(v['ci_low'])}, {fmt(v['ci_high'])}]"
        return ", ".join(f"{k}: {fmt(x)}" for k, x in v.items())
    if isinstance(v, list):
        if all(isinstance(x, str) for x in v) and any(len(x) > 20 for x in v):
            return f"{len(v)} lines"
        return ", ".join(fmt(x) for x in v)
    text = str(v).replace("|", "\\|").replace("\n", " ").strip()
    return text if len(text) <= LONG else text[: LONG - 1] + "…"


def table(header: list[str], rows: list[list]) -> list[str]:
    right = ["---:" if all(_numeric(r[i]) for r in rows) else "---" for i in range(len(header))]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(right) + "|"]
    return out + ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows] + [""]


def _numeric(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _scalar(v) -> bool:
    return not isinstance(v, dict | list) or (
        isinstance(v, list) and all(not isinstance(x, dict | list) for x in v)
    )


def records(rows: list[dict]) -> list[str]:
    """A list of records as a table, one row each (transposed when it has many fields)."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    if len(cols) <= WIDE:
        return table(cols, [[r.get(c) for c in cols] for r in rows])
    head = rows[0].get(cols[0]) if all(cols[0] in r for r in rows) else None
    names = [fmt(r[cols[0]]) for r in rows] if isinstance(head, str) else None
    header = ["", *(names or [str(i) for i in range(len(rows))])]
    body = cols[1:] if names else cols
    return table(header, [[c, *(r.get(c) for r in rows)] for c in body])


def _uniform(d: dict) -> bool:
    """A mapping of records with the same scalar fields (e.g. per kernel, per store)."""
    vals = list(d.values())
    return (
        len(vals) > 1
        and all(isinstance(v, dict) and v and all(_scalar(x) for x in v.values()) for v in vals)
        and len({tuple(v) for v in vals}) == 1
    )


def generic(data) -> list[str]:
    """Any JSON: its scalar figures as one table (dotted keys), each list of records and each
    mapping of like records as a table of its own."""
    if isinstance(data, list):
        return records(data) if all(isinstance(r, dict) for r in data) else [fmt(data), ""]
    figures, parts = [], []

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if k in ("command", *STAMP_KEYS):
                continue
            if _scalar(v):
                figures.append([key, v])
            elif isinstance(v, list) and all(isinstance(r, dict) for r in v):
                parts.extend([f"`{key}`:", "", *records(v)])
            elif isinstance(v, dict) and _uniform(v):
                first = next(iter(v.values()))
                rows = [[name, *r.values()] for name, r in v.items()]
                parts.extend([f"`{key}`:", "", *table(["", *first], rows)])
            elif isinstance(v, dict):
                walk(v, key + ".")

    walk(data, "")
    return (table(["figure", "value"], figures) if figures else []) + parts


# ---- the theory's sweeps and cost ------------------------------------------------------------
def points(theory: dict, verdict: dict | None) -> list[str]:
    """A sweep's grid points as columns: the network's RMSE, its gap to each linearized
    predictor, the lazy-training diagnostics, the after-kernel comparisons and the verdict."""
    names = list(theory)
    header = ["", *(n.partition("@")[2] or n for n in names)]
    rows = [["t", *(theory[n].get("t") for n in names)]]
    rows.append(["NN test RMSE", *(theory[n]["nn_rmse"] for n in names)])
    preds = dict.fromkeys(p.partition("@")[0] for n in names for p in theory[n]["predictors"])
    for p in preds:
        cells = [_predictor(theory[n], p).get("gap") for n in names]
        rows.append([f"gap NN ↔ {p}", *cells])
    for key in ("ntk_drift", "ntk_init_error", "ntk_final_error"):
        if any(key in theory[n].get("diagnostics", {}) for n in names):
            rows.append([key, *(theory[n]["diagnostics"].get(key) for n in names)])
    for key in ("final_minus_init_error", "after_minus_emp_gap"):
        if any((theory[n].get("after") or {}).get(key) for n in names):
            rows.append([key, *((theory[n].get("after") or {}).get(key) for n in names)])
    if verdict:
        rows.append(["verdict", *((verdict.get(n) or {}).get("supports") for n in names)])
    return table(header, rows)


def _predictor(entry: dict, name: str) -> dict:
    return next((v for k, v in entry["predictors"].items() if k.partition("@")[0] == name), {})


def slopes(lines: dict) -> list[str]:
    """Per predictor: the log-log slope of the gap against width (per-trial fits, 95% t CI)."""
    rows = [
        [name, v["slope"], f"[{fmt(v['slope_ci_low'])}, {fmt(v['slope_ci_high'])}]"]
        for line in lines.values()
        if isinstance(line, dict)
        for name, v in line.items()
        if isinstance(v, dict) and "slope" in v
    ]
    return table(["gap NN ↔", "slope vs width", "95% CI"], rows) if rows else []


def sweep_run(run: dict) -> list[str]:
    out = [f"Recorded command: `{command(run['command'])}`", ""] if run.get("command") else []
    if run.get("seconds") is not None:
        out += [f"Seconds: {fmt(run['seconds'])}.", ""]
    out += points(run["theory"], run.get("verdict"))
    return out + slopes(run.get("width_slopes") or run.get("sweep") or {})


def theory_sweep(data: dict) -> list[str]:
    out = []
    for depth, run in data.items():
        out += [f"### {depth}", "", *sweep_run(run)]
    return out


def theory_cost(data: dict) -> list[str]:
    rows = []
    for label, v in data.items():
        per = [r["added_fraction"] for r in v["rows"]]
        spread = f"{100 * min(per):.1f}–{100 * max(per):.1f}%"
        rows.append([label, len(per), f"{100 * v['added_fraction']:.1f}%", spread])
    return table(["run (label)", "trials", "added to a trial's compute", "per trial"], rows)


RENDER = {"theory_sweep": theory_sweep, "lr_sweep": sweep_run, "theory_cost": theory_cost}


# ---- sections and page ------------------------------------------------------------------------
def command(text: str) -> str:
    """A recorded command line as a user types it: the CLI module is the ``ntkflow`` command."""
    return re.sub(r"^(?:python -m )?(?:flows|ntkflow)\.cli\b", "ntkflow", text.strip())


def unspec(text: str) -> str:
    """Citations of the internal specification → the docs page that holds the same science."""

    def page(m: re.Match) -> str:
        name = SPEC_PAGES.get(m[1], "theory.md")
        return f"[{name.removesuffix('.md')}]({name})"

    return re.sub(r"SPEC §(\d)", page, text)


def script_doc(stem: str) -> tuple[str, str]:
    """The benchmark script's first docstring paragraph and its usage line (``python ...``)."""
    path = ROOT / "benchmarks" / f"{stem}.py"
    doc = ast.get_docstring(ast.parse(path.read_text())) if path.exists() else None
    if not doc:
        return "", f"python benchmarks/{stem}.py"
    summary = " ".join(doc.split("\n\n")[0].split())
    usage = [ln.strip() for ln in doc.splitlines() if re.match(r"\s+(PYTHONPATH=\S+ )?python ", ln)]
    usage_line = re.sub(r"\s+#.*$", "", usage[0]) if usage else f"python benchmarks/{stem}.py"
    return unspec(summary), usage_line


def stamp(data) -> str:
    got = {k: data[k] for k in STAMP_KEYS if isinstance(data, dict) and data.get(k)}
    if not got:
        return "Date and commit: not recorded in the JSON."
    return "Recorded: " + ", ".join(f"{k} {fmt(v)}" for k, v in got.items()) + "."


def section(path: Path) -> list[str]:
    stem = path.stem
    data = json.loads(path.read_text())
    summary, usage = script_doc(stem)
    out = [f"## {stem}", ""] + ([summary, ""] if summary else [])
    out += [f"Run: `{usage}` → `benchmarks/results/{path.name}`.", ""]
    if isinstance(data, dict) and isinstance(data.get("command"), str) and stem not in RENDER:
        out += [f"Recorded command: `{command(data['command'])}`", ""]
    out += [stamp(data), ""]
    return out + RENDER.get(stem, generic)(data)


def render() -> str:
    files = sorted(RESULTS.glob("*.json"))
    out = [
        "<!-- generated by benchmarks/tables.py from benchmarks/results/*.json: do not edit -->",
        "# Benchmarks",
        "",
        "Every figure below is what a benchmark script wrote to `benchmarks/results/`; "
        "`make bench` runs the main ones, `python benchmarks/tables.py` rebuilds this page. "
        "Times are seconds (`_s`) unless named otherwise; the development machine has 2 shared "
        "CPU cores and no GPU, so single timings vary.",
        "",
        *(f"- [{p.stem}](#{p.stem})" for p in files),
        "",
    ]
    for p in files:
        out += section(p)
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if docs/benchmarks.md is stale")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        old = OUT.read_text() if OUT.exists() else ""
        if old == text:
            return 0
        diff = difflib.unified_diff(old.splitlines(), text.splitlines(), str(OUT), "generated")
        print("\n".join(list(diff)[:40]), file=sys.stderr)
        print(f"{OUT} is stale: run python benchmarks/tables.py", file=sys.stderr)
        return 1
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text)
    shown = OUT.relative_to(ROOT) if OUT.is_relative_to(ROOT) else OUT
    print(f"wrote {shown} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

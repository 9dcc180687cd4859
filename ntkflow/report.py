"""Aggregation: result.json files → results.parquet, summary.json, the figures, report.md
(written by :mod:`ntkflow.figures` and :mod:`ntkflow.markdown`)."""

from __future__ import annotations

import io
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from ntkflow import keys
from ntkflow.config import Config
from ntkflow.gaps import kernel_gaps
from ntkflow.holdings import holdings
from ntkflow.store import Store
from ntkflow.trial import Trial, complete, method_key
from ntkflow.trial.items import code_versions
from ntkflow.trial.manifest import check, new_methods

if TYPE_CHECKING:
    import pandas as pd

# pandas, SciPy's statistics and matplotlib are imported where a summary is made, not with this
# module: every Dask worker imports it (through the flow's tasks) and never aggregates.

PACKAGES = (
    "ntkflow",
    "numpy",
    "scipy",
    "dask",
    "distributed",
    "zarr",
    "prefect",
    "torch",
    "pydantic",
    "pandas",
)


def versions() -> dict:
    """Package versions, Python and the git commit of the checkout (if any)."""
    out = {"python": sys.version.split()[0]}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    try:
        root = Path(__file__).resolve().parent.parent
        out["git_commit"] = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        out["git_dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out


def verify(cfg: Config, store: Store, deep: bool = True) -> dict[int, list[str]]:
    """Every trial's problems (see :func:`ntkflow.trial.manifest.problems`): its record, run
    id and variant against ``cfg`` and, with ``deep``, the checksum of every array and file. A
    damaged or corrupted artifact is removed with what was computed from it (so that the next
    ``ntkflow run`` recomputes it); a mismatch of run id or variant only is reported."""
    return {k: bad for k, (_, bad) in _checked(cfg, store, deep).items()}


def _checked(cfg: Config, store: Store, deep: bool) -> dict[int, tuple[dict | None, list[str]]]:
    return {k: check(Trial(cfg, store, k), deep) for k in range(cfg.trials)}


def inputs_digest(cfg: Config, results: dict[int, dict | None]) -> str:
    """What a summary is computed from: the config (less where and how it runs) and every
    trial's result (None: not complete)."""
    conf = cfg.model_dump(mode="json", exclude={"compute", "faults"})
    per = {str(k): (r or {}).get("methods") for k, r in sorted(results.items())}
    return keys.digest({"config": conf, "keep_stale": cfg.compute.keep_stale, "results": per}, 16)


SUMMARY_FILES = ("summary.json", "results.parquet", "report.md", "boxplot.png")


def up_to_date(cfg: Config, store: Store) -> tuple[list[int], dict | None]:
    """The trials still to compute, and (when there are none) the stored summary if it is
    current: computed from exactly these results, with its files in place."""
    results = {k: complete(cfg, store, k) for k in range(cfg.trials)}
    todo = [k for k, r in results.items() if r is None]
    if todo or not all(store.exists(f) for f in SUMMARY_FILES):
        return todo, None
    summary = store.read_json("summary.json")
    current = summary is not None and summary.get("inputs") == inputs_digest(cfg, results)
    return [], summary if current else None


def new_items(cfg: Config, store: Store, todo: list[int]) -> int:
    """How many of the items that trials ``todo`` hold were never computed (no record)."""
    return sum(len(new_methods(Trial(cfg, store, k))) for k in todo)


def collect(cfg: Config, store: Store, deep: bool = False):
    """Tidy rows (trial, method, rmse, status, timings, diagnostics), the failed trials (also
    those whose result does not verify against ``cfg``), the stale items kept, every trial's
    result (None if it failed) and what the folder holds (ntkflow.holdings: ``cfg``'s methods,
    then those other commands computed into the same trials)."""
    import pandas as pd

    rows, failed, stale = [], [], []
    checked = _checked(cfg, store, deep)
    results = {k: None if bad else res for k, (res, bad) in checked.items()}
    held = holdings(cfg, store, results)
    for k, (res, bad) in checked.items():
        t = Trial(cfg, store, k)
        if bad:
            why = t.error() if res is None else None
            failed.append({"trial": k, "error": why or "; ".join(bad)})
            for m in held.methods:
                rows.append({"trial": k, "method": m, "rmse": float("nan"), "status": "failed"})
            continue
        for m in held.methods:
            item = res["methods"].get(m)
            if item is None:  # a method another command computed, not in this trial
                continue
            if m in cfg.methods and item.get("key") != method_key(t, m):
                stale.append(
                    {"trial": k, "method": m, "key": item.get("key"), "code": item.get("code")}
                )
            flat = {key: v for key, v in item.items() if not isinstance(v, (list, dict))}
            for i, v in enumerate(item.get("param_rel_change") or []):  # per layer (docs/theory.md)
                flat[f"param_rel_change_l{i}"] = v
            # a method can fail alone (a diverged network): its own record says so
            rows.append({"trial": k, **flat, "method": m, "status": item.get("status", "ok")})
    df = pd.DataFrame(rows)
    gaps = pd.DataFrame(kernel_gaps(store, results, held.specs, held.methods))
    if len(gaps) and len(df):  # the networks' prediction gaps to kernel regression
        df = df.merge(gaps, on=["trial", "method"], how="left")
    return df, failed, stale, results, held


def import_summary_modules() -> None:
    """Import what :func:`aggregate` needs (pandas, pyarrow's Parquet, matplotlib's Figure,
    SciPy's special functions: seconds of CPU), for a process with a core to spare now, such as
    ``ntkflow run`` while its embedded Prefect server boots."""
    import matplotlib.figure  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from ntkflow import figures, markdown, stats, verdict  # noqa: F401


def aggregate(cfg: Config, store: Store, run_info: dict | None = None, deep=False) -> dict:
    """Write results.parquet, summary.json, boxplot.png and report.md; return the summary."""
    from ntkflow import figures, markdown, stats

    df, failed, stale, results, held = collect(cfg, store, deep)
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    store.write_bytes("results.parquet", buf.getvalue())
    produced = (
        df[df.status == "ok"].groupby("kind")["code"].unique().map(sorted).to_dict()
        if "code" in df
        else {}
    )
    summary = {
        "run": {
            "run_id": cfg.run_id,
            "formulas": cfg.formulas,
            "trials": cfg.trials,
            "store": store.url,
            **(run_info or {}),
        },
        **stats.summarize(df, held.methods),
        "computed_with": held.computed_with,  # which settings computed which rows
        "failed_trials": [f["trial"] for f in failed],
        "failures": failed,
        # code versions (ntkflow.keys) of the items summarised, and those of this code
        "code_versions": {"items": produced, "current": code_versions()},
        "stale_items": stale,
        **theory_sections(held, df, [f["trial"] for f in failed], cfg.networks.vary),
        "inputs": inputs_digest(cfg, results),  # a rerun with the same inputs need not redo it
    }
    store.write_json("summary.json", summary, sort_keys=False)
    store.write_bytes("boxplot.png", figures.boxplot_png(df, held.methods, cfg.formulas))
    figures.write_theory_figures(held.specs, df, summary, store)
    store.write_text("report.md", markdown.markdown(summary, cfg))
    return summary


def theory_sections(held, df: pd.DataFrame, failed_trials: list[int], vary: dict) -> dict:
    """summary.json's ``verdict`` and ``theory`` (per network), ``sweep`` (per varied setting:
    the gaps against it), ``width_slopes`` (against width, log-log) and ``missing`` (the trials
    each method lacks besides the failed trials) sections, for the methods and networks ``held``
    (ntkflow.holdings) and the command's ``networks.vary``."""
    from ntkflow import stats, verdict

    specs, methods = held.specs, held.methods
    out: dict = {"missing": stats.missing_trials(df, methods, failed_trials)}
    if specs and len(df):
        out["verdict"] = verdict.verdict(df, specs, methods)
        out["theory"] = stats.theory_summary(df, specs)
        out["sweep"] = stats.sweep_panels(df, specs, vary)
        if len(vary.get("width", [])) > 1:
            out["width_slopes"] = stats.width_slopes(df, specs, list(vary))
    return out

"""Aggregation: result.json files → results.parquet, summary.json, boxplot.png, report.md."""

from __future__ import annotations

import io
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pandas as pd

from ntkflow import stats
from ntkflow.config import Config
from ntkflow.store import Store
from ntkflow.trial import load_result, trial_dir

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


def collect(cfg: Config, store: Store) -> tuple[pd.DataFrame, list[dict]]:
    """Tidy rows (trial, method, rmse, status, timings, diagnostics) and the failed trials."""
    rows, failed = [], []
    for k in range(cfg.trials):
        res = load_result(store, k)
        if res is None:
            err = store.read_json(f"{trial_dir(k)}/error.json") or {}
            failed.append({"trial": k, "error": err.get("error", "no result.json")})
            for m in cfg.methods:
                rows.append({"trial": k, "method": m, "rmse": float("nan"), "status": "failed"})
            continue
        for m in cfg.methods:
            item = res["methods"].get(m)
            if item is None:
                rows.append({"trial": k, "method": m, "rmse": float("nan"), "status": "missing"})
                continue
            flat = {key: v for key, v in item.items() if not isinstance(v, (list, dict))}
            # a method can fail alone (a diverged network): its own record says so
            rows.append({"trial": k, **flat, "method": m, "status": item.get("status", "ok")})
    return pd.DataFrame(rows), failed


def aggregate(cfg: Config, store: Store, run_info: dict | None = None) -> dict:
    """Write results.parquet, summary.json, boxplot.png and report.md; return the summary."""
    df, failed = collect(cfg, store)
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    store.write_bytes("results.parquet", buf.getvalue())
    summary = {
        "run": {
            "run_id": cfg.run_id,
            "formulas": cfg.formulas,
            "trials": cfg.trials,
            "store": store.url,
            **(run_info or {}),
        },
        **stats.summarize(df, cfg.methods),
        "failed_trials": [f["trial"] for f in failed],
        "failures": failed,
    }
    store.write_json("summary.json", summary, sort_keys=False)
    store.write_bytes("boxplot.png", boxplot_png(df, cfg.methods, cfg.formulas))
    store.write_text("report.md", markdown(summary, cfg))
    return summary


def boxplot_png(df: pd.DataFrame, methods: list[str], formulas: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = df[df.status == "ok"]
    data = [ok.loc[ok.method == m, "rmse"].to_numpy() for m in methods]
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(methods)), 4), dpi=110)
    ax.boxplot(data, tick_labels=methods, showmeans=True)
    ax.set_ylabel("test RMSE")
    n = ok.trial.nunique()
    ax.set_title(f"Test RMSE over {n} trial(s), formulas={formulas}")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()


def table(summary: dict) -> pd.DataFrame:
    rows = [{"method": m, **s} for m, s in summary["methods"].items()]
    return pd.DataFrame(rows).set_index("method")


def markdown(summary: dict, cfg: Config) -> str:
    t = table(summary)
    cols = [c for c in ("n", "mean_rmse", "se", "se_unbiased", "median", "q1", "q3") if c in t]
    lines = [
        f"# ntkflow run {cfg.run_id}",
        "",
        f"Formulas: **{cfg.formulas}**; trials: {cfg.trials}; n_obs: {cfg.data.n_obs}; "
        f"ground truth: {cfg.data.kernel}; seed: {cfg.seed}.",
        "",
        "## Test RMSE per method",
        "",
        _md_table(t[cols]),
        "",
        "SE is std(ddof=0)/√n as published; se_unbiased uses ddof=1.",
        "",
        "![box plot](boxplot.png)",
        "",
    ]
    if summary["percent_change_1_to_2"]:
        lines += ["## Percent change from 1 to 2 layers", ""]
        lines += [f"- {fam}: {v:+.2f}%" for fam, v in summary["percent_change_1_to_2"].items()]
        lines.append("")
    key = [
        p for p in summary["paired"] if _same_depth(p["a"], p["b"]) or p["a"][:-1] == p["b"][:-1]
    ]
    if key:
        lines += [
            "## Paired differences (same trials, 95% t interval)",
            "",
            "| a − b | n | mean | 95% CI |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {p['a']} − {p['b']} | {p['n']} | {p['mean_diff']:+.5f} | "
            f"[{p['ci_low']:+.5f}, {p['ci_high']:+.5f}] |"
            for p in key
        ]
        lines.append("")
    failed = summary["failed_trials"]
    lines += ["## Failed trials", ""]
    lines += [f"- trial {f['trial']}: {f['error']}" for f in summary["failures"]] or ["none"]
    if failed:
        lines += [
            "",
            "Failed trials are excluded from every statistic. Rerun the same command to "
            "recompute only them.",
        ]
    return "\n".join(lines) + "\n"


def _md_table(t: pd.DataFrame) -> str:
    head = "| method | " + " | ".join(t.columns) + " |"
    rule = "|---|" + "---:|" * len(t.columns)
    rows = [
        f"| {m} | " + " | ".join(_fmt(v, c) for c, v in r.items()) + " |" for m, r in t.iterrows()
    ]
    return "\n".join([head, rule, *rows])


def _fmt(v, col: str) -> str:
    if pd.isna(v):
        return "–"
    return str(int(v)) if col == "n" else f"{v:.4f}"


def _same_depth(a: str, b: str) -> bool:
    return a[-1:].isdigit() and a[-1] == b[-1] and (a.startswith("NN") or b.startswith("NN"))

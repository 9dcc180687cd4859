"""Aggregation: result.json files → results.parquet, summary.json, boxplot.png, report.md."""

from __future__ import annotations

import io
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from ntkflow import keys, stats
from ntkflow.config import Config
from ntkflow.names import network_specs, same_depth
from ntkflow.store import Store
from ntkflow.trial import Trial, method_key
from ntkflow.trial.manifest import check

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


def collect(
    cfg: Config, store: Store, deep: bool = False
) -> tuple[pd.DataFrame, list[dict], list[dict]]:
    """Tidy rows (trial, method, rmse, status, timings, diagnostics), the failed trials (also
    those whose result does not verify against ``cfg``) and the stale items kept."""
    rows, failed, stale = [], [], []
    for k, (res, bad) in _checked(cfg, store, deep).items():
        t = Trial(cfg, store, k)
        if bad:
            why = t.error() if res is None else None
            failed.append({"trial": k, "error": why or "; ".join(bad)})
            for m in cfg.methods:
                rows.append({"trial": k, "method": m, "rmse": float("nan"), "status": "failed"})
            continue
        for m in cfg.methods:
            item = res["methods"][m]
            if item.get("key") != method_key(t, m):
                stale.append(
                    {"trial": k, "method": m, "key": item.get("key"), "code": item.get("code")}
                )
            flat = {key: v for key, v in item.items() if not isinstance(v, (list, dict))}
            for i, v in enumerate(item.get("param_rel_change") or []):  # per layer, SPEC §6
                flat[f"param_rel_change_l{i}"] = v
            # a method can fail alone (a diverged network): its own record says so
            rows.append({"trial": k, **flat, "method": m, "status": item.get("status", "ok")})
    return pd.DataFrame(rows), failed, stale


def aggregate(cfg: Config, store: Store, run_info: dict | None = None, deep=False) -> dict:
    """Write results.parquet, summary.json, boxplot.png and report.md; return the summary."""
    df, failed, stale = collect(cfg, store, deep)
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
        **stats.summarize(df, cfg.methods),
        "failed_trials": [f["trial"] for f in failed],
        "failures": failed,
        # code versions (ntkflow.keys) of the items summarised, and those of this code
        "code_versions": {"items": produced, "current": keys.code_versions()},
        "stale_items": stale,
        **theory_sections(cfg, df, [f["trial"] for f in failed]),
    }
    store.write_json("summary.json", summary, sort_keys=False)
    store.write_bytes("boxplot.png", boxplot_png(df, cfg.methods, cfg.formulas))
    write_theory_figures(cfg, df, summary, store)
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
        p for p in summary["paired"] if same_depth(p["a"], p["b"]) or p["a"][:-1] == p["b"][:-1]
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
    if summary.get("stale_items"):
        lines += [
            "## Stale items (kept with compute.keep_stale)",
            "",
            *[
                f"- trial {s['trial']} {s['method']}: code {s['code']}, key {s['key']}"
                for s in summary["stale_items"]
            ],
            "",
        ]
    lines += theory_markdown(summary)
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


# ---- linearized theory (SPEC §6) ----------------------------------------------------------------
def theory_sections(cfg: Config, df: pd.DataFrame, failed_trials: list[int]) -> dict:
    """summary.json's ``theory`` (per network), ``sweep`` (slopes against width) and ``missing``
    (the trials each method lacks besides the failed trials) sections."""
    specs = network_specs(cfg)
    out: dict = {"missing": stats.missing_trials(df, cfg.methods, failed_trials)}
    if specs and len(df):
        p = cfg.networks.parameterization
        out["theory"] = stats.theory_summary(df, specs, p)
        if cfg.networks.widths and len(cfg.networks.widths) > 1:
            out["sweep"] = stats.width_slopes(df, specs, p)
    return out


def _pm(e: dict, digits: int = 4) -> str:
    if not e.get("n"):
        return "–"
    return f"{e['mean']:.{digits}f} ± {e['se']:.{digits}f}"


def theory_markdown(summary: dict) -> list[str]:
    theory = summary.get("theory")
    lines: list[str] = []
    if theory:
        lines += [
            "## Does the network follow its NTK?",
            "",
            "Linearized theory (SPEC §6) at the network's own t = 2ηE/B with its own f₀: LIN "
            "(gradient flow, analytic NTK of its family), -emp (empirical NTK at "
            "initialisation), -inf (t → ∞, analytic), -sgd (the network's own SGD steps on the "
            "linear model, empirical NTK). gap = RMSE between the network's and the "
            "predictor's test predictions (mean ± SE over trials where both exist); "
            "rel. gap = gap / network test RMSE. vs reference: RMSE between the predictor and "
            "the one it differs from in one respect — -emp vs LIN: finite-width kernel error; "
            "-sgd vs -emp: SGD steps vs gradient flow; -inf vs LIN: t → ∞.",
            "",
            "| network | t | predictor | n | LIN RMSE | NN RMSE − LIN RMSE [95% CI] | gap | "
            "rel. gap | vs reference |",
            "|---|---:|---|---:|---:|---|---:|---:|---:|",
        ]
        for name, e in theory.items():
            t = f"{e['t']:g}" if e.get("t") is not None else "–"
            for m, p in e["predictors"].items():
                d = p["nn_minus_lin"]
                ci = (
                    f"{d['mean_diff']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
                    if d["n"] > 1
                    else "–"
                )
                lines.append(
                    f"| {name} | {t} | {m} | {p['rmse']['n'] if p['rmse'].get('n') else 0} | "
                    f"{_pm(p['rmse'])} | {ci} | {_pm(p['gap'])} | {_pm(p['rel_gap'], 3)} | "
                    f"{_pm(p.get('vs_reference', {}))} |"
                )
        lines += ["", "Lazy-training diagnostics (mean ± SE over trials):", ""]
        for name, e in theory.items():
            dg = e["diagnostics"]
            layers = ", ".join(_pm(x, 4) for x in dg.get("param_rel_change", []))
            lines.append(
                f"- {name} (width {e['width']}): kernel drift ‖Θ̂_T − Θ̂₀‖/‖Θ̂₀‖ "
                f"{_pm(dg.get('ntk_drift', {}))}; init error ‖Θ̂₀ − Θ‖/‖Θ‖ "
                f"{_pm(dg.get('ntk_init_error', {}))}; ‖θ_T − θ₀‖/‖θ₀‖ per layer: {layers or '–'}"
            )
        lines += ["", "![NN vs LIN](theory.png)", ""]
    sweep = summary.get("sweep")
    if sweep:
        lines += [
            "## Gap to the linearized network against width",
            "",
            "Slope of log gap on log width: per trial, then mean with 95% t interval over "
            "trials (theory: about −0.5).",
            "",
            "| network | predictor | widths | mean gap per width | slope [95% CI] | "
            "slope of means | vs reference per width |",
            "|---|---|---|---|---|---:|---|",
        ]
        for net, preds in sweep.items():
            for base, r in preds.items():
                gaps = ", ".join(f"{g:.4f}" for g in r["gap_mean"])
                slope = (
                    f"{r['slope']:+.3f} [{r['slope_ci_low']:+.3f}, {r['slope_ci_high']:+.3f}]"
                    if "slope" in r
                    else "–"
                )
                refs = ", ".join(f"{g:.4f}" for g in r.get("vs_reference_mean", [])) or "–"
                lines.append(
                    f"| {net} | {base} | {', '.join(map(str, r['widths']))} | {gaps} | {slope} | "
                    f"{r['slope_of_means']:+.3f} | {refs} |"
                )
        lines += ["", "![gap vs width](sweep.png)", ""]
    missing = summary.get("missing")
    if missing:
        lines += ["## Trials each method lacks (besides failed trials)", ""]
        for m, rows in missing.items():
            why = "; ".join(
                f"{r['trial']} ({r['status']}{': ' + r['error'] if r.get('error') else ''})"
                for r in rows
            )
            lines.append(f"- {m}: {why}")
        lines.append("")
    return lines


def write_theory_figures(cfg: Config, df: pd.DataFrame, summary: dict, store: Store) -> None:
    """theory.png: per-trial NN RMSE against LIN RMSE, one panel per depth (the widest network
    of a sweep); sweep.png: the gap to each LIN predictor against width, log-log."""
    if not summary.get("theory"):
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ok = df[df.status == "ok"]
    widest = {}
    for s in network_specs(cfg):
        if s.depth not in widest or s.width > widest[s.depth].width:
            widest[s.depth] = s
    fig, axes = plt.subplots(1, len(widest), figsize=(4.6 * len(widest), 4.2), dpi=110)
    axes = np.atleast_1d(axes)
    for ax, s in zip(axes, widest.values(), strict=True):
        nn = ok[ok.method == s.name].set_index("trial")["rmse"]
        lo, hi = np.inf, -np.inf
        for m in s.theory_methods(cfg.networks.parameterization):
            lin = ok[ok.method == m].set_index("trial")["rmse"]
            both = lin.index.intersection(nn.index)
            if len(both):
                ax.scatter(nn[both], lin[both], s=18, label=m.split("@")[0], alpha=0.8)
                lo = min(lo, nn[both].min(), lin[both].min())
                hi = max(hi, nn[both].max(), lin[both].max())
        if np.isfinite(lo):
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
            ax.legend(fontsize=7)
        ax.set_xlabel(f"{s.name} test RMSE")
        ax.set_ylabel("linearized test RMSE")
        ax.set_title(f"depth {s.depth}, width {s.width}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    store.write_bytes("theory.png", _png(fig))
    sweep = summary.get("sweep")
    if sweep:
        fig, axes = plt.subplots(1, len(sweep), figsize=(4.8 * len(sweep), 4.2), dpi=110)
        for ax, (net, preds) in zip(np.atleast_1d(axes), sweep.items(), strict=True):
            for base, r in preds.items():
                w, g = np.asarray(r["widths"], float), np.asarray(r["gap_mean"], float)
                label = f"{base}: slope {r.get('slope', r['slope_of_means']):+.2f}"
                ax.errorbar(w, g, yerr=r["gap_se"], marker="o", capsize=3, label=label)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(r["widths"], [str(w) for w in r["widths"]])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("width")
            ax.set_ylabel(f"RMSE({net}, LIN) on test")
            ax.set_title(f"{net}: gap to the linearized network")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        store.write_bytes("sweep.png", _png(fig))


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()

"""report.md: the results table, paired differences and the theory sections, as markdown."""

from __future__ import annotations

import pandas as pd

from ntkflow.config import Config
from ntkflow.names import same_depth


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
    key = [p for p in summary["paired"] if same_depth(p["a"], p["b"]) or p["a"][:-1] == p["b"][:-1]]
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

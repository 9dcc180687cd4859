"""report.md: the results table, paired differences and the theory sections, as markdown."""

from __future__ import annotations

import pandas as pd

from ntkflow.config import Config
from ntkflow.markdown_verdict import ci as _ci
from ntkflow.markdown_verdict import verdict_markdown
from ntkflow.names import same_depth, same_family


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
        *verdict_markdown(summary),
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
        p for p in summary["paired"] if same_depth(p["a"], p["b"]) or same_family(p["a"], p["b"])
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
    lines += settings_markdown(summary.get("computed_with") or {})
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


# ---- linearized theory (docs/theory.md) ---------------------------------------------------
def _pm(e: dict, digits: int = 4) -> str:
    if not e.get("n"):
        return "–"
    return f"{e['mean']:.{digits}f} ± {e['se']:.{digits}f}"


def _positive(d: dict | None, digits: int = 4) -> str:
    """A gap's geometric mean and its interval (ntkflow.intervals), never below zero."""
    if not d or not d.get("n"):
        return "–"
    g, lo, hi = (f"{d[k]:.{digits}f}" for k in ("geo_mean", "ci_low", "ci_high"))
    return g if d["n"] < 2 else f"{g} [{lo}, {hi}]"


def theory_markdown(summary: dict) -> list[str]:
    theory = summary.get("theory")
    lines: list[str] = []
    if theory:
        lines += [
            "## Does the network follow its NTK?",
            "",
            "Linearized theory at the network's own t = 2ηE/B with its own f₀: LIN "
            "(gradient flow, analytic NTK of its family), -emp (empirical NTK at "
            "initialisation), -inf (t → ∞, analytic), -sgd (the network's own SGD steps on the "
            "linear model, empirical NTK), -after (gradient flow with the empirical NTK of the "
            "trained network). gap = RMSE between the network's and the "
            "predictor's test predictions (geometric mean [95% interval on the log] over trials "
            "where both exist); "
            "rel. gap = gap / network test RMSE. vs reference: RMSE between the predictor and "
            "the one it differs from in one respect — -emp vs LIN: finite-width kernel error; "
            "-sgd vs -emp: SGD steps vs gradient flow; -inf vs LIN: t → ∞; -after vs -emp: "
            "the kernel's change during training.",
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
                    f"{_pm(p['rmse'])} | {ci} | {_positive(p.get('gap_interval'))} | "
                    f"{_positive(p.get('rel_gap_interval'), 3)} | "
                    f"{_positive(p.get('vs_reference'))} |"
                )
        lines += [
            "",
            "Lazy-training diagnostics (geometric mean [95% interval on the log] over trials):",
            "",
        ]
        for name, e in theory.items():
            dg = e["diagnostics"]
            layers = ", ".join(_positive(x) for x in dg.get("param_rel_change", []))
            lines.append(
                f"- {name} (width {e['width']}): kernel drift ‖Θ̂_T − Θ̂₀‖/‖Θ̂₀‖ "
                f"{_positive(dg.get('ntk_drift'))}; init error ‖Θ̂₀ − Θ‖/‖Θ‖ "
                f"{_positive(dg.get('ntk_init_error'))}; final error ‖Θ̂_T − Θ‖/‖Θ‖ "
                f"{_positive(dg.get('ntk_final_error'))}; ‖θ_T − θ₀‖/‖θ₀‖ per layer: "
                f"{layers or '–'}"
            )
        lines += after_markdown(theory)
        lines += ["", "![NN vs LIN](theory.png)", ""]
    lines += sweep_markdown(summary.get("sweep"))
    sweep = summary.get("width_slopes")
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
        lines.append("")
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


def _answer(d: dict | None) -> str:
    """Whether a paired difference (a − b) is negative, from its 95% interval."""
    if not d or d.get("n", 0) < 2:
        return "n < 2"
    if d["ci_high"] < 0:
        return "yes"
    return "no" if d["ci_low"] > 0 else "no detectable difference"


def after_markdown(theory: dict) -> list[str]:
    """Per network: is the final kernel closer to the analytic one than the initial, and is
    the network closer to LIN-after than to LIN-emp (paired over trials)?"""
    rows = [(n, e["after"]) for n, e in theory.items() if e.get("after")]
    if not rows:
        return []
    lines = [
        "",
        "After-kernel (paired over trials, 95% CI): is the trained network's kernel closer to "
        "the analytic NTK than its initial kernel, and does it explain the network better?",
        "",
        "| network | width | final − init error | final closer? | gap LIN-after − gap LIN-emp "
        "| LIN-after closer? |",
        "|---|---:|---|---|---|---|",
    ]
    for name, a in rows:
        fe, ga = a.get("final_minus_init_error"), a.get("after_minus_emp_gap")
        lines.append(
            f"| {name} | {theory[name]['width']} | {_ci(fe)} | {_answer(fe)} | {_ci(ga)} | "
            f"{_answer(ga)} |"
        )
    return lines


def sweep_markdown(sweep: dict | None) -> list[str]:
    """Per varied setting: the gap to each LIN predictor, drift and final error per value."""
    if not sweep:
        return []
    lines = [
        "## Gap to the linearized network against each varied setting",
        "",
        "The RMSE between the network's and each predictor's test predictions, with the "
        "network's kernel drift and final kernel error: geometric mean [95% interval on the "
        "log] over trials; the network's t.",
        "",
    ]
    for key, panel in sweep.items():
        lines += [f"### networks.{key}", ""]
        for label, line in panel["lines"].items():
            preds = list(line["gap"])
            lines += [
                f"| {label}: {key} | t | drift | final error | " + " | ".join(preds) + " |",
                "|---|---:|---:|---:|" + "---:|" * len(preds),
            ]
            dg = line["diagnostics"]
            for i, v in enumerate(line["values"]):
                t = dg["linearized_time"][i]
                cells = [
                    f"{t['mean']:.3g}" if t.get("n") else "–",
                    _positive(dg["ntk_drift"][i]),
                    _positive(dg["ntk_final_error"][i]),
                    *(_positive(line["gap"][p][i]) for p in preds),
                ]
                lines.append(f"| {v} | " + " | ".join(cells) + " |")
            lines.append("")
    return [*lines, "![gap vs each varied setting](sweep.png)", ""]


def settings_markdown(computed: dict) -> list[str]:
    """Which settings computed which rows: the methods grouped by the command and settings
    that computed them (ntkflow.holdings)."""
    groups: dict[str, list[str]] = {}
    for m, c in computed.items():
        settings = c.get("settings")
        shown = ", ".join(f"{k}={v}" for k, v in settings.items()) if settings else "unknown"
        groups.setdefault(f"{c['by']}: {shown}", []).append(m)
    if not groups:
        return []
    lines = ["## Which settings computed which rows", ""]
    lines += [f"- {', '.join(ms)} — {what}" for what, ms in groups.items()]
    return [*lines, ""]

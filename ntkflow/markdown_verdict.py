"""report.md's verdict section: the sentences, the four prediction gaps per network with their
intervals, and the paper's RMSE difference, labelled as the paper's (ntkflow.verdict)."""

from __future__ import annotations

from ntkflow.verdict import SIDE_LABEL, fmt_gap


def ci(d: dict, digits: int = 4, scale: float = 1.0, pct: bool = False) -> str:
    if not d or d.get("n", 0) < 2:
        return "–"
    f = (lambda v: f"{100 * v * scale:+.1f}%") if pct else (lambda v: f"{v * scale:+.{digits}f}")
    return f"{f(d['mean_diff'])} [{f(d['ci_low'])}, {f(d['ci_high'])}]"


def verdict_markdown(summary: dict) -> list[str]:
    verdict = summary.get("verdict")
    if not verdict:
        return []
    method = next(iter(verdict.values())).get("interval", "")
    lines = [
        "## Verdict: does the network predict like its NTK?",
        "",
        *[f"- {e['sentence']}" for e in verdict.values()],
        "",
        "Prediction gap: RMSE between the network's test predictions and a predictor's, over "
        "the trials where every side succeeded, relative = divided by the network's mean test "
        "RMSE over those trials. Kernel regression: the analytic NTK of its depth, t → ∞, no "
        "f₀ (the equivalence the paper tests); LIN-inf: the same started from f₀; LIN: the "
        "analytic NTK's gradient flow from f₀ to the network's t (the infinite-width theorem); "
        f"LIN-sgd: its own SGD steps on its linearization. Intervals: {method}, never below "
        "zero; a side is closer than another only when their intervals do not overlap.",
        "",
        "| network | n | compared with | predictor | gap [95% CI] | relative [95% CI] | closest |",
        "|---|---:|---|---|---|---|---|",
    ]
    for name, e in verdict.items():
        for side, g in e.get("gaps", {}).items():
            absolute = (
                f"{g['geo_mean']:.4f} [{g['ci_low']:.4f}, {g['ci_high']:.4f}]"
                if g["n"] > 1
                else "–"
            )
            near = "yes" if side in e.get("closest", []) else "no"
            lines.append(
                f"| {name} | {g['n']} | {SIDE_LABEL[side]} | {g['predictor']} | {absolute} | "
                f"{fmt_gap(g)} | {near} |"
            )
    lines += [
        "",
        "The paper's comparison, kept as the paper computed it: the difference of two test "
        "RMSEs, NN − kernel regression (paired 95% t interval, signed; it can be near zero "
        "while the predictions differ, so the sentence does not use it).",
        "",
        "| network | kernel | n | NN − kernel RMSE [95% CI] | relative [95% CI] |",
        "|---|---|---:|---|---|",
    ]
    for name, e in verdict.items():
        for k, d in (e.get("paper") or {}).items():
            rel = {key.removeprefix("rel_"): v for key, v in d.items() if key.startswith("rel_")}
            rel_ci = ci({**rel, "n": d.get("n", 0)}, pct=True)
            lines.append(f"| {name} | {k} | {d.get('n', 0)} | {ci(d)} | {rel_ci} |")
    return [*lines, "", "![verdict](verdict.png)", ""]

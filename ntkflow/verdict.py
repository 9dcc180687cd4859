"""The verdict: does a trained network predict like its NTK, and like which description of it?

Per network, over the trials where the network and every side compared succeeded, four
prediction gaps, each the RMSE between the network's test predictions and a predictor's:

- ``kernel``: kernel regression with the analytic NTK of its depth (NTKJ<L>, NTKB<L>; t → ∞,
  no f₀), the equivalence the paper tests;
- ``inf``: LIN<L>-inf, kernel regression started from the network's f₀ (t → ∞);
- ``flow``: LIN<L>, the analytic NTK's gradient flow from f₀ to the network's own t, what the
  theorem predicts at infinite width;
- ``sgd``: LIN<L>-sgd, the network's own SGD steps on its linearization at finite width.

Each gap has a 95% interval that is never below zero (:mod:`ntkflow.intervals`), absolute and
relative to the network's mean test RMSE over the same trials (the same interval, rescaled).
The paper's quantity, the difference of the two test RMSEs, is kept beside them, labelled as
the paper's; the sentence (:func:`sentence`) is chosen from the prediction gaps only: a side is
called closer than another only when their intervals do not overlap, which is what the table
and the verdict figure show.
"""

from __future__ import annotations

import pandas as pd

from ntkflow.gaps import compared_kernels
from ntkflow.intervals import METHOD, positive_interval, scaled, separated
from ntkflow.names import family_kernels
from ntkflow.stats import paired_difference

SIDES = ("kernel", "inf", "flow", "sgd")
VARIANT = {"inf": "-inf", "flow": "", "sgd": "-sgd"}
SIDE_LABEL = {
    "kernel": "kernel regression",
    "inf": "LIN-inf",
    "flow": "LIN",
    "sgd": "LIN-sgd",
}


def _numeric(s) -> pd.Series:
    return pd.to_numeric(s, errors="coerce")


def verdict(df: pd.DataFrame, specs, methods: list[str]) -> dict[str, dict]:
    """Per network (``specs``): the four prediction gaps, the paper's RMSE difference, which
    sides are closest, and the sentence. ``df``: tidy rows; a network's row carries
    ``rmse_vs_kernel`` and ``kernel_compared`` (ntkflow.gaps), a LIN row ``rmse_vs_network``."""
    ok = df[df.status == "ok"]
    out = {}
    for s in specs:
        nn = ok[ok.method == s.name].set_index("trial")
        per_side: dict[str, pd.Series] = {}
        predictor: dict[str, str] = {}
        if "rmse_vs_kernel" in nn and _numeric(nn["rmse_vs_kernel"]).notna().any():
            per_side["kernel"] = _numeric(nn["rmse_vs_kernel"]).dropna()
            predictor["kernel"] = str(nn["kernel_compared"].dropna().iloc[0])
        for side, variant in VARIANT.items():
            m = s.theory_method(variant)
            lin = ok[ok.method == m].set_index("trial")
            if m in methods and "rmse_vs_network" in lin:
                per_side[side] = _numeric(lin["rmse_vs_network"]).dropna()
                predictor[side] = m
        nn_rmse = _numeric(nn["rmse"]).dropna() if len(nn) else pd.Series(dtype=float)
        trials = nn_rmse.index
        for g in per_side.values():
            trials = trials.intersection(g.index)
        scale = float(nn_rmse[trials].mean()) if len(trials) else float("nan")
        entry: dict = {
            "network": s.name,
            "depth": s.depth,
            "trials": [int(k) for k in trials],
            "n": len(trials),
            "nn_rmse": scale if len(trials) else None,
            "interval": METHOD,
            "gaps": {},
            "paper": {},
        }
        for side in SIDES:
            if side in per_side:
                d = positive_interval(per_side[side][trials])
                entry["gaps"][side] = {
                    "predictor": predictor[side],
                    **d,
                    "relative": scaled(d, scale),
                }
        for k in compared_kernels(s):  # the paper's quantity: |RMSE(NN) − RMSE(KRR)|, signed
            if k in methods and len(trials):
                kr = _numeric(ok[ok.method == k].set_index("trial")["rmse"]).dropna()
                both = trials.intersection(kr.index)
                if len(both):
                    d = paired_difference(nn_rmse[both], kr[both])
                    rel = {f"rel_{x}": d[x] / scale for x in ("mean_diff", "ci_low", "ci_high")}
                    entry["paper"][k] = {**d, **rel}
        entry["closest"] = closest(entry["gaps"])
        entry["supports"] = judge(entry)
        entry["sentence"] = sentence(entry)
        out[s.name] = entry
    return out


def closest(gaps: dict) -> list[str]:
    """The sides whose gap the intervals do not separate from the smallest (by geometric mean),
    smallest first; empty without intervals."""
    have = {k: g for k, g in gaps.items() if g["n"] > 1}
    if not have:
        return []
    order = sorted(have, key=lambda k: have[k]["geo_mean"])
    best = have[order[0]]
    return [k for k in order if k == order[0] or not separated(best, have[k])]


def judge(entry: dict) -> str:
    """``kernel``: kernel regression's gap is below every other side's, intervals apart;
    ``linearization``: some linearized predictor's gap is below kernel regression's, intervals
    apart; ``tied``: the intervals do not separate kernel regression from the closest;
    ``undecided``: fewer than two trials, or no kernel regression gap (its kernel not among the
    run's, or its predictions not stored)."""
    gaps, near = entry["gaps"], entry["closest"]
    if "kernel" not in gaps or gaps["kernel"]["n"] < 2 or len(gaps) < 2:
        return "undecided"
    if near == ["kernel"]:
        return "kernel"
    return "tied" if "kernel" in near else "linearization"


def fmt_gap(g: dict) -> str:
    """``12.3% [9.1%, 16.0%]``: a relative gap's geometric mean and 95% interval."""
    r = g["relative"]
    if g["n"] < 2:
        return f"{pct(r['geo_mean'])} (n = {g['n']})"
    return f"{pct(r['geo_mean'])} [{pct(r['ci_low'])}, {pct(r['ci_high'])}]"


def pct(x: float) -> str:
    """A fraction as a percentage: one decimal, two below 1%."""
    return f"{100 * x:.1f}%" if abs(x) >= 0.01 else f"{100 * x:.2f}%"


def _named(entry: dict, sides) -> str:
    gaps = entry["gaps"]
    return ", ".join(f"{gaps[k]['predictor']} {fmt_gap(gaps[k])}" for k in sides)


def sentence(entry: dict) -> str:
    """One sentence from the gaps (relative to the network's RMSE, 95% intervals) and the
    outcome of :func:`judge`."""
    name, outcome, gaps = entry["network"], entry["supports"], entry["gaps"]
    if outcome == "undecided":
        return (
            f"{name}: no verdict: it needs the prediction gaps to kernel regression with its "
            f"NTK ({' or '.join(family_kernels(entry['depth']))} among the run's kernels) and to a "
            "linearized predictor over at least two trials."
        )
    near = entry["closest"]
    far = [k for k in SIDES if k in gaps and k not in near]
    tail = f"; farther: {_named(entry, far)}" if far else ""
    n = f" ({entry['n']} trials; gap = RMSE between test predictions, % of its test RMSE)"
    if outcome == "kernel":
        return (
            f"{name}: predicts most like kernel regression with its NTK: gap to "
            f"{_named(entry, ['kernel'])}, below every linearized predictor's, intervals apart"
            f"{tail}{n}."
        )
    if outcome == "linearization":
        return (
            f"{name}: predicts more like its linearization than like kernel regression with its "
            f"NTK: gap to {_named(entry, near)}, intervals apart from {_named(entry, ['kernel'])}"
            f"{n}."
        )
    others = [k for k in near if k != "kernel"]
    return (
        f"{name}: the intervals do not separate kernel regression with its NTK "
        f"({_named(entry, ['kernel'])}) from {_named(entry, others)}{tail}{n}."
    )

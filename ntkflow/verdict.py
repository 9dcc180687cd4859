"""The verdict: which comparison between a trained network and its NTK the data support.

Per network, over the trials where both sides succeeded, with paired 95% t intervals:

- the paper's comparison: test RMSE of the network minus that of kernel regression with the
  analytic NTK of its depth (NTKJ<L>, NTKB<L>; t → ∞, no f₀), also relative to the network's
  mean RMSE;
- the matched comparison: the RMSE between the network's test predictions and those of its
  linearized SGD replay LIN<L>-sgd (same f₀, same steps), absolute and relative to its RMSE.

The sentence is chosen by comparing the two relative numbers at the ends of their intervals
least favourable to the claim made (:func:`judge`), and filled in with them.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ntkflow.names import family_kernels
from ntkflow.stats import paired_difference


def verdict(df: pd.DataFrame, specs, methods: list[str]) -> dict[str, dict]:
    """Per network (``specs``): the paper's and the matched comparison, the outcome and the
    sentence. Kernels are compared when they are among the run's ``methods``."""
    ok = df[df.status == "ok"]
    out = {}
    for s in specs:
        nn = ok[ok.method == s.name].set_index("trial")
        nn_rmse = pd.to_numeric(nn["rmse"], errors="coerce").dropna() if len(nn) else nn
        mean = float(nn_rmse.mean()) if len(nn) else None
        entry: dict = {"network": s.name, "depth": s.depth, "nn_rmse": mean}
        paper = {}
        own = [s.kernel] if s.kernel else []  # the network's own family first
        for k in own + [k for k in family_kernels(s.depth) if k not in own]:
            if k not in methods:
                continue
            kr = ok[ok.method == k].set_index("trial")["rmse"]
            both = nn_rmse.index.intersection(kr.index)
            if len(both):
                d = paired_difference(nn_rmse[both], kr[both])
                paper[k] = {**d, **_relative(d, float(nn_rmse[both].mean()))}
        entry["paper"] = paper
        lin = ok[ok.method == s.theory_method("-sgd")].set_index("trial")
        both = lin.index.intersection(nn_rmse.index)
        if len(both) and "rmse_vs_network" in lin:
            gap = pd.to_numeric(lin.loc[both, "rmse_vs_network"], errors="coerce")
            rel = gap / nn_rmse[both]
            zero = np.zeros(len(both))
            entry["matched"] = {
                "predictor": s.theory_method("-sgd"),
                "gap": paired_difference(gap, zero),
                "rel_gap": paired_difference(rel, zero),
            }
        entry["supports"] = judge(entry)
        entry["sentence"] = sentence(entry)
        out[s.name] = entry
    return out


def _relative(d: dict, scale: float) -> dict:
    return {f"rel_{k}": d[k] / scale for k in ("mean_diff", "ci_low", "ci_high")}


def _own_kernel(entry: dict) -> tuple[str, dict] | None:
    """The kernel regression the paper compares with: the network's own family if it has an
    interval, else the other."""
    for k, d in entry.get("paper", {}).items():
        if d["n"] > 1:
            return k, d
    return None


def _bounds(d: dict, prefix: str = "") -> tuple[float, float]:
    """The smallest and largest |value| over a 95% interval (smallest 0 if it contains 0)."""
    lo, hi = d[f"{prefix}ci_low"], d[f"{prefix}ci_high"]
    far = max(abs(lo), abs(hi))
    return (0.0, far) if lo <= 0 <= hi else (min(abs(lo), abs(hi)), far)


def judge(entry: dict) -> str:
    """Which description the network is closer to, both relative to its RMSE and each taken at
    the end of its 95% interval least favourable to the claim: ``matched`` when even the
    largest gap to LIN-sgd is below the smallest |RMSE difference| to kernel regression;
    ``paper`` when even the largest |RMSE difference| is below the smallest gap; ``neither``
    when the intervals overlap; ``undecided`` without intervals (fewer than two trials, or no
    kernel regression of the network's depth among the run's kernels)."""
    kern, matched = _own_kernel(entry), entry.get("matched")
    if kern is None or matched is None or not matched["rel_gap"]["n"] > 1:
        return "undecided"
    paper_lo, paper_hi = _bounds(kern[1], "rel_")
    gap_lo, gap_hi = _bounds(matched["rel_gap"])
    if gap_hi < paper_lo:
        return "matched"
    return "paper" if paper_hi < gap_lo else "neither"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if math.isfinite(x) else "–"


def sentence(entry: dict) -> str:
    """One sentence from the numbers of :func:`verdict` and the outcome of :func:`judge`."""
    name, outcome = entry["network"], entry["supports"]
    kern, m = _own_kernel(entry), entry.get("matched")
    if outcome == "undecided":
        kernels = " or ".join(family_kernels(entry["depth"]))
        return (
            f"{name}: no verdict: it needs both comparisons over at least two trials (kernel "
            f"regression {kernels} among the run's kernels, and LIN-sgd)."
        )
    k, d = kern
    rg = m["rel_gap"]
    paper = (
        f"the difference of its test RMSE from kernel regression {k}, {d['mean_diff']:+.4f} "
        f"({_pct(d['rel_mean_diff'])} of its RMSE, 95% CI {_pct(d['rel_ci_low'])} to "
        f"{_pct(d['rel_ci_high'])})"
    )
    matched = (
        f"its prediction gap to {m['predictor']}, {_pct(rg['mean_diff'])} of its RMSE (95% CI "
        f"{_pct(max(rg['ci_low'], 0.0))} to {_pct(rg['ci_high'])})"
    )
    if outcome == "matched":
        return (
            f"{name}: the data support the matched comparison: {matched}, is smaller than "
            f"{paper}; the paper's difference measures its comparison (t → ∞, no f₀), not a "
            "failure of the linearization."
        )
    if outcome == "paper":
        return (
            f"{name}: the data support the paper's comparison: {paper}, is smaller than "
            f"{matched}: the network left its linearization yet predicts like kernel regression."
        )
    return (
        f"{name}: the data single out neither comparison: {paper}, and {matched}, have "
        f"overlapping intervals ({d['n']} trials)."
    )

"""Statistics over trials (SPEC §7)."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd
from scipy import stats as st


def method_stats(rmse: np.ndarray) -> dict[str, float]:
    r = np.asarray(rmse, dtype=float)
    n = len(r)
    if n == 0:
        return {"n": 0}
    q1, med, q3 = np.percentile(r, [25, 50, 75])
    return {
        "n": n,
        "mean_rmse": float(r.mean()),
        "se": float(r.std(ddof=0) / np.sqrt(n)),  # as published
        "se_unbiased": float(r.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
        "median": float(med),
        "q1": float(q1),
        "q3": float(q3),
        "min": float(r.min()),
        "max": float(r.max()),
    }


def paired_difference(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Mean of a − b over the same trials with a two-sided t interval."""
    d = np.asarray(a, float) - np.asarray(b, float)
    n = len(d)
    out = {"n": n, "mean_diff": float(d.mean()) if n else float("nan")}
    if n > 1:
        se = d.std(ddof=1) / np.sqrt(n)
        half = float(st.t.ppf(0.5 + level / 2, n - 1) * se)
        out.update(ci_low=out["mean_diff"] - half, ci_high=out["mean_diff"] + half)
    else:
        out.update(ci_low=float("nan"), ci_high=float("nan"))
    return out


def summarize(df: pd.DataFrame, methods: list[str]) -> dict:
    """``df``: tidy rows (trial, method, rmse, status). Failed trials are counted, not averaged."""
    ok = df[df.status == "ok"]
    wide = ok.pivot_table(index="trial", columns="method", values="rmse")
    per_method = {m: method_stats(ok.loc[ok.method == m, "rmse"].to_numpy()) for m in methods}
    families: dict[str, dict[int, str]] = {}
    for m in methods:
        hit = re.fullmatch(r"([A-Z]+?)(\d+)", m)
        if hit:
            families.setdefault(hit[1], {})[int(hit[2])] = m
    change = {}
    for fam, depths in families.items():
        if 1 in depths and 2 in depths:
            m1, m2 = per_method[depths[1]], per_method[depths[2]]
            if m1.get("n") and m2.get("n"):
                change[fam] = 100.0 * (m2["mean_rmse"] - m1["mean_rmse"]) / m1["mean_rmse"]
    paired = []
    for a, b in itertools.combinations([m for m in methods if m in wide], 2):
        both = wide[[a, b]].dropna()
        if len(both):
            paired.append({"a": a, "b": b, **paired_difference(both[a], both[b])})
    return {"methods": per_method, "percent_change_1_to_2": change, "paired": paired}

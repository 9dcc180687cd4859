"""Intervals for non-negative quantities (prediction gaps): never below zero, one method
everywhere they are printed (docs/theory.md, "Intervals")."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.special import stdtrit  # Student's t quantile: t.ppf(q, df) == stdtrit(df, q)

METHOD = "t interval on the log (geometric mean), 95%"


def positive_interval(values, level: float = 0.95) -> dict[str, float]:
    """n, the arithmetic mean, the geometric mean and a two-sided t interval of the geometric
    mean of non-negative ``values`` (finite ones; trials paired by the caller): the t interval
    of log values, exponentiated. It is never below zero and is exact for log-normal values, and
    stays honest with few trials (a percentile bootstrap is too narrow at n = 8). Should a value
    be exactly zero (no log), the t interval of the arithmetic mean, clipped at zero."""
    v = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float)
    v = v[np.isfinite(v)]
    n = len(v)
    nan = float("nan")
    out = {"n": n, "mean": float(v.mean()) if n else nan, "geo_mean": nan}
    out.update(ci_low=nan, ci_high=nan)
    if not n:
        return out
    if (v < 0).any():
        raise ValueError(f"a non-negative quantity has negative values: {v[v < 0].tolist()}")
    q = float(stdtrit(n - 1, 0.5 + level / 2)) if n > 1 else nan
    if (v > 0).all():
        logs = np.log(v)
        centre = float(logs.mean())
        out["geo_mean"] = math.exp(centre)
        if n > 1:
            half = q * float(logs.std(ddof=1)) / math.sqrt(n)
            out.update(ci_low=math.exp(centre - half), ci_high=math.exp(centre + half))
    else:
        out["geo_mean"] = 0.0
        if n > 1:
            half = q * float(v.std(ddof=1)) / math.sqrt(n)
            out.update(ci_low=max(0.0, out["mean"] - half), ci_high=out["mean"] + half)
    return out


def scaled(d: dict, scale: float) -> dict:
    """The interval ``d`` of :func:`positive_interval` divided by ``scale`` (e.g. relative to
    the network's mean test RMSE): the same interval in other units."""
    keys = ("mean", "geo_mean", "ci_low", "ci_high")
    return {**d, **{k: d[k] / scale for k in keys}}


def separated(a: dict, b: dict) -> bool:
    """Whether ``a``'s interval lies wholly below ``b``'s (both with intervals)."""
    return a["n"] > 1 and b["n"] > 1 and a["ci_high"] < b["ci_low"]

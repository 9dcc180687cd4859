"""Statistics over trials (docs/theory.md)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy.special import stdtrit  # Student's t quantile: t.ppf(q, df) == stdtrit(df, q)

from ntkflow.intervals import positive_interval
from ntkflow.names import (
    SCALE_KEYS,
    THEORY_VARIANTS,
    depth_series,
    network_name,
    parse_method,
    same_point,
    sweep_tag,
)


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
        half = float(stdtrit(n - 1, 0.5 + level / 2) * se)
        out.update(ci_low=out["mean_diff"] - half, ci_high=out["mean_diff"] + half)
    else:
        out.update(ci_low=float("nan"), ci_high=float("nan"))
    return out


def summarize(df: pd.DataFrame, methods: list[str]) -> dict:
    """``df``: tidy rows (trial, method, rmse, status). Failed trials are counted, not averaged.
    Paired differences: every pair of methods of one sweep grid point (kernels in all)."""
    ok = df[df.status == "ok"]
    wide = ok.pivot_table(index="trial", columns="method", values="rmse")
    per_method = {m: method_stats(ok.loc[ok.method == m, "rmse"].to_numpy()) for m in methods}
    families: dict[str, dict[int, str]] = {}
    for m in methods:
        series = depth_series(m)
        if series:
            families.setdefault(series[0], {})[series[1]] = m
    change = {}
    for fam, depths in families.items():
        if 1 in depths and 2 in depths:
            m1, m2 = per_method[depths[1]], per_method[depths[2]]
            if m1.get("n") and m2.get("n"):
                change[fam] = 100.0 * (m2["mean_rmse"] - m1["mean_rmse"]) / m1["mean_rmse"]
    paired = []
    for a, b in itertools.combinations([m for m in methods if m in wide], 2):
        if not same_point(a, b):
            continue
        both = wide[[a, b]].dropna()
        if len(both):
            paired.append({"a": a, "b": b, **paired_difference(both[a], both[b])})
    return {"methods": per_method, "percent_change_1_to_2": change, "paired": paired}


# ---- linearized theory (docs/theory.md) ---------------------------------------------------
THEORY_DIAGNOSTICS = ("ntk_drift", "ntk_init_error", "ntk_final_error")


def _mean_se(values) -> dict[str, float]:
    """n, mean and SE (ddof=0, as everywhere in the summary) of the finite values."""
    v = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"n": 0}
    return {"n": len(v), "mean": float(v.mean()), "se": float(v.std(ddof=0) / np.sqrt(len(v)))}


def _nonnegative(values) -> dict[str, float]:
    """A non-negative quantity over trials (a gap, a kernel drift, an RMSE between two
    predictors): :func:`_mean_se` with the geometric mean and its 95% interval, never below
    zero (:func:`ntkflow.intervals.positive_interval`), which is what the report prints."""
    d = _mean_se(values)
    return {**positive_interval(values), **d} if d["n"] else d


def missing_trials(
    df: pd.DataFrame, methods: list[str], failed_trials: list[int] = ()
) -> dict[str, list[dict]]:
    """Per method that lacks some trial beyond the failed trials (listed once elsewhere): which
    trials, and why (e.g. its network diverged)."""
    out = {}
    for m in methods:
        bad = df[(df.method == m) & (df.status != "ok") & ~df.trial.isin(list(failed_trials))]
        if len(bad):
            err = bad["error"] if "error" in bad else pd.Series([None] * len(bad), index=bad.index)
            out[m] = [
                {"trial": int(k), "status": s, "error": e if isinstance(e, str) else None}
                for k, s, e in zip(bad.trial, bad.status, err, strict=True)
            ]
    return out


def theory_summary(df: pd.DataFrame, specs) -> dict:
    """Per network: how far each linearized predictor is from it (docs/theory.md).

    For each LIN method, over the trials where both it and the network succeeded: the RMSE
    between their test predictions (``gap``), the same relative to the network's test RMSE
    (``rel_gap``), the LIN test RMSE, and the paired NN − LIN RMSE difference with its 95% t
    interval. ``diagnostics``: kernel drift, init error and ‖θ_T − θ₀‖/‖θ₀‖ per layer.
    """
    ok = df[df.status == "ok"]
    out = {}
    for spec in specs:
        nn = ok[ok.method == spec.name].set_index("trial")
        entry = {
            **{k: spec.setting(k) for k in ("width", "lr", "epochs", "batch_size")},
            "parameterization": spec.parameterization,
            "depth": spec.depth,
            "t": float(nn["linearized_time"].iloc[0])
            if "linearized_time" in nn and len(nn)
            else None,
            "nn_rmse": _mean_se(nn["rmse"]) if len(nn) else {"n": 0},
            "predictors": {},
            "diagnostics": {},
        }
        for m in spec.theory_methods():
            lin = ok[ok.method == m].set_index("trial")
            both = lin.index.intersection(nn.index)
            gap = lin.loc[both, "rmse_vs_network"] if "rmse_vs_network" in lin else []
            rel = lin.loc[both, "rel_rmse_vs_network"] if "rel_rmse_vs_network" in lin else []
            ref = lin["rmse_vs_reference"] if "rmse_vs_reference" in lin else []
            entry["predictors"][m] = {
                "trials": [int(k) for k in both],
                "rmse": _mean_se(lin.loc[both, "rmse"]),
                "gap": _mean_se(gap),
                "rel_gap": _mean_se(rel),
                # as the verdict's gaps: never below zero (ntkflow.intervals)
                "gap_interval": positive_interval(gap),
                "rel_gap_interval": positive_interval(rel),
                # RMSE to the predictor differing in one respect (-emp: LIN, -sgd: -emp, -inf: LIN)
                "vs_reference": _nonnegative(ref),
                "nn_minus_lin": paired_difference(nn.loc[both, "rmse"], lin.loc[both, "rmse"]),
            }
        for key in THEORY_DIAGNOSTICS:
            if key in nn:
                entry["diagnostics"][key] = _nonnegative(nn[key])
        layers = sorted(
            c for c in nn.columns if c.startswith("param_rel_change_l") and nn[c].notna().any()
        )
        entry["diagnostics"]["param_rel_change"] = [_nonnegative(nn[c]) for c in layers]
        entry["after"] = after_kernel(nn, ok, spec)
        out[spec.name] = entry
    return out


def series(specs, key: str, varied) -> dict[str, list]:
    """The specs of a sweep as lines against the setting ``key``: one per depth (all depths on
    one line when ``key`` is the depth) and combination of the other varied settings, labelled
    like a network (``NN1``, ``NN1@lr=0.02``; ``NN`` for lines against depth)."""
    out: dict[str, list] = {}
    for s in specs:
        others = {k: s.setting(k) for k in varied if k not in (key, "depths")}
        label = network_name(None if key == "depths" else s.depth, sweep_tag(others))
        out.setdefault(label, []).append(s)
    return out


def sweep_panels(df: pd.DataFrame, specs, vary: dict) -> dict:
    """Per varied setting with at least two values, per line (:func:`series`): the values, and
    per value the geometric mean with its 95% interval over trials (:func:`_nonnegative`) of
    the gap NN ↔ each LIN predictor (``LIN``,
    ``LIN-emp``, ...) and of the network's kernel diagnostics and t."""
    ok = df[df.status == "ok"]
    out = {}
    for key in (k for k, values in vary.items() if len(values) > 1):
        panel = {}
        for label, group in series(specs, key, list(vary)).items():
            line = {"values": [s.setting(key) for s in group], "gap": {}, "diagnostics": {}}
            for v in THEORY_VARIANTS:
                gaps = []
                for s in group:
                    lin = ok[ok.method == s.theory_method(v)]
                    gaps.append(_nonnegative(lin.get("rmse_vs_network", [])))
                if any(g["n"] for g in gaps):
                    line["gap"][f"LIN{v}"] = gaps
            nets = [ok[ok.method == s.name] for s in group]
            for d in ("linearized_time", *THEORY_DIAGNOSTICS):
                line["diagnostics"][d] = [_nonnegative(nn.get(d, [])) for nn in nets]
            panel[label] = line
        out[key] = {"scale": key in SCALE_KEYS, "lines": panel}
    return out


def after_kernel(nn: pd.DataFrame, ok: pd.DataFrame, spec) -> dict:
    """Does training move the kernel toward its limit, and does the final kernel explain the
    network better? Paired over trials (95% t intervals): final − init error of the network's
    empirical NTK against the analytic one, and gap NN ↔ LIN-after − gap NN ↔ LIN-emp."""
    out = {}
    if {"ntk_final_error", "ntk_init_error"} <= set(nn):
        e = nn[["ntk_final_error", "ntk_init_error"]].apply(pd.to_numeric, errors="coerce")
        e = e.dropna()
        out["final_minus_init_error"] = paired_difference(e.ntk_final_error, e.ntk_init_error)
    gaps = {}
    for v in ("-after", "-emp"):
        lin = ok[ok.method == spec.theory_method(v)].set_index("trial")
        if "rmse_vs_network" in lin:
            gaps[v] = pd.to_numeric(lin["rmse_vs_network"], errors="coerce")
    if len(gaps) == 2:
        both = pd.DataFrame(gaps).dropna()
        out["after_minus_emp_gap"] = paired_difference(both["-after"], both["-emp"])
    return out


def width_slopes(df: pd.DataFrame, specs, varied=("width",), level: float = 0.95) -> dict:
    """Log-log slope of each LIN predictor's gap to its network against width, per depth (and
    combination of the other varied settings: see :func:`series`).

    Per trial present at every width, the least-squares slope of log gap on log width; the
    estimate is their mean with a t interval over trials (paired by trial, so the spread of the
    gap's level between trials does not enter). Also the slope through the mean gaps, and per
    width the mean gap and the NN − LIN test-RMSE difference relative to the LIN RMSE.
    """
    ok = df[df.status == "ok"]
    out = {}
    for label, group in series(specs, "width", varied).items():
        if len(group) < 2:
            continue
        widths = [s.width for s in group]
        logw = np.log(widths)
        res = {}
        for method in map(parse_method, group[0].theory_methods()):
            base, gaps, rel_rmse, ref = method.base, {}, [], []
            for s in group:
                lin = ok[ok.method == s.theory_method(method.variant)].set_index("trial")
                if "rmse_vs_reference" in lin:
                    ref.append(_mean_se(lin["rmse_vs_reference"]).get("mean", float("nan")))
                nn = ok[ok.method == s.name].set_index("trial")
                both = lin.index.intersection(nn.index)
                gaps[s.width] = pd.to_numeric(lin.loc[both, "rmse_vs_network"], errors="coerce")
                diff = (nn.loc[both, "rmse"] - lin.loc[both, "rmse"]) / lin.loc[both, "rmse"]
                rel_rmse.append(_mean_se(diff))
            table = pd.DataFrame(gaps).dropna()
            table = table[(table > 0).all(axis=1)]
            slopes = [
                float(np.polyfit(logw, np.log(r.to_numpy()), 1)[0]) for _, r in table.iterrows()
            ]
            means = [float(gaps[w].mean()) if len(gaps[w]) else float("nan") for w in widths]
            fin = np.isfinite(means) & (np.asarray(means) > 0)
            entry = {
                "widths": widths,
                "gap_mean": means,
                "gap_interval": [_nonnegative(gaps[w]) for w in widths],
                "nn_vs_lin_rmse_rel": rel_rmse,
                "vs_reference_mean": ref,
                "trials": [int(k) for k in table.index],
                "slope_of_means": float(np.polyfit(logw[fin], np.log(np.asarray(means)[fin]), 1)[0])
                if fin.sum() >= 2
                else float("nan"),
            }
            if len(slopes):
                mean = float(np.mean(slopes))
                half = (
                    float(stdtrit(len(slopes) - 1, 0.5 + level / 2) * np.std(slopes, ddof=1))
                    / np.sqrt(len(slopes))
                    if len(slopes) > 1
                    else float("nan")
                )
                entry.update(slope=mean, slope_ci_low=mean - half, slope_ci_high=mean + half)
            res[base] = entry
        out[label] = res
    return out

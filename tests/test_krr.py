"""Kernel regression solves and statistics (SPEC §4, §7)."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from ntkflow import krr
from ntkflow.kernels import kernel
from ntkflow.stats import method_stats, paired_difference, summarize


def _problem(n=80, m=30, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n + m, 15))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    k = kernel("NTKB2")
    return k(x[:n]), k(x[n:], x[:n]), rng.standard_normal(n)


def test_prediction_matches_direct_solve():
    ktt, kte, y = _problem()
    pred, info = krr.predict(kte, ktt, y)
    direct = kte @ np.linalg.solve(ktt, y)
    cond = np.linalg.cond(ktt, 1)
    # backward-stable solves: relative error ≲ cond · eps
    assert np.max(np.abs(pred - direct)) <= 50 * cond * np.finfo(float).eps * np.max(np.abs(direct))
    assert info["solver"] == "cholesky" and info["ridge"] == 0.0
    # LAPACK's 1-norm estimate is a lower bound, in practice within a factor of 3
    assert cond / 3 <= info["condition_estimate"] <= cond * 1.0001


def test_ridge_and_input_untouched():
    ktt, kte, y = _problem()
    before = ktt.copy()
    pred, info = krr.predict(kte, ktt, y, ridge=0.1)
    np.testing.assert_array_equal(ktt, before)
    direct = kte @ np.linalg.solve(ktt + 0.1 * np.eye(len(y)), y)
    cond = np.linalg.cond(ktt + 0.1 * np.eye(len(y)), 1)
    assert np.max(np.abs(pred - direct)) <= 50 * cond * np.finfo(float).eps * np.abs(direct).max()
    assert info["ridge"] == 0.1


def test_indefinite_falls_back_to_lu_and_singular_to_lstsq():
    ktt, kte, y = _problem(n=30)
    bad = ktt - 2 * np.eye(30) * np.abs(ktt).max()
    alpha, info = krr.solve(bad, y)
    assert info["solver"] == "lu"
    np.testing.assert_allclose(bad @ alpha, y, atol=1e-9)
    sing = np.ones((5, 5))
    alpha, info = krr.solve(sing, np.ones(5))
    assert info["solver"] == "lstsq" and info["condition_estimate"] == float("inf")


def test_rmse():
    assert krr.rmse(np.array([1.0, 2.0]), np.array([1.0, 4.0])) == pytest.approx(np.sqrt(2))


def test_method_stats_hand_computed():
    s = method_stats(np.array([1.0, 2.0, 3.0, 4.0]))
    assert s["n"] == 4 and s["mean_rmse"] == 2.5 and s["median"] == 2.5
    assert s["se"] == pytest.approx(np.sqrt(1.25) / 2)  # population variance (1.25) / √n
    assert s["se_unbiased"] == pytest.approx(np.sqrt(5 / 3) / 2)
    assert (s["q1"], s["q3"]) == (1.75, 3.25)


def test_paired_difference_interval():
    a, b = np.array([1.0, 2.0, 4.0]), np.array([0.5, 1.0, 2.5])  # d = 0.5, 1.0, 1.5
    p = paired_difference(a, b)
    half = st.t.ppf(0.975, 2) * 0.5 / np.sqrt(3)  # sd(d, ddof=1) = 0.5
    assert p["mean_diff"] == pytest.approx(1.0)
    assert (p["ci_low"], p["ci_high"]) == (pytest.approx(1 - half), pytest.approx(1 + half))


def test_summary_excludes_failed_trials_and_percent_change():
    df = pd.DataFrame(
        [
            {"trial": 0, "method": "NTKB1", "rmse": 1.0, "status": "ok"},
            {"trial": 0, "method": "NTKB2", "rmse": 2.0, "status": "ok"},
            {"trial": 1, "method": "NTKB1", "rmse": 3.0, "status": "ok"},
            {"trial": 1, "method": "NTKB2", "rmse": 3.0, "status": "ok"},
            {"trial": 2, "method": "NTKB1", "rmse": np.nan, "status": "failed"},
            {"trial": 2, "method": "NTKB2", "rmse": np.nan, "status": "failed"},
        ]
    )
    s = summarize(df, ["NTKB1", "NTKB2"])
    assert s["methods"]["NTKB1"]["n"] == 2 and s["methods"]["NTKB1"]["mean_rmse"] == 2.0
    assert s["percent_change_1_to_2"]["NTKB"] == pytest.approx(25.0)  # 2 → 2.5
    (pair,) = s["paired"]
    assert (pair["a"], pair["b"], pair["n"], pair["mean_diff"]) == ("NTKB1", "NTKB2", 2, -0.5)

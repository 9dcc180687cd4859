"""Kernel regression (SPEC §4): ŷ(X*) = K(X*, X) (K(X, X) + λI)⁻¹ y.

Cholesky first; if the Gram is not numerically positive definite (the published formulas can
make it indefinite), LU; if LU finds it exactly singular, least squares. The solver used, the
ridge and a LAPACK estimate of the 1-norm condition number are returned with the prediction.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
from scipy.linalg import lapack


def solve(k_train: np.ndarray, y: np.ndarray, ridge: float = 0.0, overwrite: bool = False):
    """α = (K + λI)⁻¹ y. Returns ``(alpha, info)``; ``k_train`` is consumed if ``overwrite``."""
    a = k_train if overwrite else np.array(k_train, dtype=np.float64, copy=True)
    if ridge:
        a[np.diag_indices_from(a)] += ridge
    anorm = float(np.abs(a).sum(axis=0).max())
    info = {"ridge": float(ridge), "jitter": 0.0}
    c, ok = lapack.dpotrf(a, lower=1, clean=0, overwrite_a=0)
    if ok == 0:
        alpha = scipy.linalg.cho_solve((c, True), y, check_finite=False)
        rcond, _ = lapack.dpocon(c, anorm, uplo="L")
        info["solver"] = "cholesky"
    else:
        lu, piv, ok = lapack.dgetrf(a, overwrite_a=0)
        if ok == 0:
            alpha = scipy.linalg.lu_solve((lu, piv), y, check_finite=False)
            rcond, _ = lapack.dgecon(lu, anorm, norm="1")
            info["solver"] = "lu"
        else:
            alpha = scipy.linalg.lstsq(a, y, check_finite=False)[0]
            rcond = 0.0
            info["solver"] = "lstsq"
    info["condition_estimate"] = float(1.0 / rcond) if rcond > 0 else float("inf")
    return alpha, info


def predict(k_test_train: np.ndarray, k_train: np.ndarray, y_train: np.ndarray, ridge=0.0):
    """Kernel regression predictions at the test rows, with the solve's diagnostics."""
    alpha, info = solve(k_train, y_train, ridge)
    return k_test_train @ alpha, info


def rmse(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred) - np.asarray(y)) ** 2)))

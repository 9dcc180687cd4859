"""Kernel regression (docs/formulas.md): ŷ(X*) = K(X*, X) (K(X, X) + λI)⁻¹ y.

Cholesky first; if the Gram is not numerically positive definite (the published formulas can
make it indefinite), LU; if LU finds it exactly singular, least squares. The solver used, the
ridge and a LAPACK estimate of the 1-norm condition number are returned with the prediction.

Memory: the in-memory path factorises one Fortran-ordered n×n buffer in place (no extra full
copies; LAPACK's Cholesky leaves the strict upper triangle intact, so the matrix is restored
from it for the LU fallback). Past ``memory_budget`` bytes, :func:`solve_stored` switches to a
blockwise Cholesky over the Zarr-backed Dask array, so a trial never holds the whole Gram.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.linalg
from scipy.linalg import lapack

log = logging.getLogger(__name__)
_BLOCK = 1024


def _one_norm(a: np.ndarray) -> float:
    """max column sum of |a|, in column blocks (no n×n temporary)."""
    return max(
        float(np.abs(a[:, j : j + _BLOCK]).sum(axis=0).max()) for j in range(0, len(a), _BLOCK)
    )


def restore_lower(a: np.ndarray, diag: np.ndarray) -> None:
    """Rebuild the lower triangle and diagonal of symmetric ``a`` from its strict upper part."""
    n = len(a)
    for i in range(0, n, _BLOCK):
        j = min(i + _BLOCK, n)
        a[i:j, :i] = a[:i, i:j].T
        blk = np.triu(a[i:j, i:j], 1)
        a[i:j, i:j] = blk + blk.T
    a[np.diag_indices(n)] = diag


def solve(k_train: np.ndarray, y: np.ndarray, ridge: float = 0.0, in_place: bool = False):
    """α = (K + λI)⁻¹ y. Returns ``(alpha, info)``. With ``in_place`` (a Fortran-ordered
    float64 buffer) the factorisation overwrites ``k_train``; otherwise it works on one copy."""
    a = k_train if in_place else np.array(k_train, dtype=np.float64, order="F")
    if not a.flags.f_contiguous:
        a = np.asfortranarray(a)
    if ridge:
        a[np.diag_indices_from(a)] += ridge
    diag = a.diagonal().copy()
    anorm = _one_norm(a)
    info = {"ridge": float(ridge), "jitter": 0.0}
    c, ok = lapack.dpotrf(a, lower=1, clean=0, overwrite_a=1)
    if ok == 0:
        alpha = scipy.linalg.cho_solve((c, True), y, check_finite=False)
        rcond, _ = lapack.dpocon(c, anorm, uplo="L")
        info["solver"] = "cholesky"
    else:
        restore_lower(a, diag)
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


def solve_blockwise(a, y: np.ndarray, ridge: float = 0.0, scheduler="threads"):
    """α for a Dask array ``a`` (square chunks, e.g. from Zarr): blocked Cholesky, then two
    blocked triangular solves; LU (``dask.array.linalg.solve``) if Cholesky fails."""
    import dask.array as da

    n, b = a.shape[0], a.chunks[0][0]
    if ridge:
        a = a + ridge * da.eye(n, chunks=b)
    # Dask's blocked factorisations need equal square chunks: pad to a multiple of the block
    # with an identity block, [[A, 0], [0, I]], whose solution is [α, 0].
    pad = -n % b
    if pad:
        z = da.zeros((n, pad), chunks=(a.chunks[0], pad))
        a = da.block([[a, z], [z.T, da.eye(pad, chunks=pad)]]).rechunk(b)
    yd = da.from_array(np.concatenate([np.asarray(y, dtype=np.float64), np.zeros(pad)]), chunks=b)
    info = {"ridge": float(ridge), "jitter": 0.0, "condition_estimate": None}
    try:
        lower = da.linalg.cholesky(a, lower=True)
        w = da.linalg.solve_triangular(lower, yd, lower=True)
        alpha = da.linalg.solve_triangular(lower.T, w, lower=False).compute(scheduler=scheduler)
        alpha = alpha[:n]
        if not np.isfinite(alpha).all():
            raise np.linalg.LinAlgError("non-finite Cholesky solution")
        info["solver"] = "blockwise-cholesky"
    except (np.linalg.LinAlgError, ValueError):
        alpha = da.linalg.solve(a, yd).compute(scheduler=scheduler)[:n]
        info["solver"] = "blockwise-lu"
    return alpha, info


def predict(k_test_train: np.ndarray, k_train: np.ndarray, y_train: np.ndarray, ridge=0.0):
    """Kernel regression predictions at the test rows, with the solve's diagnostics."""
    alpha, info = solve(k_train, y_train, ridge)
    return k_test_train @ alpha, info


def predict_stored(zstore, y_train, ridge=0.0, memory_budget=8e9, scheduler="threads"):
    """Predictions from a verified Gram group in Zarr (see :mod:`ntkflow.gram`): in memory when
    K(X, X) fits ``memory_budget`` bytes, else blockwise; every array is read once, verified."""
    from ntkflow import gram

    group, attrs = gram.open_gram(zstore)
    n = attrs["shapes"]["train_train"][0]
    if 8.0 * n * n <= memory_budget:
        a = np.empty((n, n), dtype=np.float64, order="F")
        gram.read_array(group, "train_train", attrs, out=a)
        alpha, info = solve(a, y_train, ridge, in_place=True)
        del a
        return gram.read_array(group, "test_train", attrs) @ alpha, info
    log.info("Gram of %d rows exceeds the memory budget: blockwise solve", n)
    for name in gram.ARRAYS:
        gram.verify_array(group, name, attrs)
    alpha, info = solve_blockwise(gram.as_dask(zstore, "train_train"), y_train, ridge, scheduler)
    pred = (gram.as_dask(zstore, "test_train") @ alpha).compute(scheduler=scheduler)
    return np.asarray(pred), info


def rmse(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred) - np.asarray(y)) ** 2)))

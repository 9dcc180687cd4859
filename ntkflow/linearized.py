"""Linearized (NTK) theory of a trained network (docs/theory.md): finite-time predictions and
diagnostics.

For gradient flow on ½Σ(f − y)² over the fit set X, a network linearized around its
initialisation predicts (Jacot et al. 2018; Golikov et al. 2022, eqs. 7-9 and 89)

    f_t(x) = f₀(x) + Θ(x, X) Θ(X, X)⁻¹ (I − e^{−tΘ(X, X)}) (y − f₀(X)),

with Θ the NTK and f₀ the network at initialisation. SGD with mean-squared batch loss, learning
rate η and batch B moves t by 2η/B per epoch, so E epochs give t = 2ηE/B.

With Θ(X, X) = V diag(λ) Vᵀ, the matrix function is diagonal: Θ⁻¹(I − e^{−tΘ}) = V diag(φ_t(λ)) Vᵀ
with φ_t(λ) = (1 − e^{−tλ})/λ, so one eigendecomposition serves every t (:class:`GradientFlow`).

The closed form is gradient flow; the network takes SGD steps. :func:`sgd_replay` applies the
network's own steps (same batches, same order, including the last partial batch of each epoch)
to the linear model, so its gap to the trained network is the non-lazy part alone.

Everything is float64 numpy. Public API::

    flow_factor(t, lam) -> φ_t(λ) = (1 − e^{−tλ})/λ, stable as tλ → 0; t = inf gives 1/λ
    GradientFlow(theta_fit, theta_eval_fit)          # one eigh of Θ(X, X)
        .predict(t, y_fit, f0_fit, f0_eval) -> f_t at the eval rows (t may be math.inf)
    sgd_replay(theta_fit, theta_eval_fit, y_fit, f0_fit, f0_eval, permutations, *,
               batch_size, lr) -> ReplayResult(fit, eval)
    relative_change(a, b) -> ‖a − b‖_F / ‖b‖_F
    fixed_subsample(seed, n, size) -> sorted row indices
    LinearizedDiverged(RuntimeError)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import scipy.linalg


class LinearizedDiverged(RuntimeError):
    """The linearized SGD replay produced a non-finite residual (learning rate too large)."""


def flow_factor(t: float, lam: np.ndarray) -> np.ndarray:
    """φ_t(λ) = (1 − e^{−tλ})/λ elementwise, float64.

    Written as t · (−expm1(−x)/x) with x = tλ, which is accurate for every x (expm1 keeps the
    digits that 1 − e^{−x} loses as x → 0) and → t as λ → 0, including λ slightly negative from
    rounding. ``t = inf`` gives the limit 1/λ for λ > 0; eigenvalues within rounding of zero
    (|λ| ≤ n·eps·max|λ|) get 0 there, the pseudo-inverse: their directions lie in the kernel's
    null space, which gradient flow never moves. A clearly negative λ (an indefinite kernel)
    gets 1/λ, as the t → ∞ solve Θ⁻¹ does; at finite t it grows like e^{t|λ|}, as gradient flow.
    """
    lam = np.asarray(lam, dtype=np.float64)
    if t < 0 or math.isnan(t):
        raise ValueError(f"t must be >= 0 (or inf), got {t!r}")
    if math.isinf(t):
        tol = lam.size * np.finfo(np.float64).eps * (np.abs(lam).max() if lam.size else 0.0)
        out = np.zeros_like(lam)
        big = np.abs(lam) > tol
        out[big] = 1.0 / lam[big]
        return out
    x = t * lam
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.where(x == 0.0, 1.0, -np.expm1(-x) / np.where(x == 0.0, 1.0, x))
    return t * ratio


class GradientFlow:
    """Gradient-flow predictions of the model linearized with kernel Θ, for any t.

    ``theta_fit`` is Θ(X, X) over the n fit rows (symmetrised here), ``theta_eval_fit`` is
    Θ(x, X) for the m rows to predict (m × n). The eigendecomposition is done once.
    """

    def __init__(self, theta_fit: np.ndarray, theta_eval_fit: np.ndarray):
        k = np.asarray(theta_fit, dtype=np.float64)
        ke = np.asarray(theta_eval_fit, dtype=np.float64)
        if k.ndim != 2 or k.shape[0] != k.shape[1] or ke.ndim != 2 or ke.shape[1] != k.shape[0]:
            raise ValueError(f"need Θ(X, X) n×n and Θ(x, X) m×n, got {k.shape} and {ke.shape}")
        self.eigenvalues, self.eigenvectors = scipy.linalg.eigh(0.5 * (k + k.T))
        self._eval_v = ke @ self.eigenvectors  # Θ(x, X) V, m × n

    def predict(self, t: float, y_fit, f0_fit, f0_eval) -> np.ndarray:
        """f_t at the eval rows; t = 0 returns f₀ exactly, t = inf the kernel-regression limit
        f₀(x) + Θ(x, X) Θ⁻¹ (y − f₀(X))."""
        coef = flow_factor(t, self.eigenvalues) * (
            self.eigenvectors.T @ (np.asarray(y_fit, np.float64) - np.asarray(f0_fit, np.float64))
        )
        return np.asarray(f0_eval, dtype=np.float64) + self._eval_v @ coef


class ReplayResult(NamedTuple):
    fit: np.ndarray  # the linear model's predictions at the fit rows after the last step
    eval: np.ndarray  # … and at the eval rows
    steps: int


def sgd_replay(
    theta_fit: np.ndarray,
    theta_eval_fit: np.ndarray,
    y_fit,
    f0_fit,
    f0_eval,
    permutations: Iterable,
    *,
    batch_size: int,
    lr: float,
) -> ReplayResult:
    """The linear model f₀ + g trained by the network's own SGD steps (docs/theory.md).

    For each minibatch S (consecutive ``batch_size`` rows of each epoch's permutation of the fit
    rows; the last batch of an epoch may be smaller), with r_S = f₀(X_S) + g(X_S) − y_S,

        g(x) ← g(x) − (2η/|S|) Θ(x, X_S) r_S    for every fit and eval point x.

    Since every update is a combination of columns of Θ(·, X), g(x) = −Θ(x, X) a with
    a = Σ_steps (2η/|S|) r_S scattered onto S: each step updates a on S and the fit residual
    e = f₀ + g − y on all n fit rows (O(n·B)), and the eval rows are one product at the end.
    ``theta_fit`` is Θ(X, X) (n × n), ``theta_eval_fit`` Θ(x, X) (m × n); ``permutations`` yields
    one permutation of range(n) per epoch (e.g. :func:`ntkflow.train.epoch_permutations`).
    Raises LinearizedDiverged when the residual stops being finite (checked once per epoch).
    """
    if batch_size < 1 or not lr > 0:
        raise ValueError(f"batch_size must be >= 1 and lr > 0, got {batch_size}, {lr}")
    y = np.asarray(y_fit, dtype=np.float64)
    n = y.shape[0]
    # Rows of Θ(X, X)ᵀ are columns of Θ(X, ·): a step reads |S| contiguous rows.
    cols = np.ascontiguousarray(np.asarray(theta_fit, dtype=np.float64).T)
    if cols.shape != (n, n):
        raise ValueError(f"Θ(X, X) must be {n}×{n}, got {cols.shape}")
    e = np.asarray(f0_fit, dtype=np.float64) - y
    a = np.zeros(n)
    steps = 0
    with np.errstate(over="ignore", invalid="ignore"):
        for epoch, perm in enumerate(permutations, 1):
            perm = np.asarray(perm, dtype=np.intp)
            if perm.shape != (n,):
                raise ValueError(f"epoch {epoch}: permutation of shape {perm.shape}, need ({n},)")
            for s in range(0, n, batch_size):
                idx = perm[s : s + batch_size]
                r = e[idx] * (2.0 * lr / len(idx))
                a[idx] += r
                e -= r @ cols[idx]
                steps += 1
            if not np.isfinite(e).all():
                raise LinearizedDiverged(
                    f"linearized SGD replay diverged at epoch {epoch} (lr={lr}, "
                    f"batch_size={batch_size})"
                )
    pred_eval = np.asarray(f0_eval, dtype=np.float64) - np.asarray(theta_eval_fit, np.float64) @ a
    return ReplayResult(fit=e + y, eval=pred_eval, steps=steps)


def relative_change(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖_F / ‖b‖_F (kernel drift with b = Θ̂₀, init error with b = Θ)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def fixed_subsample(seed: np.random.SeedSequence | int, n: int, size: int) -> np.ndarray:
    """``min(size, n)`` distinct indices of range(n), sorted, drawn from ``seed`` only."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(int(size), n), replace=False))

"""Trial data (docs/formulas.md): unit-norm inputs, targets drawn from a kernel Gaussian
process, a split.

Inputs, targets and split are drawn from their own streams of trial k's seed (:mod:`ntkflow.seeds`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg
from scipy.linalg import blas, lapack

from ntkflow.kernels import kernel
from ntkflow.krr import restore_lower
from ntkflow.seeds import STREAM_SPLIT, STREAM_X, STREAM_Y, stream
from ntkflow.split import keras_split, test_size

if TYPE_CHECKING:  # the config validates with ntkflow.split, not with this module
    from ntkflow.config import Config


def unit_rows(n: int, d: int, rng: np.random.Generator, low=-5.0, high=7.0) -> np.ndarray:
    """n draws from U[low, high]^d, each row rescaled to unit L2 norm."""
    x = rng.uniform(low, high, size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def sample_gp(h: np.ndarray, rng: np.random.Generator, max_steps: int = 10):
    """One draw y ~ N(0, H), factorising ``H`` in place (it is overwritten).

    Cholesky with the smallest jitter that works: 0, then 1e-12·mean(diag H)·10^j for
    j = 0..max_steps-1; if none works, an eigen-decomposition with negative eigenvalues clipped.
    LAPACK's Cholesky leaves the strict upper triangle untouched, so after a failed attempt H is
    rebuilt from it: one n×n matrix in memory, whatever the number of attempts. Returns
    ``(y, info)``.
    """
    n = h.shape[0]
    a = h if h.flags.f_contiguous else h.T  # symmetric: the transpose view is Fortran-ordered
    z = rng.standard_normal(n)
    diag = a.diagonal().copy()
    scale = float(diag.mean())
    for jitter in [0.0] + [1e-12 * scale * 10.0**j for j in range(max_steps)]:
        a[np.diag_indices(n)] = diag + jitter
        c, failed = lapack.dpotrf(a, lower=1, clean=0, overwrite_a=1)
        if not failed:
            y = blas.dtrmv(c, z, lower=1)  # L z, reading only the lower triangle
            return y, {"sampler": "cholesky", "jitter": jitter, "clipped_eigenvalues": 0}
        restore_lower(a, diag)
    w, v = scipy.linalg.eigh(a, overwrite_a=True, check_finite=False)
    clipped = int(np.sum(w < 0))
    y = v @ (np.sqrt(np.clip(w, 0.0, None)) * z)
    return y, {"sampler": "eigh", "jitter": 0.0, "clipped_eigenvalues": clipped}


@dataclass
class TrialData:
    x: np.ndarray  # n_obs × d_in, unit rows
    y: np.ndarray  # n_obs
    train: np.ndarray  # row indices, in split order
    test: np.ndarray
    fit: np.ndarray  # leading rows of train that a network fits (Keras validation split)
    info: dict = field(default_factory=dict)

    @property
    def val(self) -> np.ndarray:
        return self.train[len(self.fit) :]


def simulate(cfg: Config, k: int) -> TrialData:
    """Trial ``k`` (docs/formulas.md), with the run's formula variant for the ground truth."""
    d = cfg.data
    x = unit_rows(d.n_obs, d.d_in, np.random.default_rng(stream(cfg.seed, k, STREAM_X)))
    h = kernel(d.kernel, formulas=cfg.formulas)(x, None)
    rng_y = np.random.default_rng(stream(cfg.seed, k, STREAM_Y))
    y, info = sample_gp(h, rng_y)
    del h
    if d.noise_std > 0:
        y = y + d.noise_std * rng_y.standard_normal(d.n_obs)
    perm = np.random.default_rng(stream(cfg.seed, k, STREAM_SPLIT)).permutation(d.n_obs)
    n_test = test_size(d.n_obs, d.test_fraction)
    test, train = perm[:n_test], perm[n_test:]
    fit = train[: keras_split(len(train), cfg.networks.validation_split)]
    info.update(ground_truth=d.kernel, formulas=cfg.formulas, n_train=len(train), n_test=n_test)
    return TrialData(x=x, y=y, train=train, test=test, fit=fit, info=info)

"""Trial data (SPEC §3): unit-norm inputs, targets drawn from a kernel Gaussian process, a split.

Everything random in trial ``k`` derives from ``SeedSequence(seed, spawn_key=(k,))``, which is
``SeedSequence(seed).spawn(n_trials)[k]`` without depending on ``n_trials`` or on the order in
which trials are scheduled. Its children are fixed streams: inputs, targets, split, networks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
from scipy.linalg import blas, lapack

from ntkflow.config import Config, test_size
from ntkflow.kernels import kernel
from ntkflow.krr import restore_lower

STREAM_X, STREAM_Y, STREAM_SPLIT, STREAM_NETS = range(4)


def trial_seed(seed: int, k: int) -> np.random.SeedSequence:
    """Seed sequence of trial ``k``, equal to ``SeedSequence(seed).spawn(n)[k]`` for any n > k."""
    return np.random.SeedSequence(seed, spawn_key=(k,))


def stream(seed: int, k: int, which: int) -> np.random.SeedSequence:
    return trial_seed(seed, k).spawn(STREAM_NETS + 1)[which]


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


def keras_split(n_train: int, validation_split: float = 0.3) -> int:
    """Number of leading rows Keras fits with ``validation_split``, the rest being validation.

    Keras (``train_validation_split`` in keras/tf.keras; ``_split`` in older Keras) computes
    ``int(math.floor(n * (1.0 - validation_split)))`` in floating point, so 670 rows give 468 (not
    469: 670 · 0.7 = 468.99999999999994). Like Keras, a split leaving either part empty is an
    error; ``validation_split=0`` means no validation rows.
    """
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
    n_train = int(n_train)
    if validation_split == 0.0:
        return n_train
    split_at = int(math.floor(n_train * (1.0 - validation_split)))
    if split_at == 0 or split_at == n_train:
        raise ValueError(
            f"{n_train} training rows are not enough to split with "
            f"validation_split={validation_split}: the fit or validation part would be empty"
        )
    return split_at


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
    """Trial ``k`` of SPEC §3 with the run's formula variant for the ground-truth kernel."""
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

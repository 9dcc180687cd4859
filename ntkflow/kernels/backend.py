"""Array namespace of the inputs: NumPy, or CuPy for arrays on a GPU (imported only when seen)."""

from __future__ import annotations

import types

import numpy as np


def array_namespace(*arrays) -> types.ModuleType:
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``.

    CuPy is never imported unless such an array is passed, so CPU-only installs work without it.
    """
    for x in arrays:
        if x is not None and type(x).__module__.split(".")[0] == "cupy":
            import cupy

            return cupy
    return np


def as_rows(x, xp: types.ModuleType, what: str):
    """``x`` as a C-contiguous float64 (n, d) array of namespace ``xp``; ValueError otherwise."""
    x = xp.ascontiguousarray(xp.asarray(x, dtype=xp.float64))
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (n, d), got shape {tuple(x.shape)}")
    return x

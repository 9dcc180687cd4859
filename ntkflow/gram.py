"""Gram matrices as Dask arrays of square blocks, written to and read from Zarr.

Each block is one call of the kernel API on the block's rows, so chunks are NumPy or CuPy arrays
as the inputs are. For K(X, X) only blocks on and above the diagonal are computed; those below
are transposes of their mirror images (no extra kernel evaluations).

A Gram group ``trials/<k>/gram/<KERNEL>.zarr`` holds arrays ``train_train`` (n_train × n_train)
and ``test_train`` (n_test × n_train) and attributes naming the kernel, variant, parameters,
shapes and dtype; ``complete`` is set last, so a group interrupted mid-write never counts.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import zarr


def _edges(n: int, block: int) -> list[slice]:
    return [slice(i, min(i + block, n)) for i in range(0, n, block)]


def gram_dask(k, x1, x2=None, block: int = 2048) -> da.Array:
    """K(x1, x2) as a Dask array of ``block``-sized chunks; x2=None exploits symmetry."""
    rows = _edges(len(x1), block)
    dtype = np.float64

    def piece(a, b, sym=False):
        shape = (a.stop - a.start, b.stop - b.start)
        if sym:
            f = dask.delayed(k, pure=True)(x1[a], None)
        else:
            f = dask.delayed(k, pure=True)(x1[a], (x1 if x2 is None else x2)[b])
        return da.from_delayed(f, shape=shape, dtype=dtype, meta=x1[:0, :0])

    if x2 is None:
        upper = {
            (i, j): piece(a, b, sym=i == j)
            for i, a in enumerate(rows)
            for j, b in enumerate(rows)
            if j >= i
        }
        grid = [
            [upper[(i, j)] if j >= i else upper[(j, i)].T for j in range(len(rows))]
            for i in range(len(rows))
        ]
    else:
        cols = _edges(len(x2), block)
        grid = [[piece(a, b) for b in cols] for a in rows]
    return da.block(grid)


def write_gram(zstore, k, x, train, test, block: int = 2048, scheduler="threads") -> dict:
    """Compute K(X_train, X_train) and K(X_test, X_train) blockwise into the Zarr group."""
    xtr, xte = x[train], x[test]
    arrays = {
        "train_train": gram_dask(k, xtr, None, block),
        "test_train": gram_dask(k, xte, xtr, block),
    }
    group = zarr.open_group(zstore, mode="w")
    attrs = {
        "kernel": k.name,
        "formulas": k.formulas,
        "params": {key: float(v) for key, v in k.params.items()},
        "shapes": {name: list(a.shape) for name, a in arrays.items()},
        "dtype": "float64",
        "block": block,
        "complete": False,
    }
    group.attrs.update(attrs)
    # Chunks never exceed the array (Zarr stores edge chunks at full size), and dense float64
    # Grams barely compress (~15%) while compression costs more time than the write itself.
    targets = [
        group.create_array(
            name,
            shape=a.shape,
            chunks=tuple(min(block, n) for n in a.shape),
            dtype="f8",
            compressors=None,
        )
        for name, a in arrays.items()
    ]
    da.store(list(arrays.values()), targets, lock=False, scheduler=scheduler)
    group.attrs["complete"] = True
    return {**attrs, "complete": True}


def read_gram(zstore) -> tuple[np.ndarray, np.ndarray, dict]:
    """(train_train, test_train, attrs); raises ValueError if the group is incomplete."""
    group = zarr.open_group(zstore, mode="r")
    attrs = dict(group.attrs)
    if not attrs.get("complete"):
        raise ValueError(f"incomplete Gram group {zstore}")
    return group["train_train"][...], group["test_train"][...], attrs

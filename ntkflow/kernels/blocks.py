"""Tiled, multithreaded evaluation of a Gram matrix from a per-tile function.

NumPy releases the GIL inside ufuncs, so square tiles evaluated by a few threads use every core; a
tile small enough for the L2 cache keeps the dozen elementwise passes of a layer out of main memory.
For K(X, X) only tiles on and above the diagonal are computed and the rest mirrored. CuPy arrays are
evaluated as a single tile (the GPU parallelises each pass already).
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Side of the square tiles: five float64 tiles of 160 x 160 fill about 1 MiB (a typical L2).
TILE = 160

# fn(i0, i1, j0, j1, workspace) -> the (i1 - i0, j1 - j0) block of the Gram.
TileFn = Callable[[int, int, int, int, "Workspace"], object]


def default_threads() -> int:
    """Threads for one Gram: $NTKFLOW_KERNEL_THREADS, else the CPUs this process may use."""
    env = os.environ.get("NTKFLOW_KERNEL_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class Workspace:
    """Scratch buffers of one thread, allocated on first use and reused for every tile."""

    def __init__(self, xp, size: int):
        self._xp, self._size, self._buffers = xp, size, {}

    def tile(self, index: int, rows: int, cols: int):
        """Buffer ``index`` as a contiguous (rows, cols) array (contents undefined)."""
        if index not in self._buffers:
            self._buffers[index] = self._xp.empty(self._size)
        return self._buffers[index][: rows * cols].reshape(rows, cols)


def gram(
    fn: TileFn, n1: int, n2: int, *, symmetric: bool, xp, threads: int | None = None, out=None
) -> object:
    """Evaluate the (n1, n2) Gram tile by tile; ``symmetric`` means x2 is x1 (n1 == n2).

    ``out``: an (n1, n2) array to write the result into (``fn`` may read its own block of it first,
    e.g. inner products computed by one BLAS call: a tile reads and writes only its own block and,
    when symmetric, the mirror block below the diagonal, which no tile reads). CuPy inputs and
    small Grams are one tile; the result is then whatever ``fn`` returns.
    """
    if xp is not np or n1 * n2 <= TILE * TILE:
        result = fn(0, n1, 0, n2, Workspace(xp, n1 * n2))
        return _mirror_lower(result, xp) if symmetric else result
    out = np.empty((n1, n2)) if out is None else out
    tiles = [
        (i0, j0) for i0 in range(0, n1, TILE) for j0 in range(i0 if symmetric else 0, n2, TILE)
    ]

    def run_tile(i0: int, j0: int, work: Workspace) -> None:
        i1, j1 = min(i0 + TILE, n1), min(j0 + TILE, n2)
        tile = fn(i0, i1, j0, j1, work)
        if symmetric and i0 == j0:
            tile = _mirror_lower(tile, np)
        out[i0:i1, j0:j1] = tile
        if symmetric and i0 != j0:
            out[j0:j1, i0:i1] = tile.T

    threads = min(threads or default_threads(), len(tiles))
    todo: queue.SimpleQueue = queue.SimpleQueue()  # threads take the next tile when free
    for t in tiles:
        todo.put(t)

    def worker() -> None:
        work = Workspace(np, TILE * TILE)
        while True:
            try:
                i0, j0 = todo.get_nowait()
            except queue.Empty:
                return
            run_tile(i0, j0, work)

    if threads == 1:
        worker()
        return out
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(worker) for _ in range(threads)]:
            future.result()
    return out


def _mirror_lower(tile, xp):
    """Copy the upper triangle of a square diagonal tile onto its lower one: exact symmetry."""
    lower = xp.tril_indices(tile.shape[0], -1)
    tile[lower] = tile.T[lower]
    return tile

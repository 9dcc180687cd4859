"""The Laplacian kernel K1(x, x') = a·exp(-‖x − x'‖/b) of the paper's table (a = 2, b = 6)."""

from __future__ import annotations

from ntkflow.kernels import blocks


def gram(x1, x2, a: float, b: float, *, symmetric: bool, xp, threads: int | None = None):
    """a·exp(-‖x − x'‖/b) between the rows of ``x1`` and ``x2``.

    Distances from coordinate differences, not from ‖x‖² + ‖x'‖² − 2⟨x, x'⟩: that cancels for near
    points (an error of √eps·‖x‖ in the distance) and is not exactly 0 for x' = x.
    """

    def tile(i0: int, i1: int, j0: int, j1: int, work: blocks.Workspace):
        dist, diff = (work.tile(b, i1 - i0, j1 - j0) for b in (0, 1))
        dist[...] = 0.0
        for c in range(x1.shape[1]):
            xp.subtract(x1[i0:i1, c, None], x2[None, j0:j1, c], out=diff)
            xp.multiply(diff, diff, out=diff)
            xp.add(dist, diff, out=dist)
        xp.sqrt(dist, out=dist)
        xp.multiply(dist, -1.0 / b, out=dist)
        xp.exp(dist, out=dist)
        xp.multiply(dist, a, out=dist)
        return dist

    return blocks.gram(tile, x1.shape[0], x2.shape[0], symmetric=symmetric, xp=xp, threads=threads)

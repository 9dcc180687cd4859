"""The one layer recursion behind every NTK and NNGP (docs/formulas.md), on Gram tiles and
diagonals.

    K⁰ = cov_weight⁰ ⟨x,x'⟩ + cov_bias⁰            Θ⁰ = ntk_weight⁰ ⟨x,x'⟩ + ntk_bias⁰
    K^l = cov_bias + cov_weight E(K^{l-1})          Θ^l = ntk_bias + ntk_weight E(K^{l-1})
                                                          + ntk_chain Ė(K^{l-1}) Θ^{l-1}

with the constants of :mod:`ntkflow.kernels.families` (Jacot et al. 2018, Theorem 1; Arora et al.
2019, eqs. (9)-(11); Liu et al. 2025, eqs. (6) and (8)). E and Ė need the variances K^{l-1}(x, x);
they are propagated exactly, K^l(x, x) = cov_bias + cov_weight K^{l-1}(x, x)/2, in both formula
variants (docs/formulas.md, published item 3).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from ntkflow.kernels import blocks
from ntkflow.kernels.families import Layer
from ntkflow.kernels.relu import relu_moments_

TWO_PI = 2.0 * math.pi


def variances(sq, lays: Sequence[Layer]) -> list:
    """Exact K^l(x, x) for l = 0 .. L from the squared norms ``sq`` = ‖x‖² (E(x, x) = a/2)."""
    first = lays[0]
    v = [sq * first.cov_weight + first.cov_bias]
    for layer in lays[1:]:
        v.append((v[-1] / 2) * layer.cov_weight + layer.cov_bias)
    return v


def propagate(
    g,
    v1: Sequence,
    v2: Sequence,
    lays: Sequence[Layer],
    *,
    published: bool,
    ntk: bool,
    xp,
    work: Sequence,
    pin: Callable[[object, int], None] | None = None,
):
    """Run the recursion on the inner products ``g`` = ⟨x, x'⟩ (overwritten); return Θ^L or K^L.

    ``v1[l]``, ``v2[l]``: exact variances K^l of the two sides, broadcastable against ``g``.
    ``work``: four scratch arrays of ``g``'s shape. ``pin(K, l)``, if given, writes the exact
    variance K^l(x, x) onto the entries where x' = x before layer l + 1 uses them; with it the
    exact E(x, x) = a/2 and Ė(x, x) = 1/2 hold to rounding instead of to √eps (a covariance one
    ulp off its variance gives θ ≈ 1e-8).
    """
    t, s, u, w = work
    k = g
    first = lays[0]
    if ntk:
        xp.multiply(g, first.ntk_weight, out=t)
        _affine_(t, 1.0, first.ntk_bias)
    _affine_(k, first.cov_weight, first.cov_bias)
    last = len(lays) - 2
    for l, layer in enumerate(lays[1:]):
        if pin is not None:
            pin(k, l)
        relu_moments_(k, v1[l], v2[l], s, u, w, published=published, xp=xp)  # k = 2πE, u = 2πĖ
        if ntk:
            xp.multiply(t, u, out=t)
            _affine_(t, layer.ntk_chain / TWO_PI, layer.ntk_bias)
            xp.multiply(k, layer.ntk_weight / TWO_PI, out=s)
            xp.add(t, s, out=t)
            if l == last:
                return t  # K^L is not needed for Θ^L
        _affine_(k, layer.cov_weight / TWO_PI, layer.cov_bias)
    return t if ntk else k


def _affine_(a, scale: float, shift: float) -> None:
    """a ← scale·a + shift in place, skipping the exact no-ops (one pass fewer each)."""
    if scale != 1.0:
        a *= scale
    if shift != 0.0:
        a += shift


def _set_diagonal(a, values) -> None:
    a.reshape(-1)[:: a.shape[1] + 1] = values


def gram(
    x1,
    x2,
    lays: Sequence[Layer],
    *,
    published: bool,
    ntk: bool,
    symmetric: bool,
    xp,
    threads: int | None = None,
):
    """K^L or Θ^L between the rows of ``x1`` and ``x2`` (float64, C-contiguous, same namespace).

    ``symmetric``: x2 is x1; tiles on and above the diagonal only, and on the diagonal x' = x
    exactly (its entries get the exact variances, see :func:`propagate`).
    """
    sq1 = xp.einsum("ij,ij->i", x1, x1)
    sq2 = sq1 if symmetric else xp.einsum("ij,ij->i", x2, x2)
    v1 = variances(sq1, lays)
    v2 = v1 if symmetric else variances(sq2, lays)

    # All inner products in one BLAS call from this thread: BLAS calls from several threads at
    # once make OpenBLAS oversubscribe the cores (10x slower). Tiles overwrite their block of it.
    inner = xp.matmul(x1, x2.T)

    def tile(i0: int, i1: int, j0: int, j1: int, work: blocks.Workspace):
        m, n = i1 - i0, j1 - j0
        if (m, n) == inner.shape:
            g = inner
        else:
            g = work.tile(0, m, n)
            g[...] = inner[i0:i1, j0:j1]
        pin = None
        if symmetric and i0 == j0:
            _set_diagonal(g, sq1[i0:i1])  # the same ‖x‖² as the variances, bit for bit
            if not published:  # the published diagonal is whatever its own recursion gives

                def pin(k, l):
                    _set_diagonal(k, v1[l][i0:i1])

        return propagate(
            g,
            [v[i0:i1, None] for v in v1],
            [v[None, j0:j1] for v in v2],
            lays,
            published=published,
            ntk=ntk,
            xp=xp,
            work=[work.tile(b, m, n) for b in (1, 2, 3, 4)],
            pin=pin,
        )

    return blocks.gram(
        tile, x1.shape[0], x2.shape[0], symmetric=symmetric, xp=xp, threads=threads, out=inner
    )


def diagonal(x, lays: Sequence[Layer], *, published: bool, ntk: bool, xp):
    """K^L(x_i, x_i) or Θ^L(x_i, x_i) for every row, in O(nL): the diagonal of the Gram."""
    sq = xp.einsum("ij,ij->i", x, x)
    v = variances(sq, lays)
    n = x.shape[0]

    def pin(k, l):
        k[...] = v[l]

    work = [xp.empty(n) for _ in range(4)]
    return propagate(
        sq.copy(),
        v,
        v,
        lays,
        published=published,
        ntk=ntk,
        xp=xp,
        work=work,
        pin=None if published else pin,
    )

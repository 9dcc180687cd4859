"""ReLU expectations of a bivariate Gaussian: the E / Ė step of every kernel (docs/formulas.md).

For (u, v) ~ N(0, [[a, c], [c, b]]) and cos θ = c / √(ab) (Cho & Saul 2009, arc-cosine kernel of
degree 1 and 0; Jacot et al. 2018; Arora et al. 2019, eqs. (4)-(5) of their appendix):

    E(K) = E[relu(u) relu(v)]   = √(ab)/(2π) · (sin θ + (π − θ) cos θ)
    Ė(K) = E[relu'(u) relu'(v)] = (π − θ)/(2π)

On the diagonal (c = a = b) E = a/2 and Ė = 1/2 exactly. ``published`` is the variant of the
paper's released code (Liu et al., arXiv 2501.10929): cos θ = c/(a·b), the product of the variances
instead of its square root, θ = arccos(cos θ) where |cos θ| ≤ 1 and θ = 0 elsewhere (no clipping of
the cosine inside E).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from ntkflow.kernels.backend import array_namespace

FORMULAS = ("exact", "published")


def relu_moments_(c, va, vb, s, u, w, *, published: bool, xp) -> None:
    """In place: ``c`` ← 2π·E(K), ``u`` ← 2π·Ė(K) = π − θ; ``s`` and ``w`` are scratch.

    ``c`` holds the covariances K(x, x') (any shape, float64), ``va`` and ``vb`` the variances
    K(x, x) and K(x', x'), broadcastable to ``c`` (a column and a row for a Gram tile, or two
    vectors for a diagonal). ``s``, ``u``, ``w`` are float64 arrays of ``c``'s shape. Working in
    place on cache-sized tiles is what makes the Gram fast; :func:`relu_expectations` wraps it.
    """
    if published:
        _published_(c, va, vb, s, u, xp)
        return
    # Exact: sin θ and θ from the unnormalised √(ab − c²), never from an arccos near 1 (which
    # loses half the digits). With c = a = b the difference ab − c² is exactly 0, so E = a/2 and
    # Ė = 1/2 to rounding. θ from the half-angle identity cot(θ/2) = (√(ab) + c)/√(ab − c²): one
    # arctan is half the price of arctan2 in NumPy, and as accurate (the error is in √(ab − c²)
    # either way). To keep the sign of c where √(ab − c²) = 0 (θ = 0 or π), use
    # r = (√(ab) + |c|)/√(ab − c²), which is cot(θ/2) for c ≥ 0 and tan(θ/2) for c < 0:
    # (π − θ)/2 = π/4 ± (arctan r − π/4).
    xp.multiply(va, vb, out=s)
    xp.multiply(c, c, out=u)
    xp.subtract(s, u, out=s)
    xp.maximum(s, 0.0, out=s)
    xp.sqrt(s, out=s)  # √(ab) sin θ
    xp.multiply(xp.sqrt(va), xp.sqrt(vb), out=u)
    xp.abs(c, out=w)
    xp.add(u, w, out=u)  # √(ab) (1 + |cos θ|)
    with _quiet(xp):  # x/0 = inf: θ = 0 or π; 0/0 = nan: zero variances
        xp.divide(u, s, out=u)
    xp.arctan(u, out=u)
    xp.fmax(u, 0.0, out=u)  # nan → 0 (zero variance: E = 0, Ė = 0 like relu'(0) = 0)
    xp.multiply(u, 2.0, out=u)
    xp.subtract(u, math.pi / 2, out=u)
    xp.copysign(u, c, out=u)
    xp.add(u, math.pi / 2, out=u)  # π − θ
    xp.multiply(c, u, out=c)
    xp.add(c, s, out=c)  # √(ab) (sin θ + (π − θ) cos θ)


def _published_(c, va, vb, s, u, xp) -> None:
    """The released code's step (docs/formulas.md, published formulas 1-2): cos θ = c/(a·b)."""
    xp.multiply(va, vb, out=s)
    xp.divide(c, s, out=c)  # the published cosine, not clipped: E uses it as is
    xp.sqrt(s, out=s)  # √(ab)
    clipped = xp.clip(c, -1.0, 1.0)
    theta = xp.arccos(clipped)  # 0 where cos θ > 1 ...
    theta[c < -1.0] = 0.0  # ... and where cos θ < -1 (θ = 0 outside [-1, 1])
    sin = xp.sqrt((1.0 - clipped) * (1.0 + clipped))  # sin θ; 0 outside [-1, 1], as sin 0
    xp.subtract(math.pi, theta, out=u)
    xp.multiply(c, u, out=c)
    xp.add(c, sin, out=c)
    xp.multiply(c, s, out=c)


def _quiet(xp):
    return np.errstate(divide="ignore", invalid="ignore") if xp is np else contextlib.nullcontext()


def relu_expectations(c, a, b, formulas: str = "exact"):
    """E(K) and Ė(K) for covariances ``c`` and variances ``a``, ``b`` (broadcastable arrays).

    Returns two float64 arrays of the inputs' namespace (NumPy or CuPy). Same code as the Gram
    recursion; use it to check the formulas, e.g. ``relu_expectations(a, a, a)`` is ``(a/2, 1/2)``.
    """
    if formulas not in FORMULAS:
        raise ValueError(f"formulas must be one of {FORMULAS}, got {formulas!r}")
    xp = array_namespace(c, a, b)
    a, b = xp.asarray(a, dtype=xp.float64), xp.asarray(b, dtype=xp.float64)
    c = xp.asarray(c, dtype=xp.float64)
    shape = np.broadcast_shapes(c.shape, a.shape, b.shape)
    e = xp.array(xp.broadcast_to(c, shape), dtype=xp.float64)
    s, u, w = xp.empty(shape), xp.empty(shape), xp.empty(shape)
    relu_moments_(e, a, b, s, u, w, published=formulas == "published", xp=xp)
    return e / (2 * math.pi), u / (2 * math.pi)

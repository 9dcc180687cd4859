"""Kernel names, validation and the kernel objects returned by :func:`kernel`."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NamedTuple

from ntkflow.kernels import laplacian, recursion
from ntkflow.kernels.backend import array_namespace, as_rows
from ntkflow.kernels.families import FAMILIES, PUBLISHED_NTKJ_DEPTHS, Family, layers
from ntkflow.kernels.relu import FORMULAS

LAPLACIAN_DEFAULTS = (("a", 2.0), ("b", 6.0))
_PREFIXES = {f.name: (f, False) for f in FAMILIES.values()} | {
    f.nngp_name: (f, True) for f in FAMILIES.values()
}
_NAME = re.compile(r"(?P<prefix>[A-Z]+)(?P<depth>[1-9][0-9]*)")
# Overrides that scale a variance must be > 0; the sigmas enter squared and may be any real ≥ 0.
_POSITIVE = {"c", "c_sigma", "a", "b"}

KERNEL_NAMES_HELP = (
    "valid kernel names: NTKB<L>, GP<L> (bias-aware NTK of Liu et al. and its NNGP), "
    "NTKJ<L>, GPJ<L> (Jacot et al.), NTKA<L>, GPA<L> (Arora et al.), with L >= 1 hidden layers "
    f"(with formulas='published', NTKJ/GPJ only for L in {PUBLISHED_NTKJ_DEPTHS}), and K1 "
    "(Laplacian a*exp(-|x-x'|/b)); formulas: 'exact' or 'published'; overrides (paper values): "
    + "; ".join(
        f"{f.name}/{f.nngp_name}: " + ", ".join(f"{k}={v:g}" for k, v in f.defaults)
        for f in FAMILIES.values()
    )
    + "; K1: "
    + ", ".join(f"{k}={v:g}" for k, v in LAPLACIAN_DEFAULTS)
)


class KernelName(NamedTuple):
    """A validated kernel name: ``family`` is NTKB, NTKJ, NTKA or K1; ``depth`` None for K1."""

    name: str
    family: str
    depth: int | None
    nngp: bool


def parse_kernel_name(name: str, formulas: str = "exact") -> KernelName:
    """Validate ``name`` for the formula variant without building anything; ValueError if invalid.

    >>> parse_kernel_name("GP2")
    KernelName(name='GP2', family='NTKB', depth=2, nngp=True)
    """
    if formulas not in FORMULAS:
        raise ValueError(f"unknown formulas {formulas!r}; valid: {', '.join(FORMULAS)}")
    if name == "K1":
        return KernelName(name, "K1", None, False)
    match = _NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None or match["prefix"] not in _PREFIXES:
        raise ValueError(f"unknown kernel name {name!r}; {KERNEL_NAMES_HELP}")
    family, nngp = _PREFIXES[match["prefix"]]
    depth = int(match["depth"])
    if formulas == "published" and family.name == "NTKJ" and depth not in PUBLISHED_NTKJ_DEPTHS:
        raise ValueError(
            f"kernel {name!r} does not exist with formulas='published': the paper's code "
            f"defines NTKJ/GPJ only for depths {PUBLISHED_NTKJ_DEPTHS}; use formulas='exact' "
            "for other depths"
        )
    return KernelName(name, family.name, depth, nngp)


def kernel(name: str, formulas: str = "exact", **overrides: float) -> Kernel:
    """The kernel ``name`` (see ``KERNEL_NAMES_HELP``), paper parameters unless overridden.

    >>> k = kernel("NTKB2", formulas="exact", c=2.0)
    >>> K = k(x)             # doctest: +SKIP  (n, n) float64 array of x's namespace
    """
    parsed = parse_kernel_name(name, formulas)
    if parsed.family == "K1":
        params = _resolve(name, LAPLACIAN_DEFAULTS, overrides)
        return LaplacianKernel(name, "K1", None, formulas, params)
    family = FAMILIES[parsed.family]
    params = _resolve(name, family.defaults, overrides)
    return ReluKernel(name, family.name, parsed.depth, formulas, params, parsed.nngp)


def _resolve(name: str, defaults, overrides) -> tuple[tuple[str, float], ...]:
    valid = dict(defaults)
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown override(s) {', '.join(unknown)} for kernel {name!r}; "
            f"valid: {', '.join(f'{k} (default {v:g})' for k, v in defaults)}"
        )
    for key, value in overrides.items():
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"override {key}={value!r} for {name!r} is not a number") from None
        if not math.isfinite(value) or value < 0 or (key in _POSITIVE and value == 0):
            bound = "> 0" if key in _POSITIVE else ">= 0"
            raise ValueError(f"override {key}={value!r} for {name!r} must be finite and {bound}")
        valid[key] = value
    return tuple(valid.items())


def _inputs(x1, x2):
    """Inputs in one namespace, float64 rows, and whether x2 is x1 (use the symmetric path)."""
    xp = array_namespace(x1, x2)
    a = as_rows(x1, xp, "x1")
    if x2 is None or x2 is x1:
        return xp, a, a, True
    b = as_rows(x2, xp, "x2")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x1 and x2 have different dimensions: {a.shape[1]} and {b.shape[1]}")
    # Equal inputs take the symmetric path too: half the work and exact diagonal identities.
    symmetric = a.shape == b.shape and bool(xp.array_equal(a, b))
    return xp, a, (a if symmetric else b), symmetric


@dataclass(frozen=True)
class ReluKernel:
    """NTK (``nngp=False``) or NNGP of a ReLU network of ``depth`` hidden layers (docs/formulas.md).

    Call it as ``k(x1, x2=None)`` for the Gram matrix (float64, namespace of the inputs; ``x2=None``
    means x1 and uses the symmetry). ``threads``: CPU threads for NumPy inputs (default: all).
    """

    name: str
    family: str
    depth: int
    formulas: str
    _params: tuple[tuple[str, float], ...]
    is_nngp: bool = False

    @property
    def params(self) -> dict[str, float]:
        return dict(self._params)

    @property
    def source(self) -> str:
        return FAMILIES[self.family].source

    def _layers(self, d: int):
        family: Family = FAMILIES[self.family]
        return layers(family, self.params, self.depth, d, self.formulas == "published")

    def _gram(self, x1, x2, ntk: bool, threads: int | None):
        xp, a, b, symmetric = _inputs(x1, x2)
        return recursion.gram(
            a,
            b,
            self._layers(a.shape[1]),
            published=self.formulas == "published",
            ntk=ntk,
            symmetric=symmetric,
            xp=xp,
            threads=threads,
        )

    def __call__(self, x1, x2=None, *, threads: int | None = None):
        return self._gram(x1, x2, not self.is_nngp, threads)

    def nngp(self, x1, x2=None, *, threads: int | None = None):
        """The family's NNGP K^L at the same depth (for a GP name, the kernel itself)."""
        return self._gram(x1, x2, False, threads)

    def diag(self, x):
        """K(x_i, x_i) for every row of ``x``, in O(n·depth): the diagonal of ``self(x)``."""
        xp = array_namespace(x)
        x = as_rows(x, xp, "x")
        return recursion.diagonal(
            x,
            self._layers(x.shape[1]),
            published=self.formulas == "published",
            ntk=not self.is_nngp,
            xp=xp,
        )


@dataclass(frozen=True)
class LaplacianKernel:
    """K1(x, x') = a·exp(-‖x − x'‖/b) (paper: a = 2, b = 6); the same in both formula variants."""

    name: str
    family: str
    depth: None
    formulas: str
    _params: tuple[tuple[str, float], ...]
    is_nngp: bool = False
    source = "Laplacian kernel of Liu et al. 2025, table 1 (K1)"

    @property
    def params(self) -> dict[str, float]:
        return dict(self._params)

    def __call__(self, x1, x2=None, *, threads: int | None = None):
        xp, a, b, symmetric = _inputs(x1, x2)
        p = self.params
        return laplacian.gram(a, b, p["a"], p["b"], symmetric=symmetric, xp=xp, threads=threads)

    def nngp(self, x1, x2=None, *, threads: int | None = None):
        raise ValueError(f"{self.name} (Laplacian) has no NNGP; only the NTK families do")

    def diag(self, x):
        xp = array_namespace(x)
        x = as_rows(x, xp, "x")
        return xp.full(x.shape[0], self.params["a"])


Kernel = ReluKernel | LaplacianKernel  # what kernel() returns

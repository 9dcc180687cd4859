"""The networks' parameterizations (docs/formulas.md), one table read by networks and kernels.

Every layer, in every parameterization, is a dense layer

    z = weight_mult · (W h) + bias_mult · b,     W ~ init(weight_init),  b ~ init(bias_init),

with h the input x for the first layer and relu(z_prev) afterwards, fixed (untrained) multipliers
and init N(0, s²) (or U(±s) for "standard"). A parameterization is the choice of these four
factors for the first layer and for every later one (the read-out included), with n the layer's
fan-in:

===========  =============================  ===============  ==================  ===============
name         weight_mult                    weight_init      bias_mult           bias_init
===========  =============================  ===============  ==================  ===============
"ntkj"       σ_w/√n  (n = d for the first)  1                σ_b                 1
"ntkb" first 1                              σ_w0/√d          1                   σ_b0
"ntkb" later √(c/n)                         σ_w              1                   σ_b
"standard"   1                              U(±1/√n)         1                   U(±1/√n)
===========  =============================  ===============  ==================  ===============

"ntkj" is the paper's released code (x/√d → Dense → ReLU → ·1/√width → … → Dense(1), N(0, 1)
parameters; neural-tangents' ``stax.Dense(parameterization='ntk')`` for general σ); its analytic
family is NTKJ (Jacot et al. 2018). "ntkb" is the network of the paper's bias-aware derivation
(Liu et al. 2025, section 3.1, appendix 6.4-6.5), family NTKB. "standard" is PyTorch's default
``nn.Linear`` initialisation without multipliers: its NTK grows with the width (no limit).

:mod:`ntkflow.nets` builds networks from this table and :mod:`ntkflow.kernels.families` derives
the kernel layer constants of NTKJ and NTKB from it, so a network and its kernel cannot drift
apart. No imports from the rest of ntkflow: names, config and the verdict read it too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Scale:
    """One factor of a layer: the hyperparameter ``hyper`` (1 when None), read as a standard
    deviation (σ_w) or, when ``variance``, as a variance (c, entering as √c), and divided by
    √n (n: the layer's fan-in) when ``per_fan_in``.

    :meth:`value` is the factor a network uses, :meth:`square` its square for the kernels; both
    are written as the papers write them (σ/√n, √(c/n); σ², c/n), so that the networks and the
    kernels get the same floats as their own formulas would.
    """

    hyper: str | None = None
    variance: bool = False
    per_fan_in: bool = False

    def value(self, n: int, params: Mapping[str, float]) -> float:
        if self.hyper is None:
            return 1.0 / math.sqrt(n) if self.per_fan_in else 1.0
        h = params[self.hyper]
        if self.variance:
            return math.sqrt(h / n) if self.per_fan_in else math.sqrt(h)
        return h / math.sqrt(n) if self.per_fan_in else h

    def square(self, params: Mapping[str, float]) -> float:
        """The square of :meth:`value` without its 1/n (``per_fan_in`` says whether it has one)."""
        if self.hyper is None:
            return 1.0
        h = params[self.hyper]
        return h if self.variance else h**2


ONE = Scale()


@dataclass(frozen=True)
class LayerScaling:
    """The four factors of one dense layer (module docstring)."""

    weight_mult: Scale = ONE
    bias_mult: Scale = ONE
    weight_init: Scale = ONE  # the std of N(0, s²), or the bound of U(±s) for a uniform init
    bias_init: Scale = ONE


@dataclass(frozen=True)
class Parameterization:
    """A network parameterization: its layers' scaling, hyperparameters and analytic family."""

    name: str  # "ntkj", as in ``networks.parameterization``
    family: str | None  # the analytic NTK family of its infinite-width limit, "NTKJ"; or None
    defaults: tuple[tuple[str, float], ...]  # hyperparameter → paper value
    first: LayerScaling  # the input layer
    later: LayerScaling  # every layer after a ReLU, the read-out included
    init: str = "normal"  # parameters drawn from N(0, s²), or "uniform": U(±s)

    @property
    def hyper_defaults(self) -> dict[str, float]:
        return dict(self.defaults)

    def layer(self, l: int) -> LayerScaling:
        """The scaling of layer ``l`` (0: the input layer)."""
        return self.first if l == 0 else self.later

    def std(self, scale: float) -> float:
        """The standard deviation of a parameter drawn with ``scale`` (U(±a) has a/√3)."""
        return scale / math.sqrt(3) if self.init == "uniform" else scale


_SIGMA_B = Scale("sigma_b")
PARAMETERIZATIONS: dict[str, Parameterization] = {
    p.name: p
    for p in (
        Parameterization(
            "ntkj",
            "NTKJ",
            (("sigma_w", 1.0), ("sigma_b", 1.0)),
            first=LayerScaling(weight_mult=Scale("sigma_w", per_fan_in=True), bias_mult=_SIGMA_B),
            later=LayerScaling(weight_mult=Scale("sigma_w", per_fan_in=True), bias_mult=_SIGMA_B),
        ),
        Parameterization(
            "ntkb",
            "NTKB",
            (("sigma_w0", 1.0), ("sigma_b0", 1.0), ("sigma_w", 1.0), ("sigma_b", 1.0), ("c", 2.0)),
            first=LayerScaling(
                weight_init=Scale("sigma_w0", per_fan_in=True), bias_init=Scale("sigma_b0")
            ),
            later=LayerScaling(
                weight_mult=Scale("c", variance=True, per_fan_in=True),
                weight_init=Scale("sigma_w"),
                bias_init=_SIGMA_B,
            ),
        ),
        Parameterization(
            "standard",
            None,
            (),
            # nn.Linear's default: kaiming_uniform(a=√5) = U(±1/√fan_in) for W, the same for b
            first=LayerScaling(
                weight_init=Scale(per_fan_in=True), bias_init=Scale(per_fan_in=True)
            ),
            later=LayerScaling(
                weight_init=Scale(per_fan_in=True), bias_init=Scale(per_fan_in=True)
            ),
            init="uniform",
        ),
    )
}
PARAMETERIZATION_NAMES = tuple(PARAMETERIZATIONS)  # ("ntkj", "ntkb", "standard")
# the analytic families that some network's infinite-width limit has: ("NTKJ", "NTKB")
NETWORK_FAMILIES = tuple(p.family for p in PARAMETERIZATIONS.values() if p.family)

"""Fully connected ReLU networks in the parameterizations of docs/formulas.md.

Every layer is ``z = weight_mult · (W h) + bias_mult · b`` (a :class:`ScaledLinear`), with fixed
(untrained) multipliers; h is the input x for the first layer and relu(z_prev) afterwards. A
parameterization ("ntkj", "ntkb", "standard") is the choice of the four constants per layer, read
from the table in :mod:`ntkflow.parameterizations`, from which the analytic kernels of the
networks' families (``kernel("NTKJ<L>")``, ``kernel("NTKB<L>")`` and their NNGPs) are derived too.

Initialisation is drawn on the CPU from a ``torch.Generator`` seeded from a
``numpy.random.SeedSequence`` (:func:`ntkflow.seeds.torch_generator`), in float64, then cast and
moved, so the same seed gives the same network on every device and (up to rounding) every dtype.
The empirical NTK and NNGP of a network and its parameter norms are in :mod:`ntkflow.empirical`.

Public API::

    build_network(d_in, depth, width, parameterization="ntkj", *, seed, dtype=torch.float32,
                  device="cpu", **hyper) -> FCNet
    float64_copy(net) -> FCNet                       # the same network in float64
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ntkflow.parameterizations import PARAMETERIZATION_NAMES, PARAMETERIZATIONS
from ntkflow.seeds import STREAM_INIT, SeedLike, torch_generator

# Hyperparameters each parameterization accepts, with their defaults (the paper's values).
HYPER_DEFAULTS: dict[str, dict[str, float]] = {
    name: p.hyper_defaults for name, p in PARAMETERIZATIONS.items()
}


class ScaledLinear(nn.Module):
    """``z = weight_mult · h Wᵀ + bias_mult · b`` with fixed (untrained) multipliers.

    ``weight_std`` and ``bias_std`` record the standard deviation of the initial distribution
    (needed by :func:`ntkflow.empirical.empirical_nngp`).
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        *,
        weight_mult: float,
        bias_mult: float,
        weight_std: float,
        bias_std: float,
    ):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight_mult, self.bias_mult = float(weight_mult), float(bias_mult)
        self.weight_std, self.bias_std = float(weight_std), float(bias_std)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.addmm(
            self.bias, h, self.weight.t(), beta=self.bias_mult, alpha=self.weight_mult
        )

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, "
            f"weight_mult={self.weight_mult:.4g}, bias_mult={self.bias_mult:.4g}"
        )


class FCNet(nn.Module):
    """ReLU network: ``depth`` hidden layers of ``width`` units, scalar output of shape (n, 1)."""

    def __init__(self, layers: Sequence[ScaledLinear], *, parameterization: str, hyper: dict):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.parameterization = parameterization
        self.hyper = dict(hyper)
        self.d_in = layers[0].in_features
        self.depth = len(layers) - 1
        self.width = layers[0].out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for layer in self.layers[:-1]:
            h = torch.relu(layer(h))
        return self.layers[-1](h)

    def layer_inputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The input h_l of every layer (x, relu(z_0), …) and the output."""
        hs = [x]
        for layer in self.layers[:-1]:
            hs.append(torch.relu(layer(hs[-1])))
        return hs, self.layers[-1](hs[-1])

    def extra_repr(self) -> str:
        return f"parameterization={self.parameterization!r}, hyper={self.hyper}"


def build_network(
    d_in: int,
    depth: int,
    width: int,
    parameterization: str = "ntkj",
    *,
    seed: SeedLike,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    **hyper: float,
) -> FCNet:
    """A freshly initialised :class:`FCNet` (see the module docstring for the parameterizations).

    ``hyper`` overrides the paper's values: "ntkj" takes sigma_w, sigma_b; "ntkb" takes sigma_w0,
    sigma_b0, sigma_w, sigma_b, c; "standard" takes none. The initialisation depends only on
    ``seed`` (stream :data:`STREAM_INIT`), never on ``device`` or on global RNG state.
    """
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"unknown parameterization {parameterization!r}; "
            f"valid: {', '.join(PARAMETERIZATION_NAMES)}"
        )
    for name, value in (("d_in", d_in), ("depth", depth), ("width", width)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    p = PARAMETERIZATIONS[parameterization]
    valid = p.hyper_defaults
    unknown = sorted(set(hyper) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {unknown} for parameterization {parameterization!r}; "
            f"valid: {sorted(valid) or 'none'}"
        )
    hyper = {**valid, **{k: float(v) for k, v in hyper.items()}}

    gen = torch_generator(seed, STREAM_INIT)
    sizes = [int(d_in)] + [int(width)] * int(depth) + [1]
    layers = []
    for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        s = p.layer(l)
        w_scale, b_scale = s.weight_init.value(n_in, hyper), s.bias_init.value(n_in, hyper)
        # Draw in float64 on the CPU (device- and dtype-independent), then cast and move.
        w = torch.empty(n_out, n_in, dtype=torch.float64)
        b = torch.empty(n_out, dtype=torch.float64)
        if p.init == "uniform":
            w.uniform_(-w_scale, w_scale, generator=gen)
            b.uniform_(-b_scale, b_scale, generator=gen)
        else:
            w.normal_(0.0, w_scale, generator=gen)
            b.normal_(0.0, b_scale, generator=gen)
        layers.append(
            ScaledLinear(
                w.to(dtype=dtype, device=device),
                b.to(dtype=dtype, device=device),
                weight_mult=s.weight_mult.value(n_in, hyper),
                bias_mult=s.bias_mult.value(n_in, hyper),
                weight_std=p.std(w_scale),
                bias_std=p.std(b_scale),
            )
        )
    return FCNet(layers, parameterization=parameterization, hyper=hyper)


def float64_copy(net: FCNet) -> FCNet:
    """The same network in float64 on the same device (``net`` itself when already float64).

    Casting float32 → float64 is exact, so the copy computes the float32 network's function
    without its rounding: the empirical NTK of a float32 net is then accurate to float64, not
    to float32 (whose error a kernel solve would multiply by cond(Θ̂)).
    """
    if net.layers[0].weight.dtype == torch.float64:
        return net
    layers = [
        ScaledLinear(
            m.weight.detach().double(),
            m.bias.detach().double(),
            weight_mult=m.weight_mult,
            bias_mult=m.bias_mult,
            weight_std=m.weight_std,
            bias_std=m.bias_std,
        )
        for m in net.layers
    ]
    return FCNet(layers, parameterization=net.parameterization, hyper=net.hyper)

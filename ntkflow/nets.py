"""Fully connected ReLU networks in the parameterizations of SPEC §5.

Every layer, in every parameterization, has the same form

    z = weight_mult · (W h) + bias_mult · b,      W ~ init(weight_std),  b ~ init(bias_std),

where h is the input x for the first layer and relu(z_prev) afterwards. A parameterization is only
the choice of these four constants per layer (the multipliers are fixed, not trained):

===========  =============================  ===============  ==================  ===============
name         weight_mult                    weight_std       bias_mult           bias_std
===========  =============================  ===============  ==================  ===============
"ntkj"       σ_w/√n_in  (n_in = d for l=0)  1                σ_b                 1
"ntkb" l=0   1                              σ_w0/√d          1                   σ_b0
"ntkb" l≥1   √(c/n_in)                      σ_w              1                   σ_b
"standard"   1                              U(±1/√n_in)      1                   U(±1/√n_in)
===========  =============================  ===============  ==================  ===============

"ntkj" is the paper's released code (x/√d_in → Dense → ReLU → ·1/√width → … → Dense(1), all
parameters N(0, 1)) and, with general σ, neural-tangents' ``stax.Dense(parameterization='ntk')``;
its NTK and NNGP are ``kernel("NTKJ<L>")`` and ``kernel("GPJ<L>")``. "ntkb" is the network of the
paper's bias-aware derivation (section 3.1, appendix 6.4-6.5): its NTK and NNGP are
``kernel("NTKB<L>")`` and ``kernel("GP<L>")``. "standard" is PyTorch's default ``nn.Linear``
initialisation without any multiplier (no kernel limit of this form).

Initialisation is drawn on the CPU from a ``torch.Generator`` seeded from a
``numpy.random.SeedSequence``, in float64, then cast and moved, so the same seed gives the same
network on every device and (up to rounding) every dtype.

Public API::

    build_network(d_in, depth, width, parameterization="ntkj", *, seed, dtype=torch.float32,
                  device="cpu", **hyper) -> FCNet
    layer_norms(net) -> list[float]          # ‖(W_l, b_l)‖ per layer
    parameter_vector(net) -> torch.Tensor    # all parameters, flattened, concatenated
    parameter_norm(net) -> float             # ‖θ‖
    empirical_ntk(net, x1, x2=None) -> np.ndarray    # Θ̂(x1, x2), float64, exact for this net
    float64_copy(net) -> FCNet                       # the same network in float64
    empirical_nngp(net, x1, x2=None) -> np.ndarray   # E over the last layer of f(x1) f(x2)
    torch_generator(seed, stream) -> torch.Generator # CPU generator for one purpose of a seed
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

PARAMETERIZATIONS = ("ntkj", "ntkb", "standard")

# Hyperparameters each parameterization accepts, with their defaults (the paper's values).
HYPER_DEFAULTS: dict[str, dict[str, float]] = {
    "ntkj": {"sigma_w": 1.0, "sigma_b": 1.0},
    "ntkb": {"sigma_w0": 1.0, "sigma_b0": 1.0, "sigma_w": 1.0, "sigma_b": 1.0, "c": 2.0},
    "standard": {},
}

# Independent random streams derived from one seed (see torch_generator).
STREAM_INIT = 0
STREAM_SHUFFLE = 1

SeedLike = int | np.random.SeedSequence


def torch_generator(seed: SeedLike, stream: int) -> torch.Generator:
    """A CPU ``torch.Generator`` for one purpose (``stream``) of a seed.

    ``seed`` is an int or a ``numpy.random.SeedSequence`` (a trial's seed). Different streams of
    one seed (initialisation, batch shuffling) are independent, and none of them coincides with
    the seed's ``spawn()`` children.
    """
    if isinstance(seed, np.random.SeedSequence):
        ss = seed
    elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        ss = np.random.SeedSequence(int(seed))
    else:
        raise TypeError(f"seed must be an int or numpy SeedSequence, got {type(seed).__name__}")
    word = ss.generate_state(stream + 1, dtype=np.uint64)[stream]
    return torch.Generator(device="cpu").manual_seed(int(word))


class ScaledLinear(nn.Module):
    """``z = weight_mult · h Wᵀ + bias_mult · b`` with fixed (untrained) multipliers.

    ``weight_std`` and ``bias_std`` record the standard deviation of the initial distribution
    (needed by :func:`empirical_nngp`).
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


def _layer_constants(parameterization: str, l: int, n_in: int, hyper: dict) -> dict[str, float]:
    """weight_mult, bias_mult, weight_std, bias_std of layer l (0 = first) with n_in inputs."""
    if parameterization == "ntkj":
        return dict(
            weight_mult=hyper["sigma_w"] / math.sqrt(n_in),
            bias_mult=hyper["sigma_b"],
            weight_std=1.0,
            bias_std=1.0,
        )
    if parameterization == "ntkb":
        if l == 0:
            return dict(
                weight_mult=1.0,
                bias_mult=1.0,
                weight_std=hyper["sigma_w0"] / math.sqrt(n_in),
                bias_std=hyper["sigma_b0"],
            )
        return dict(
            weight_mult=math.sqrt(hyper["c"] / n_in),
            bias_mult=1.0,
            weight_std=hyper["sigma_w"],
            bias_std=hyper["sigma_b"],
        )
    # "standard": nn.Linear's default, kaiming_uniform(a=√5) = U(±1/√fan_in) for W and b.
    bound = 1.0 / math.sqrt(n_in)
    return dict(
        weight_mult=1.0,
        bias_mult=1.0,
        weight_std=bound / math.sqrt(3),
        bias_std=bound / math.sqrt(3),
    )


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
            f"unknown parameterization {parameterization!r}; valid: {', '.join(PARAMETERIZATIONS)}"
        )
    for name, value in (("d_in", d_in), ("depth", depth), ("width", width)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    valid = HYPER_DEFAULTS[parameterization]
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
        const = _layer_constants(parameterization, l, n_in, hyper)
        # Draw in float64 on the CPU (device- and dtype-independent), then cast and move.
        w = torch.empty(n_out, n_in, dtype=torch.float64)
        b = torch.empty(n_out, dtype=torch.float64)
        if parameterization == "standard":
            bound = 1.0 / math.sqrt(n_in)
            w.uniform_(-bound, bound, generator=gen)
            b.uniform_(-bound, bound, generator=gen)
        else:
            w.normal_(0.0, const["weight_std"], generator=gen)
            b.normal_(0.0, const["bias_std"], generator=gen)
        layers.append(
            ScaledLinear(
                w.to(dtype=dtype, device=device), b.to(dtype=dtype, device=device), **const
            )
        )
    return FCNet(layers, parameterization=parameterization, hyper=hyper)


@torch.no_grad()
def layer_norms(net: FCNet) -> list[float]:
    """‖(W_l, b_l)‖₂ of every layer, weights and bias together, first layer first."""
    return [
        math.sqrt(float(layer.weight.double().square().sum() + layer.bias.double().square().sum()))
        for layer in net.layers
    ]


@torch.no_grad()
def parameter_vector(net: nn.Module) -> torch.Tensor:
    """All parameters flattened and concatenated (a copy), in ``net.parameters()`` order."""
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


@torch.no_grad()
def parameter_norm(net: nn.Module) -> float:
    """‖θ‖₂ over all parameters, accumulated in float64."""
    return math.sqrt(sum(float(p.detach().double().square().sum()) for p in net.parameters()))


def _as_input(net: FCNet, x) -> torch.Tensor:
    p = net.layers[0].weight
    return torch.as_tensor(x).to(dtype=p.dtype, device=p.device)


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


@torch.no_grad()
def _features(net: FCNet, x) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer l: its input h_l and δ_l = ∂f/∂z_l (n × n_out), computed in float64."""
    net = float64_copy(net)
    hs, _ = net.layer_inputs(_as_input(net, x))
    deltas = [torch.ones(hs[0].shape[0], 1, dtype=hs[0].dtype, device=hs[0].device)]
    for l in range(len(net.layers) - 1, 0, -1):
        layer = net.layers[l]
        # δ_{l-1} = weight_mult_l · (δ_l W_l) ⊙ relu'(z_{l-1}); relu'(z) = 1[h > 0].
        deltas.append((deltas[-1] @ layer.weight) * layer.weight_mult * (hs[l] > 0))
    deltas.reverse()
    return hs, deltas


def empirical_ntk(net: FCNet, x1, x2=None) -> np.ndarray:
    """The network's empirical NTK Θ̂(x1, x2) = Σ_p ∂f(x1)/∂θ_p ∂f(x2)/∂θ_p, float64 numpy.

    Exact for this architecture without materialising Jacobians (at width 10,000 the Jacobian
    has 10⁸ columns): with h_l the input of layer l and δ_l = ∂f/∂z_l, ∂f/∂W_l is the outer
    product weight_mult_l δ_l h_lᵀ and ∂f/∂b_l = bias_mult_l δ_l, so

        Θ̂ = Σ_l (weight_mult_l² ⟨h_l, h_l'⟩ + bias_mult_l²) ⟨δ_l, δ_l'⟩.

    Memory is O(n · width) per layer. Everything (forward, backward signals, products) runs in
    float64 on a float64 copy of the network (:func:`float64_copy`), on the network's device.
    """
    h1, d1 = _features(net, x1)
    h2, d2 = (h1, d1) if x2 is None else _features(net, x2)
    theta = 0.0
    for layer, ha, hb, da, db in zip(net.layers, h1, h2, d1, d2, strict=True):
        theta = theta + (layer.weight_mult**2 * (ha @ hb.T) + layer.bias_mult**2) * (da @ db.T)
    return theta.cpu().numpy()


def empirical_nngp(net: FCNet, x1, x2=None) -> np.ndarray:
    """E over the last layer's initial distribution of f(x1) f(x2), given the hidden layers.

    = bias_mult² bias_std² + weight_mult² weight_std² ⟨h_L(x1), h_L(x2)⟩: the network's
    finite-width estimate of its NNGP, converging to ``kernel(...).nngp`` like 1/√width.
    """
    net64 = float64_copy(net)
    with torch.no_grad():
        ha = net64.layer_inputs(_as_input(net64, x1))[0][-1]
        hb = ha if x2 is None else net64.layer_inputs(_as_input(net64, x2))[0][-1]
    last = net.layers[-1]
    cov = (last.weight_mult * last.weight_std) ** 2 * (ha @ hb.T) + (
        last.bias_mult * last.bias_std
    ) ** 2
    return cov.cpu().numpy()

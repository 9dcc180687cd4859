"""What a finite network's kernels and parameters are: its empirical NTK and NNGP, and norms.

The empirical NTK is the kernel a network's gradient-flow training follows at first order
(docs/theory.md); it converges to the analytic NTK of its family like 1/√width
(tests/test_nets.py checks that against ``kernel("NTKJ<L>")`` and ``kernel("NTKB<L>")``).

Public API::

    empirical_ntk(net, x1, x2=None) -> np.ndarray    # Θ̂(x1, x2), float64, exact for this net
    empirical_nngp(net, x1, x2=None) -> np.ndarray   # E over the last layer of f(x1) f(x2)
    layer_norms(net) -> list[float]                  # ‖(W_l, b_l)‖ per layer
    parameter_vector(net) -> torch.Tensor            # all parameters, flattened, concatenated
    parameter_norm(net) -> float                     # ‖θ‖
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ntkflow.nets import FCNet, float64_copy


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

"""One SGD step of an :class:`ntkflow.nets.FCNet`, written out by hand (docs/formulas.md).

Forward, backward through the ReLUs, and in-place updates ``W ← W − lr·weight_mult·δᵀh`` as one
``addmm_`` per layer: no autograd graph and no optimizer, so the per-step Python overhead is a few
small kernel launches, and every weight matrix is streamed 4 times per step (read by forward,
backward and update, written by the update) instead of about 6 with autograd + torch.optim.
``tests/test_nets.py`` checks the step against autograd; :mod:`ntkflow.train` runs the epochs.
"""

from __future__ import annotations

import torch

# relu'(z) applied to a gradient, given h = relu(z): the kernel autograd itself uses for ReLU
# (one op instead of a comparison plus a multiply).
_relu_backward = torch.ops.aten.threshold_backward


def step_plan(layers) -> list[tuple]:
    """Per layer (W, Wᵀ, b, weight_mult, bias_mult). Wᵀ is a view: it follows in-place updates."""
    return [(m.weight, m.weight.t(), m.bias, m.weight_mult, m.bias_mult) for m in layers]


def sgd_step(plan, x: torch.Tensor, y: torch.Tensor, lr: float, sse: torch.Tensor) -> None:
    """One SGD step on mean((f − y)²) over the batch, in place; adds Σ(f − y)² to sse (1 × 1).

    Layer l computes z_l = a_l · h_l W_lᵀ + β_l · b_l (a = weight_mult, β = bias_mult) and
    h_{l+1} = relu(z_l). With δ_l = ∂loss/∂z_l: δ_out = 2(f − y)/B, ∂loss/∂W_l = a_l δ_lᵀ h_l,
    ∂loss/∂b_l = β_l Σ_batch δ_l and δ_{l-1} = a_l (δ_l W_l) ⊙ relu'(z_{l-1}).
    δ_l is kept as scale · d with the scalar scale on the host, so no kernel multiplies by a_l.
    Must run under ``torch.no_grad()``.
    """
    hs = [x]
    for _w, wt, b, a, beta in plan[:-1]:
        hs.append(torch.relu(torch.addmm(b, hs[-1], wt, beta=beta, alpha=a)))
    _w, wt, b, a, beta = plan[-1]
    d = torch.addmm(b, hs[-1], wt, beta=beta, alpha=a).sub_(y)  # f − y
    sse.addmm_(d.t(), d)
    scale = 2.0 / x.shape[0]
    for l in range(len(plan) - 1, -1, -1):
        w, wt, b, a, beta = plan[l]
        if l > 0:  # d for the layer below, computed before W_l is updated
            d_below = _relu_backward(torch.mm(d, w), hs[l], 0.0)
        w.addmm_(d.t(), hs[l], alpha=-lr * scale * a)
        b.add_(d.sum(0), alpha=-lr * scale * beta)
        if l > 0:
            d, scale = d_below, scale * a

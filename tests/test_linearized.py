"""Linearized theory (ntkflow.linearized) and the float64 factorized empirical NTK (ntkflow.nets).

Tolerances: the analytic checks run on well-conditioned NTK Grams of unit-norm inputs (cond(Θ)
≲ 1e4 here), so float64 closed forms agree to ~cond·eps ≈ 1e-12; the bounds below leave ≥ 100×.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch.func import functional_call, jacrev, vmap

from ntkflow.empirical import empirical_ntk
from ntkflow.kernels import kernel
from ntkflow.linearized import (
    GradientFlow,
    LinearizedDiverged,
    fixed_subsample,
    flow_factor,
    relative_change,
    sgd_replay,
)
from ntkflow.nets import build_network, float64_copy
from ntkflow.sgd import sgd_step as _sgd_step
from ntkflow.sgd import step_plan as _step_plan
from ntkflow.train import batch_slices, epoch_permutations, train_network

D_IN = 15


def unit_rows(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).uniform(-5, 7, (n, D_IN))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def problem():
    """n = 50 fit rows, 20 eval rows, NTKJ1 Gram, targets and an f₀."""
    rng = np.random.default_rng(1)
    x = unit_rows(70)
    k = kernel("NTKJ1")(x, x[:50])
    return {
        "k_fit": k[:50],
        "k_eval": k[50:],
        "y": rng.standard_normal(50),
        "f0_fit": 0.5 * rng.standard_normal(50),
        "f0_eval": 0.5 * rng.standard_normal(20),
    }


def direct(p, t):
    """f_t with scipy.linalg.expm and a linear solve, independent of the eigendecomposition."""
    k = p["k_fit"]
    m = np.eye(len(k)) - scipy.linalg.expm(-t * k)
    return p["f0_eval"] + p["k_eval"] @ np.linalg.solve(k, m @ (p["y"] - p["f0_fit"]))


def test_closed_form_at_zero_infinity_and_against_expm(problem):
    p = problem
    assert np.linalg.cond(p["k_fit"]) < 1e5
    flow = GradientFlow(p["k_fit"], p["k_eval"])
    args = (p["y"], p["f0_fit"], p["f0_eval"])
    np.testing.assert_allclose(flow.predict(0.0, *args), p["f0_eval"], rtol=0, atol=1e-12)
    inf = p["f0_eval"] + p["k_eval"] @ np.linalg.solve(p["k_fit"], p["y"] - p["f0_fit"])
    np.testing.assert_allclose(flow.predict(math.inf, *args), inf, rtol=0, atol=1e-8)
    for t in (0.01, 1.5, 3.0, 40.0):
        np.testing.assert_allclose(flow.predict(t, *args), direct(p, t), rtol=0, atol=1e-10)
    # on the fit rows themselves f_t − y = e^{−tΘ}(f₀ − y)
    fit = GradientFlow(p["k_fit"], p["k_fit"]).predict(2.0, p["y"], p["f0_fit"], p["f0_fit"])
    want = p["y"] + scipy.linalg.expm(-2.0 * p["k_fit"]) @ (p["f0_fit"] - p["y"])
    np.testing.assert_allclose(fit, want, rtol=0, atol=1e-10)


def test_flow_factor_is_stable_at_tiny_and_negative_eigenvalues():
    lam = np.array([0.0, 1e-300, 1e-18, -1e-18, 1e-9, -1e-9, 1e-3, 2.0])
    t = 1.5
    phi = flow_factor(t, lam)
    assert np.isfinite(phi).all()
    x = t * lam
    series = t * (1 - x / 2 + x**2 / 6 - x**3 / 24)  # (1 − e^{−x})/x, Taylor, exact to 1e-16 here
    np.testing.assert_allclose(phi[:6], series[:6], rtol=1e-15)
    np.testing.assert_allclose(phi[6:], (1 - np.exp(-x[6:])) / lam[6:], rtol=1e-12)
    assert flow_factor(0.0, lam).tolist() == [0.0] * len(lam)
    inf = flow_factor(math.inf, np.array([-1e-17, 0.0, 1e-17, 0.5, 4.0]))
    assert inf.tolist() == [0.0, 0.0, 0.0, 2.0, 0.25]  # within rounding of 0 → pseudo-inverse
    with pytest.raises(ValueError, match="t must be"):
        flow_factor(-1.0, lam)


def test_sgd_replay_approaches_gradient_flow_as_lr_shrinks(problem):
    """SGD at learning rate η follows gradient flow at t = 2ηE/B up to O(η).

    With 48 = 6·8 fit rows every point gets the same step. (When B ∤ n the last, smaller batch
    takes steps 2η/|S| > 2η/B, so its points weigh more: SGD then follows a reweighted flow, a
    bias that does not vanish with η; the network has it too, 468 = 58·8 + 4.)
    """
    p = problem
    t, batch, n = 1.0, 8, 48
    k_fit, k_eval, y, f0_fit = p["k_fit"][:n, :n], p["k_eval"][:, :n], p["y"][:n], p["f0_fit"][:n]
    flow = GradientFlow(k_fit, k_eval).predict(t, y, f0_fit, p["f0_eval"])
    errors = []
    for lr in (0.005, 0.00125, 0.0003):
        epochs = round(t * batch / (2 * lr))
        rep = sgd_replay(
            k_fit,
            k_eval,
            y,
            f0_fit,
            p["f0_eval"],
            epoch_permutations(3, n, epochs),
            batch_size=batch,
            lr=lr,
        )
        assert rep.steps == epochs * 6
        errors.append(np.sqrt(np.mean((rep.eval - flow) ** 2)))
    scale = np.sqrt(np.mean((flow - p["f0_eval"]) ** 2))
    assert errors[0] < 0.01 * scale
    # O(η): each ≈4× smaller step shrinks the error by well over 2×
    assert errors[1] < errors[0] / 2.5 and errors[2] < errors[1] / 2.5, errors


def test_sgd_replay_is_sgd_on_the_linearized_network():
    """The kernel form of the replay equals SGD on θ of f₀ + J(θ − θ₀), batch for batch."""
    net = build_network(D_IN, 2, 16, "ntkb", seed=5, dtype=torch.float64)
    x = unit_rows(30, seed=2)
    y = np.random.default_rng(3).standard_normal(23)
    j = jacobian(net, x)  # 30 × P
    f0 = net(torch.as_tensor(x)).detach().numpy().ravel()
    lr, batch, epochs = 0.05, 5, 4  # 23 = 4·5 + 3: partial last batch
    theta = np.zeros(j.shape[1])  # θ − θ₀
    for perm in epoch_permutations(9, 23, epochs):
        perm = perm.numpy()
        for sl in batch_slices(23, batch):
            s = perm[sl]
            r = f0[s] + j[s] @ theta - y[s]
            theta -= lr * 2.0 / len(s) * j[s].T @ r
    want = f0 + j @ theta
    ntk = j @ j[:23].T
    rep = sgd_replay(
        ntk[:23],
        ntk,
        y,
        f0[:23],
        f0,
        epoch_permutations(9, 23, epochs),
        batch_size=batch,
        lr=lr,
    )
    np.testing.assert_allclose(rep.eval, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(rep.fit, want[:23], rtol=0, atol=1e-12)


def test_sgd_replay_divergence_and_bad_input(problem):
    p = problem
    args = (p["k_fit"], p["k_eval"], p["y"], p["f0_fit"], p["f0_eval"])
    with pytest.raises(LinearizedDiverged, match="diverged"):
        sgd_replay(*args, epoch_permutations(0, 50, 300), batch_size=50, lr=50.0)
    with pytest.raises(ValueError, match="permutation"):
        sgd_replay(*args, [np.arange(49)], batch_size=8, lr=0.1)
    with pytest.raises(ValueError, match="lr > 0"):
        sgd_replay(*args, [], batch_size=8, lr=0.0)


def test_trainer_visits_batches_in_epoch_permutations_order():
    """train_network's steps are exactly _sgd_step over epoch_permutations' batches."""
    x = unit_rows(21, seed=4)
    y = np.random.default_rng(4).standard_normal(21)
    kw = dict(seed=7, dtype=torch.float64)
    a, b = build_network(D_IN, 1, 8, **kw), build_network(D_IN, 1, 8, **kw)
    train_network(a, x, y, x[:0], y[:0], None, epochs=3, batch_size=4, lr=0.1, seed=11)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y).reshape(-1, 1)
    plan, sse = _step_plan(list(b.layers)), torch.zeros(1, 1, dtype=torch.float64)
    with torch.no_grad():
        for perm in epoch_permutations(11, 21, 3):
            for sl in batch_slices(21, 4):
                _sgd_step(plan, xt[perm][sl], yt[perm][sl], 0.1, sse)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


# ---------------------------------------------------------------- empirical NTK, float64


def jacobian(net, x: np.ndarray) -> np.ndarray:
    """Per-example Jacobian ∂f(x_i)/∂θ (n × P) by torch.func, float64."""
    params = {k: v.detach() for k, v in net.named_parameters()}
    xt = torch.as_tensor(x, dtype=torch.float64)

    def f(p, xi):
        return functional_call(net, p, (xi[None],)).squeeze()

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, xt)
    return torch.cat([v.reshape(len(x), -1) for v in jac.values()], dim=1).numpy()


@pytest.mark.parametrize("parameterization", ["ntkj", "ntkb", "standard"])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_factorized_ntk_equals_jacobian_products(parameterization, depth):
    """The per-layer factorized empirical NTK equals J Jᵀ from torch.func, to float64 rounding
    (cross and symmetric forms); a float32 network's is that of its exact float64 copy."""
    net = build_network(D_IN, depth, 24, parameterization, seed=depth, dtype=torch.float64)
    x1, x2 = unit_rows(7, seed=1), unit_rows(5, seed=2)
    j1, j2 = jacobian(net, x1), jacobian(net, x2)
    ref = j1 @ j2.T
    scale = np.abs(ref).max()
    np.testing.assert_allclose(empirical_ntk(net, x1, x2), ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(empirical_ntk(net, x1), j1 @ j1.T, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(empirical_ntk(net, x1, x2), ref, rtol=0, atol=1e-10 * scale)
    # A float32 network: the NTK is that of its exact float64 copy, not of float32 arithmetic.
    net32 = build_network(D_IN, depth, 24, parameterization, seed=depth, dtype=torch.float32)
    j32 = jacobian(float64_copy(net32), x1)
    np.testing.assert_allclose(empirical_ntk(net32, x1), j32 @ j32.T, rtol=0, atol=1e-10 * scale)


def test_kernel_drift_of_an_untrained_net_is_zero_and_training_moves_it():
    x = unit_rows(40, seed=6)
    net = build_network(D_IN, 2, 32, "ntkj", seed=1)
    before = empirical_ntk(net, x)
    again = empirical_ntk(build_network(D_IN, 2, 32, "ntkj", seed=1), x)
    assert relative_change(again, before) == 0.0
    y = np.random.default_rng(0).standard_normal(40)
    train_network(net, x, y, x[:0], y[:0], None, epochs=5, batch_size=8, lr=0.05, seed=1)
    assert relative_change(empirical_ntk(net, x), before) > 1e-4
    # float64 throughout: the copy does not alias the float32 parameters
    copy = float64_copy(net)
    assert copy.layers[0].weight.dtype == torch.float64
    assert copy.layers[0].weight.data_ptr() != net.layers[0].weight.data_ptr()


def test_fixed_subsample_is_deterministic():
    ss = np.random.SeedSequence(4)
    a, b = fixed_subsample(ss, 468, 256), fixed_subsample(np.random.SeedSequence(4), 468, 256)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 256 and a.max() < 468
    assert fixed_subsample(ss, 100, 256).tolist() == list(range(100))

"""Networks (ntkflow.nets) and the SGD protocol (ntkflow.train), on the CPU.

The parameterization tests compare freshly initialised wide networks with the analytic kernels of
their family (SPEC §2, §5): the empirical NTK and the last-layer-averaged output covariance
converge to NTK<L> and to its NNGP with relative fluctuations ~ 1/√width.
"""

from __future__ import annotations

import json
import math
import re
import time

import numpy as np
import pytest
import torch
from torch.func import functional_call, jacrev, vmap

from ntkflow.empirical import (
    empirical_nngp,
    empirical_ntk,
    layer_norms,
    parameter_norm,
    parameter_vector,
)
from ntkflow.nets import build_network
from ntkflow.sgd import sgd_step, step_plan
from ntkflow.train import (
    TrainingDiverged,
    keras_split,
    keras_validation_split,
    train_network,
)

D_IN = 15


def unit_rows(n: int, d: int = D_IN, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def jacobian_ntk(net, x: np.ndarray) -> np.ndarray:
    """Empirical NTK from per-example Jacobians (torch.func), independent of empirical_ntk."""
    params = {k: v.detach() for k, v in net.named_parameters()}
    xt = torch.as_tensor(x, dtype=next(net.parameters()).dtype)

    def f(p, xi):
        return functional_call(net, p, (xi[None],)).squeeze()

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, xt)
    J = torch.cat([j.reshape(xt.shape[0], -1) for j in jac.values()], dim=1)
    return (J @ J.T).double().numpy()


# ---------------------------------------------------------------- parameterization vs kernels

WIDTH = 2048
N_SEEDS = 16
# Per-seed bound: every entry's relative error ≤ C_L/√width at depth L. At depth 1 each entry of Θ̂
# and of the last-layer NNGP estimate is a constant plus an average over the `width` i.i.d. hidden
# units of positive-mean terms (relu(z)relu(z'), W²·1[z>0]1[z'>0]); std is subadditive, so the
# relative std is at most the largest coefficient of variation of a term over √width. On the
# diagonal both terms have CV √5 ≈ 2.24 (Gaussian fourth moments: E relu⁴ = 3/2 K², E relu² = K/2);
# off the diagonal it grows as the pre-activations decorrelate, to ≈ 2.5 for these inputs (the
# bias keeps cos ≳ 0.6 between first-layer pre-activations). So depth 1: relative std ≤ 2.5/√width.
# Each further layer adds its own ≤ 2.5/√width, plus the propagated fluctuations of the layer below
# (E(K) and Ė(K) are degree-1 and degree-0 homogeneous, so relative errors do not grow); adding
# stds, ≤ 2.5·L/√width. C_L = 10·L is ≥ 4 of these worst-case standard deviations; the measured
# relative stds are 0.7-1.6/√width, so the margin is ≥ 6 of them in practice.
C_PER_LAYER = 10.0
# Mean over the seeds vs analytic, in standard errors estimated from the same seeds: with 16 seeds
# the ratio is t-distributed (15 dof), P(|t| > 5) ≈ 2e-4 per entry. The finite-width bias of the
# mean (O(1/width) at depth ≥ 2) is < 0.1 SE here. Mismatched constants are caught: c = 2.2
# instead of 2, or σ_b0 = 1.1 instead of 1, give ≥ 10 SE.
N_SE = 5.0

CONFIGS = [
    # (parameterization, depth, network hyperparameters, kernel name prefix, kernel overrides)
    ("ntkj", 1, {}, "NTKJ", {}),
    ("ntkj", 2, {}, "NTKJ", {}),
    ("ntkb", 1, {}, "NTKB", {}),
    ("ntkb", 2, {}, "NTKB", {}),
    # non-default constants: checks that every σ (and c) reaches the right layer
    ("ntkj", 1, {"sigma_w": 1.5, "sigma_b": 0.5}, "NTKJ", {"sigma_w": 1.5, "sigma_b": 0.5}),
    (
        "ntkb",
        1,
        {"sigma_w0": 1.3, "sigma_b0": 0.7, "sigma_w": 0.9, "sigma_b": 0.4, "c": 2.5},
        "NTKB",
        {"sigma_w0": 1.3, "sigma_b0": 0.7, "sigma_w": 0.9, "sigma_b": 0.4, "c": 2.5},
    ),
]


def assert_monte_carlo(samples, analytic, what: str, depth: int | None = None):
    """samples: (S, n, n) estimates; analytic: (n, n). Mean within N_SE·SE; with ``depth``, also
    every seed within C_PER_LAYER·depth/√width (relative)."""
    mean = samples.mean(axis=0)
    se = samples.std(axis=0, ddof=1) / math.sqrt(samples.shape[0])
    z = np.abs(mean - analytic) / se
    assert z.max() <= N_SE, f"{what}: mean over seeds off by {z.max():.2f} SE\n{mean}\n{analytic}"
    if depth is not None:
        rel = np.abs(samples - analytic) / np.abs(analytic)
        bound = C_PER_LAYER * depth / math.sqrt(WIDTH)
        assert rel.max() <= bound, f"{what}: a seed is off by {rel.max():.4f} > {bound:.4f}"


@pytest.mark.parametrize("parameterization,depth,hyper,family,overrides", CONFIGS)
def test_wide_network_matches_its_kernels(parameterization, depth, hyper, family, overrides):
    from ntkflow.kernels import kernel

    k = kernel(f"{family}{depth}", formulas="exact", **overrides)
    x = unit_rows(5, seed=depth)
    ntk, nngp = np.asarray(k(x, x)), np.asarray(k.nngp(x, x))

    seeds = np.random.SeedSequence(20250117).spawn(N_SEEDS)
    thetas, covs, outputs = [], [], []
    for i, seed in enumerate(seeds):
        net = build_network(
            D_IN, depth, WIDTH, parameterization, seed=seed, dtype=torch.float64, **hyper
        )
        theta = empirical_ntk(net, x)
        if i == 0:  # the structured formula is exactly the Jacobian one, on this very network
            np.testing.assert_allclose(theta, jacobian_ntk(net, x), rtol=1e-12, atol=0)
        thetas.append(theta)
        covs.append(empirical_nngp(net, x))
        with torch.no_grad():
            f = net(torch.as_tensor(x)).reshape(-1).numpy()
        outputs.append(np.outer(f, f))

    assert_monte_carlo(np.array(thetas), ntk, f"empirical NTK vs {family}{depth}", depth)
    assert_monte_carlo(np.array(covs), nngp, f"last-layer NNGP vs {family}{depth}.nngp", depth)
    # raw outputs: E[f(x) f(x')] = NNGP; one draw per seed, so only the mean test applies
    assert_monte_carlo(np.array(outputs), nngp, "output second moment")


# ---------------------------------------------------------------- construction


def test_build_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = build_network(D_IN, 2, 64, "ntkj", seed=np.random.SeedSequence(7).spawn(3)[1])
    b = build_network(D_IN, 2, 64, "ntkj", seed=np.random.SeedSequence(7).spawn(3)[1])
    c = build_network(D_IN, 2, 64, "ntkj", seed=np.random.SeedSequence(7).spawn(3)[2])
    d = build_network(D_IN, 2, 64, "ntkj", seed=7, dtype=torch.float64)
    e = build_network(D_IN, 2, 64, "ntkj", seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(parameter_vector(a), parameter_vector(b))
    assert not torch.equal(parameter_vector(a), parameter_vector(c))
    assert torch.equal(parameter_vector(d).float(), parameter_vector(e))  # same draws, cast


def test_shapes_norms_and_initial_distributions():
    net = build_network(D_IN, 3, 300, "ntkb", seed=1)
    assert (net.depth, net.width, net.d_in) == (3, 300, D_IN)
    assert [tuple(m.weight.shape) for m in net.layers] == [
        (300, 15),
        (300, 300),
        (300, 300),
        (1, 300),
    ]
    assert net(torch.zeros(4, D_IN)).shape == (4, 1)
    norms = layer_norms(net)
    assert len(norms) == 4
    assert math.isclose(math.sqrt(sum(n * n for n in norms)), parameter_norm(net), rel_tol=1e-6)
    assert parameter_vector(net).numel() == sum(p.numel() for p in net.parameters())
    # ntkb: first layer N(0, 1/d) raw, later N(0, 1)
    w0, w1 = net.layers[0].weight, net.layers[1].weight
    assert abs(w0.std().item() * math.sqrt(D_IN) - 1) < 0.05
    assert abs(w1.std().item() - 1) < 0.01
    assert math.isclose(net.layers[1].weight_mult, math.sqrt(2 / 300))

    std = build_network(D_IN, 1, 200, "standard", seed=1)
    bound = 1 / math.sqrt(D_IN)
    assert std.layers[0].weight.abs().max() <= bound and std.layers[0].bias.abs().max() <= bound
    assert std.layers[1].weight.abs().max() <= 1 / math.sqrt(200)
    assert std.layers[1].weight_mult == 1.0


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="ntkj, ntkb, standard"):
        build_network(D_IN, 1, 8, "ntk", seed=0)
    with pytest.raises(ValueError, match="sigma_w0"):
        build_network(D_IN, 1, 8, "ntkj", seed=0, sigma_w0=1.0)
    with pytest.raises(ValueError, match="depth"):
        build_network(D_IN, 0, 8, seed=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_initialisation_is_device_independent():
    cpu = build_network(D_IN, 2, 128, "ntkj", seed=5)
    gpu = build_network(D_IN, 2, 128, "ntkj", seed=5, device="cuda")
    assert torch.equal(parameter_vector(cpu), parameter_vector(gpu).cpu())


# ---------------------------------------------------------------- training


def test_keras_split_matches_keras():
    # Keras: int(math.floor(n * (1. - validation_split))) in floating point. 1 - 0.3 is the double
    # just below 0.7, so n · 0.7 lands just below the integer when n·0.7 is one (670 → 469 - ε).
    cases = {670: 468, 700: 489, 1340: 937, 90: 62, 1000: 700, 100: 70, 10: 7, 469: 328, 3: 2}
    for n, expected in cases.items():
        assert keras_split(n, 0.3) == expected, n
    assert keras_split(10, 0.2) == 8
    assert keras_split(10, 0.0) == 10
    with pytest.raises(ValueError):
        keras_split(1, 0.3)  # nothing left to fit
    with pytest.raises(ValueError):
        keras_split(10, 1.0)
    x, y = np.arange(20.0).reshape(10, 2), np.arange(10.0)
    xf, yf, xv, yv = keras_validation_split(x, y, 0.3)
    assert (len(xf), len(xv)) == (7, 3) and yf[-1] == 6 and yv[0] == 7  # leading rows are fit


def problem(n_train=100, seed=0):
    x = unit_rows(n_train + 20, seed=seed)
    y = np.sin(3 * x[:, 0]) + x[:, 1] - 0.5 * x[:, 2] ** 2
    n_fit = keras_split(n_train)
    return x[:n_fit], y[:n_fit], x[n_fit:n_train], y[n_fit:n_train], x[n_train:]


def test_sgd_step_matches_autograd():
    """The hand-written step equals autograd + plain SGD on mean((f − y)²), full and short batch."""
    for parameterization in ("ntkj", "ntkb", "standard"):
        for batch in (8, 5):
            net = build_network(D_IN, 2, 32, parameterization, seed=11, dtype=torch.float64)
            ref = build_network(D_IN, 2, 32, parameterization, seed=11, dtype=torch.float64)
            x = torch.as_tensor(unit_rows(batch, seed=4))
            y = torch.randn(
                batch, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
            )
            lr = 0.05
            loss = torch.mean((ref(x) - y) ** 2)
            grads = torch.autograd.grad(loss, list(ref.parameters()))
            sse = torch.zeros(1, 1, dtype=torch.float64)
            with torch.no_grad():
                sgd_step(step_plan(net.layers), x, y, lr, sse)
                for p, g in zip(ref.parameters(), grads, strict=True):
                    p -= lr * g
            torch.testing.assert_close(
                parameter_vector(net), parameter_vector(ref), rtol=1e-12, atol=1e-13
            )
            assert math.isclose(sse.item(), loss.item() * batch, rel_tol=1e-12)


@pytest.mark.parametrize(
    "parameterization,depth", [("ntkj", 1), ("ntkj", 2), ("ntkb", 2), ("standard", 2)]
)
def test_training_reduces_loss(parameterization, depth):
    x_fit, y_fit, x_val, y_val, x_test = problem()
    net = build_network(D_IN, depth, 128, parameterization, seed=1)
    # lr above the paper's 0.002 so that 100 epochs on 70 rows make clear progress
    r = train_network(
        net, x_fit, y_fit, x_val, y_val, x_test, epochs=100, seed=2, lr=0.05, log_every=25
    )
    assert list(r.curve["epoch"]) == [0, 25, 50, 75, 100]
    assert (np.diff(r.curve["train_loss"]) < 0).all()
    assert r.curve["train_loss"][-1] < 0.5 * r.curve["train_loss"][0]
    assert np.isnan(r.curve["sgd_loss"][0]) and np.isfinite(r.curve["sgd_loss"][1:]).all()
    assert (r.n_fit, r.n_val, r.epochs_run) == (70, 30, 100)
    assert r.steps == 100 * 9  # 70 rows: 8 batches of 8 and one of 6
    assert r.f0["test"].shape == r.pred["test"].shape == (20,) and r.f0["val"].dtype == np.float64
    # the reported training loss is the loss of the reported predictions
    assert math.isclose(
        r.curve["train_loss"][-1], np.mean((r.pred["fit"] - y_fit) ** 2), rel_tol=1e-5
    )
    assert len(r.param_rel_change) == depth + 1 and all(c > 0 for c in r.param_rel_change)
    assert r.steps_per_second > 0 and r.device == "cpu"
    json.dumps(r.to_dict())


def test_same_seed_same_network_and_predictions():
    x_fit, y_fit, x_val, y_val, x_test = problem()

    def run(shuffle_seed):
        net = build_network(D_IN, 2, 64, "ntkj", seed=np.random.SeedSequence(3))
        r = train_network(net, x_fit, y_fit, x_val, y_val, x_test, epochs=5, seed=shuffle_seed)
        return net, r

    (a, ra), (b, rb), (_, rc) = run(9), run(9), run(10)
    assert torch.equal(parameter_vector(a), parameter_vector(b))
    for key in ("fit", "val", "test"):
        assert np.array_equal(ra.pred[key], rb.pred[key])
    assert np.array_equal(ra.f0["test"], rc.f0["test"])  # same init
    assert not np.array_equal(ra.pred["test"], rc.pred["test"])  # different batch order
    # f0 and the initial norms are those of the network build_network returns for that seed
    fresh = build_network(D_IN, 2, 64, "ntkj", seed=np.random.SeedSequence(3))
    assert ra.norms_init == layer_norms(fresh)
    with torch.no_grad():
        f0 = fresh(torch.as_tensor(x_test, dtype=torch.float32)).reshape(-1).double().numpy()
    assert np.array_equal(ra.f0["test"], f0)


def test_divergence_stops_at_once():
    x_fit, y_fit, x_val, y_val, x_test = problem()
    net = build_network(D_IN, 2, 64, "ntkj", seed=1)
    t0 = time.perf_counter()
    with pytest.raises(TrainingDiverged, match=r"epoch \d+") as info:
        train_network(net, x_fit, y_fit, x_val, y_val, x_test, epochs=100_000, lr=50.0, seed=0)
    epoch = int(re.search(r"epoch (\d+)", str(info.value)).group(1))
    assert epoch <= 20 and time.perf_counter() - t0 < 10
    # Deterministic for a seed: the flow's retry condition must fail it at once, while the
    # transient failures it exists for (a lost worker) are retried.
    from prefect.states import Failed

    from flows.tasks import _transient

    class KilledWorker(Exception):  # distributed's name for a lost worker
        pass

    assert _transient(None, None, Failed(data=info.value)) is False
    assert _transient(None, None, Failed(data=KilledWorker("worker lost"))) is True


def test_progress_and_no_validation_rows():
    x_fit, y_fit, _, _, _ = problem()
    seen = []
    net = build_network(D_IN, 1, 16, "ntkb", seed=0)
    r = train_network(
        net,
        x_fit,
        y_fit,
        x_fit[:0],
        y_fit[:0],
        None,
        epochs=3,
        seed=0,
        log_every=2,
        progress=lambda epoch, row: seen.append((epoch, row["train_loss"])),
    )
    assert [e for e, _ in seen] == [0, 2, 3]
    assert np.isnan(r.curve["val_loss"]).all() and r.pred["test"].shape == (0,)

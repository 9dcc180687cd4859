"""Trial data (SPEC §3): unit rows, split sizes, determinism, the GP sampler."""

import numpy as np
import pytest

from ntkflow.config.presets import load_config
from ntkflow.data import sample_gp, simulate
from ntkflow.kernels import kernel
from ntkflow.seeds import trial_seed
from ntkflow.split import keras_split


@pytest.fixture(scope="module")
def paper_cfg():
    return load_config("paper-corrected", overrides=["trials=5"])


def test_trial_seed_is_spawn_independent_of_count():
    for n in (4, 50):
        child = np.random.SeedSequence(123).spawn(n)[3]
        assert child.generate_state(4).tolist() == trial_seed(123, 3).generate_state(4).tolist()


def test_paper_trial_shapes_and_split(paper_cfg):
    d = simulate(paper_cfg, 0)
    assert d.x.shape == (1000, 15) and d.y.shape == (1000,)
    np.testing.assert_allclose(np.linalg.norm(d.x, axis=1), 1.0, rtol=1e-14)
    assert len(d.test) == 330 and len(d.train) == 670 and len(d.fit) == 468
    assert sorted(np.concatenate([d.train, d.test]).tolist()) == list(range(1000))
    np.testing.assert_array_equal(d.fit, d.train[:468])
    assert d.info["sampler"] in ("cholesky", "eigh")


def test_deterministic_per_trial_whatever_the_order(paper_cfg):
    a3, a1 = simulate(paper_cfg, 3), simulate(paper_cfg, 1)
    b1, b3 = simulate(paper_cfg, 1), simulate(paper_cfg, 3)
    for a, b in ((a1, b1), (a3, b3)):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
        np.testing.assert_array_equal(a.test, b.test)
    assert not np.array_equal(a1.x, a3.x)
    more = load_config("paper-corrected", overrides=["trials=50"])
    np.testing.assert_array_equal(simulate(more, 3).y, a3.y)  # n_trials does not matter


def test_inputs_in_the_protocol_box():
    cfg = load_config("smoke")
    d = simulate(cfg, 0)
    # rows are U[-5, 7] draws rescaled: the mean direction is positive in every coordinate
    assert (d.x.mean(axis=0) > 0).all()


def test_published_variant_uses_published_ground_truth():
    exact = simulate(load_config("smoke"), 0)
    pub = simulate(load_config("smoke", overrides=["formulas=published"]), 0)
    np.testing.assert_array_equal(exact.x, pub.x)
    assert not np.allclose(exact.y, pub.y)
    assert pub.info["formulas"] == "published"


def test_sampler_covariance_matches_h():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 15))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    h = kernel("NTKB1")(x)
    draws = np.stack([sample_gp(h.copy(), rng)[0] for _ in range(20000)])
    cov = np.cov(draws.T)
    # Monte Carlo error of a sample covariance: sd ≈ sqrt((H_ij² + H_ii H_jj)/N)
    sd = np.sqrt((h**2 + np.outer(np.diag(h), np.diag(h))) / len(draws))
    assert np.all(np.abs(cov - h) < 5 * sd)


def test_sampler_jitter_and_eigen_fallback():
    rng = np.random.default_rng(1)
    v = rng.standard_normal((20, 3))
    singular = v @ v.T  # rank 3: plain Cholesky fails, a small jitter works
    y, info = sample_gp(singular.copy(), rng)
    assert info["sampler"] == "cholesky" and info["jitter"] > 0
    indefinite = singular - 5.0 * np.eye(20)
    y, info = sample_gp(indefinite.copy(), rng)
    negative = int((np.linalg.eigvalsh(indefinite) < 0).sum())
    assert negative >= 17 and info["sampler"] == "eigh" and info["clipped_eigenvalues"] == negative
    assert np.isfinite(y).all()


@pytest.mark.parametrize(
    "n, split, fit", [(670, 0.3, 468), (1000, 0.3, 700), (10, 0.2, 8), (100, 0.3, 70), (7, 0.0, 7)]
)
def test_keras_split(n, split, fit):
    assert keras_split(n, split) == fit

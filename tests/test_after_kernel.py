"""The after-kernel (LIN-after, final kernel error), sweep names and grids (the verdict:
tests/test_verdict.py).

An untrained network's final kernel is its initial kernel: the after-kernel path computes it the
same way (per-layer factors, float64), so LIN-after equals LIN-emp and the final error equals the
init error up to rounding of identical operations (1e-12 relative leaves orders of magnitude).
"""

from __future__ import annotations

import numpy as np
import pytest

from ntkflow import trial
from ntkflow.config.presets import load_config
from ntkflow.names import network_specs, parse_method
from ntkflow.store import Store
from ntkflow.trial.network import (
    initial_network,
    lazy_diagnostics,
    store_final_ntk,
    store_initial_ntk,
)
from ntkflow.trial.theory import after_predictions

ONE = ["kernels=[NTKJ1]", "networks.depths=[1]", "networks.epochs=[3]"]


@pytest.fixture(scope="module")
def untrained():
    """Trial 0 of a smoke run with its data and Grams, and its initial network's NTK stored
    both as Θ̂₀ and (the network left untrained) as Θ̂_T."""
    cfg = load_config("smoke", overrides=ONE)
    t = trial.Trial(cfg, Store("memory://ntkflow-after/untrained"), 0)
    trial.kernel_part(t)
    (spec,) = network_specs(cfg)
    net = initial_network(t, spec)
    init = store_initial_ntk(t, spec.name, net)
    final, record = store_final_ntk(t, spec.name, net)
    return t, spec, init, final, record


def test_lin_after_of_an_untrained_network_is_lin_emp(untrained):
    t, spec, init, final, record = untrained
    assert record["ntkT"].endswith("NN1_ntkT.npz") and spec.t > 0  # a flow that moves
    preds = after_predictions(t, spec, init, final)
    scale = np.abs(preds["-emp"]).max()
    np.testing.assert_allclose(preds["-after"], preds["-emp"], rtol=0, atol=1e-12 * scale)
    assert np.abs(preds["-emp"] - init.f0_test).max() > 1e-3 * scale  # not just f₀


def test_final_error_of_an_untrained_network_is_its_init_error(untrained):
    t, spec, init, final, _ = untrained
    diag = lazy_diagnostics(t, spec, init.ntk, final)
    assert diag["ntk_drift"] <= 1e-12
    assert diag["ntk_final_error"] == pytest.approx(diag["ntk_init_error"], rel=1e-12)
    assert diag["ntk_init_error"] > 0.01  # width 64: far from the limit, so the check bites


def test_trained_network_records_its_final_kernel():
    cfg = load_config("smoke", overrides=ONE)
    store = Store("memory://ntkflow-after/trained")
    res = trial.run_trial(cfg, store, 0)["methods"]
    nn, after = res["NN1"], res["LIN1-after"]
    assert nn["ntk_drift"] > 0 and nn["ntk_final_error"] != nn["ntk_init_error"]
    assert after["ntk"] == "empirical-final" and after["reference"] == "LIN1-emp"
    assert after["rmse_vs_reference"] > 0 and after["rmse_vs_network"] < 0.1 * nn["rmse"]
    assert store.exists(nn["ntkT"]) and "nets/NN1_ntkT.npz" in store.read_json(
        "trials/000/result.json"
    ).get("manifest", {})


# ---- names and grids ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, depth, variant, settings, network",
    [
        ("NN1", 1, "", {}, "NN1"),
        ("NN2@w64", 2, "", {"width": 64}, "NN2@w64"),  # the names width sweeps always had
        ("LIN1-sgd@w1024", 1, "-sgd", {"width": 1024}, "NN1@w1024"),
        ("NN1@lr=0.02", 1, "", {"lr": 0.02}, "NN1@lr=0.02"),
        (
            "LIN1-after@width=1024,lr=0.02",
            1,
            "-after",
            {"width": 1024, "lr": 0.02},
            "NN1@width=1024,lr=0.02",
        ),
        (
            "LIN3@parameterization=ntkb",
            3,
            "",
            {"parameterization": "ntkb"},
            "NN3@parameterization=ntkb",
        ),
    ],
)
def test_method_names_parse(name, depth, variant, settings, network):
    m = parse_method(name)
    assert (m.depth, m.variant, m.settings, m.network) == (depth, variant, settings, network)
    assert parse_method("NTKB2").kind == "kernel"


def test_grid_names_and_keep_t():
    cfg = load_config(
        "quick",
        overrides=[
            "networks.depths=[1]",
            "networks.epochs=[300]",
            "networks.vary={width: [1024], lr: [0.005, 0.02, 0.08, 0.32]}",
            "networks.keep_t=true",
        ],
    )
    specs = network_specs(cfg)
    assert [s.name for s in specs] == [
        f"NN1@width=1024,lr={lr}" for lr in ("0.005", "0.02", "0.08", "0.32")
    ]
    assert [s.epochs for s in specs] == [1200, 300, 75, 19]  # t = 1.5, 18.75 rounded
    assert [round(s.t, 3) for s in specs] == [1.5, 1.5, 1.5, 1.52]
    assert all(parse_method(s.name).settings == {"width": 1024, "lr": s.lr} for s in specs)
    # a depth sweep: the depth is in NN<L>, each depth with its epochs
    cfg = load_config("smoke", overrides=["networks.vary.depths=[1, 3]", "networks.epochs=[3, 5]"])
    assert [(s.name, s.epochs) for s in network_specs(cfg)] == [("NN1", 3), ("NN3", 5)]
    # the key of a network outside a sweep does not depend on how the grid is spelled
    plain = load_config("smoke", overrides=["networks.width=32"])
    swept = load_config("smoke", overrides=["networks.vary.width=[16, 32]"])
    t0, t1 = (trial.Trial(c, Store("memory://ntkflow-after/keys"), 0) for c in (plain, swept))
    assert trial.item_of(t0, "NN1").key() == trial.item_of(t1, "NN1@w32").key()

"""Theory items in a trial, a diverged network, and width sweeps (one flow, shared Grams,
rerun-failed-only per (width, trial), bad input rejected before any work)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ntkflow import report, trial
from ntkflow.config import ConfigError
from ntkflow.presets import load_config
from ntkflow.store import Store

SMALL = ["kernels=[NTKB1, K1]"]


def test_theory_items_and_summary_section():
    cfg = load_config("smoke", overrides=SMALL)
    store = Store("memory://ntkflow-theory/run")
    for k in range(cfg.trials):
        res = trial.run_trial(cfg, store, k)
    methods = res["methods"]
    for L in (1, 2):
        nn = methods[f"NN{L}"]
        assert nn["ntk_drift"] > 0 and 0 < nn["ntk_init_error"] < 1
        assert nn["ntk_subsample"] == min(256, len(trial.load_data(store, 1).fit))
        t = 2 * cfg.networks.lr * cfg.networks.epochs[L - 1] / cfg.networks.batch_size
        for v in ("", "-emp", "-sgd"):
            lin = methods[f"LIN{L}{v}"]
            assert lin["t"] == pytest.approx(t) and lin["network"] == f"NN{L}"
            # a few tiny SGD steps: every finite-t predictor stays near the network
            assert lin["rel_rmse_vs_network"] < 0.1
        assert methods[f"LIN{L}-inf"]["t"] == math.inf
        # each effect of SPEC §6 against the predictor differing in that respect only
        assert methods[f"LIN{L}-emp"]["reference"] == f"LIN{L}"
        assert methods[f"LIN{L}-sgd"]["reference"] == f"LIN{L}-emp"
        assert methods[f"LIN{L}-sgd"]["rmse_vs_reference"] > 0
        assert methods[f"LIN{L}"]["ntk"] == f"NTKJ{L}"  # the ntkj network's own family
    # the analytic NTKs are Grams of the trial, stored once next to the run's kernels
    assert set(store.listdir("trials/000/gram")) == {f"{g}.zarr" for g in cfg.gram_kernels}
    assert set(cfg.gram_kernels) == {"NTKB1", "K1", "NTKJ1", "NTKJ2"}
    summary = report.aggregate(cfg, store)
    th = summary["theory"]["NN1"]
    assert th["predictors"]["LIN1-sgd"]["gap"]["n"] == 2
    assert th["diagnostics"]["ntk_drift"]["n"] == 2
    assert len(th["diagnostics"]["param_rel_change"]) == 2  # two layers at depth 1
    assert summary["methods"]["LIN2-sgd"]["n"] == 2
    md = store.read_bytes("report.md").decode()
    assert "## Does the network follow its NTK?" in md and "theory.png" in md
    assert store.read_bytes("theory.png")[:4] == b"\x89PNG"


def test_a_diverged_network_fails_only_its_own_methods():
    cfg = load_config(
        "smoke",
        overrides=[*SMALL, "networks.lr=1000", "networks.depths=[1]", "networks.epochs=[30]"],
    )
    store = Store("memory://ntkflow-diverged/run")
    for k in range(cfg.trials):
        res = trial.run_trial(cfg, store, k)  # the trial completes
    assert res["methods"]["NN1"]["status"] == "failed"
    assert "diverged" in res["methods"]["NN1"]["error"]
    summary = report.aggregate(cfg, store)
    assert summary["failed_trials"] == []
    assert summary["methods"]["NN1"]["n"] == 0
    assert summary["methods"]["NTKB1"]["n"] == 2 and summary["methods"]["K1"]["n"] == 2
    # the closed forms do not depend on the trained network; the SGD replay diverges as it did
    assert summary["methods"]["LIN1"]["n"] == 2 and summary["methods"]["LIN1-emp"]["n"] == 2
    assert summary["methods"]["LIN1-sgd"]["n"] == 0
    assert [r["trial"] for r in summary["missing"]["NN1"]] == [0, 1]
    assert "LIN1" not in summary["missing"]
    md = store.read_bytes("report.md").decode()
    assert (
        "## Trials each method lacks (besides failed trials)" in md
        and "- NN1: 0 (failed: TrainingDiverged" in md
    )


def test_sweep_config():
    cfg = load_config("smoke", overrides=[*SMALL, "networks.widths=[16, 32]"])
    assert cfg.methods[:4] == ["NN1@w16", "NN1@w32", "NN2@w16", "NN2@w32"]
    assert "LIN2-sgd@w32" in cfg.methods
    with pytest.raises(ConfigError, match="networks.widths"):
        load_config("smoke", overrides=["networks.widths=[16, 16]"])
    with pytest.raises(ConfigError, match="faults.fail_networks"):
        load_config("smoke", overrides=["faults.fail_networks=[NN1]"])


@pytest.mark.parametrize(
    "args, field",
    [
        (["--widths", "0,64"], "networks.widths"),
        (["--widths", "-5"], "networks.widths"),
        (["--widths", "64,x"], "--widths"),
        (["--widths", "64", "--kernels-only"], "networks.widths"),
        (["--widths", "64", "--set", "networks.lr=-0.1"], "networks.lr"),
        (["--widths", "64", "--set", "networks.epochs=[0, 1]"], "networks.epochs"),  # t = 0
    ],
)
def test_bad_sweeps_are_rejected_before_any_work(run_cli, tmp_path, args, field):
    r = run_cli("sweep", "--preset", "smoke", "--out", str(tmp_path / "out"), *args)
    assert r.returncode == 2, r.stderr
    assert field in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def _mtimes(run: Path, pattern: str) -> dict[str, int]:
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.glob(pattern)}


@pytest.mark.slow
def test_sweep_shares_grams_and_reruns_only_the_failed_network(run_cli, tmp_path):
    out = tmp_path / "runs"
    args = ["sweep", "--preset", "smoke", "--widths", "16,32", "--out", str(out)]
    args += ["--set", "kernels=[NTKB1, K1]"]
    faults = ["--set", "faults.fail_networks=['1/NN1@w32']", "--set", "faults.fail_once=true"]
    r = run_cli(*args, *faults)
    assert r.returncode == 1, r.stderr  # trial 1 failed
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    assert "trial-001/train/NN1@w32" in r.stdout + r.stderr
    # one Gram per kernel per trial, whatever the number of widths
    for k in ("000", "001"):
        grams = sorted(p.name for p in (run / "trials" / k / "gram").iterdir())
        assert grams == ["K1.zarr", "NTKB1.zarr", "NTKJ1.zarr", "NTKJ2.zarr"]
    assert not (run / "trials/001/items/NN1@w32.json").exists()
    assert (run / "trials/001/items/NN2@w32.json").exists()
    before = _mtimes(run, "trials/*/items/*.json") | _mtimes(run, "trials/*/gram/*/zarr.json")
    before |= _mtimes(run, "trials/*/nets/*")

    r = run_cli(*args, *faults)  # the same run: only the failed network (and its theory) runs
    assert r.returncode == 0, r.stderr
    after = _mtimes(run, "trials/*/items/*.json") | _mtimes(run, "trials/*/gram/*/zarr.json")
    after |= _mtimes(run, "trials/*/nets/*")
    changed = sorted(p for p in after if before.get(p) != after[p])
    assert changed == sorted(
        [
            f"trials/001/items/{m}@w32.json"
            for m in ("NN1", "LIN1", "LIN1-emp", "LIN1-inf", "LIN1-sgd")
        ]
        + [
            f"trials/001/nets/{f}"
            for f in ("NN1@w32.npz", "NN1@w32_curve.json", "NN1@w32_ntk0.npz", "LIN1@w32.npz")
        ]
    ), changed
    summary = (run / "summary.json").read_text()
    assert '"sweep"' in summary
    assert (run / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Gap to the linearized network against width" in (run / "report.md").read_text()

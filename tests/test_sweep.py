"""Theory items in a trial, a diverged network, and width sweeps (one flow, shared Grams,
rerun-failed-only per (width, trial), bad input rejected before any work)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from test_cli import ntkflow_in_process

from ntkflow import report, trial
from ntkflow.config import ConfigError
from ntkflow.config.presets import load_config
from ntkflow.store import Store

SMALL = ["kernels=[NTKB1, K1]"]


def _intervals(line: str) -> list[tuple[float, float]]:
    """The ``[low, high]`` intervals a report line prints."""
    return [(float(a), float(b)) for a, b in re.findall(r"\[([-+.\deE]+), ([-+.\deE]+)\]", line)]


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
    # the diagnostics are non-negative: geometric mean [interval], never "mean ± SE"
    (diag,) = [ln for ln in md.splitlines() if ln.startswith("- NN1 (width")]
    assert "±" not in diag and _intervals(diag) and all(lo >= 0 for lo, _ in _intervals(diag))
    assert th["diagnostics"]["ntk_drift"]["ci_low"] >= 0
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
    # the key of older configs and --widths is the width axis of the grid
    assert cfg.networks.vary == {"width": [16, 32]}
    with pytest.raises(ConfigError, match="networks.vary.width"):
        load_config("smoke", overrides=["networks.widths=[16, 16]"])
    with pytest.raises(ConfigError, match="faults.fail_networks"):
        load_config("smoke", overrides=["faults.fail_networks=[NN1]"])


@pytest.mark.parametrize(
    "args, field",
    [
        (["--widths", "0,64"], "networks.vary.width"),
        (["--widths", "-5"], "networks.vary.width"),
        (["--widths", "64,x"], "--widths"),
        (["--widths", "64", "--kernels-only"], "--kernels-only"),
        (["--vary", "networks.foo=1,2"], "networks.vary.foo"),  # an unknown key
        (["--vary", "networks.lr="], "networks.vary.lr"),  # an empty list
        (["--vary", "networks.lr=0.02,-1"], "networks.vary.lr"),  # a value the config rejects
        (["--vary", "networks.batch_size=1.5"], "networks.vary.batch_size"),
        (["--vary", "networks.parameterization=ntkj,wide"], "networks.vary.parameterization"),
        (["--vary", "data.n_obs=100,200"], "--vary data.n_obs"),  # not a training setting
        (
            [
                "--vary",
                "networks.lr=1,2,3,4,5,6,7,8,9",
                "--vary",
                "networks.width=" + ",".join(map(str, range(1, 9))),
            ],
            "networks.vary",
        ),  # 72 grid points: more than the bound
        (["--vary", "networks.epochs=3,4", "--keep-t"], "networks.keep_t"),
        (["--widths", "16", "--vary", "networks.width=32"], "networks.widths"),
        ([], "--vary"),
        (["--widths", "64", "--set", "networks.lr=-0.1"], "networks.lr"),
        (["--widths", "64", "--set", "networks.epochs=[0, 1]"], "networks.epochs"),  # t = 0
    ],
)
def test_bad_sweeps_are_rejected_before_any_work(capsys, tmp_path, args, field):
    """Exit 2 naming the field, and nothing started or written (ntkflow_in_process)."""
    r = ntkflow_in_process(
        capsys, "sweep", "--preset", "smoke", "--out", str(tmp_path / "out"), *args
    )
    assert r.returncode == 2, r.stderr
    assert field in r.stderr and "Traceback" not in r.stderr and r.stdout == ""
    assert not (tmp_path / "out").exists()


def _mtimes(run: Path, pattern: str) -> dict[str, int]:
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.glob(pattern)}


@pytest.mark.slow
def test_a_two_key_grid_shares_grams_and_reruns_only_the_failed_point(
    run_cli, tmp_path, shared_api
):
    """A width × learning-rate grid (--widths is short for --vary networks.width) at smoke size:
    one Gram per kernel per trial whatever the grid, and after an injected failure of one grid
    point the rerun computes that point (network and predictors) and nothing else."""
    out = tmp_path / "runs"
    args = ["sweep", "--preset", "smoke", "--widths", "16,32", "--out", str(out)]
    args += ["--vary", "networks.lr=0.002,0.02", "--set", "kernels=[NTKB1, K1]"]
    args += ["--set", "networks.depths=[1]", "--set", "networks.epochs=[3]"]  # the grid is tested
    failed = "NN1@width=32,lr=0.02"
    faults = ["--set", f"faults.fail_networks=['1/{failed}']", "--set", "faults.fail_once=true"]
    api = {"PREFECT_API_URL": shared_api}
    r = run_cli(*args, *faults, env=api)
    assert r.returncode == 1, r.stderr  # trial 1 failed
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    assert f"trial-001/train/{failed}" in r.stdout + r.stderr
    # one Zarr group per kernel per trial (and the data's), whatever the number of grid points
    for k in ("000", "001"):
        groups = sorted(
            str(p.parent.relative_to(run / "trials" / k))
            for p in (run / "trials" / k).rglob("zarr.json")
            if p.parent.name.endswith(".zarr")
        )
        assert groups == ["data.zarr"] + [f"gram/{g}.zarr" for g in ("K1", "NTKB1", "NTKJ1")]
    assert not (run / f"trials/001/items/{failed}.json").exists()
    assert (run / "trials/001/items/NN1@width=16,lr=0.02.json").exists()  # a sibling point
    before = _mtimes(run, "trials/*/items/*.json") | _mtimes(run, "trials/*/gram/*/zarr.json")
    before |= _mtimes(run, "trials/*/nets/*") | _mtimes(run, "trials/*/data.zarr/zarr.json")

    r = run_cli(
        *args, *faults, env=api
    )  # the same run: only the failed grid point (and its theory) runs
    assert r.returncode == 0, r.stderr
    after = _mtimes(run, "trials/*/items/*.json") | _mtimes(run, "trials/*/gram/*/zarr.json")
    after |= _mtimes(run, "trials/*/nets/*") | _mtimes(run, "trials/*/data.zarr/zarr.json")
    changed = sorted(p for p in after if before.get(p) != after[p])
    tag = failed.removeprefix("NN1")
    lin = [f"LIN1{v}{tag}" for v in ("", "-emp", "-inf", "-sgd", "-after")]
    assert changed == sorted(
        [f"trials/001/items/{m}.json" for m in (failed, *lin)]
        + [
            f"trials/001/nets/{failed}{x}"
            for x in (".npz", "_curve.json", "_ntk0.npz", "_ntkT.npz")
        ]
        + [f"trials/001/nets/{f}{tag}.npz" for f in ("LIN1", "LIN1-after")]
    ), changed
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["sweep"]) == {"width", "lr"} and "NN1@w32" in summary["sweep"]["lr"]["lines"]
    assert set(summary["verdict"]) == {s for s in summary["theory"]}
    assert (run / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    md = (run / "report.md").read_text()
    assert md.index("## Verdict") < md.index("## Test RMSE per method")
    assert "### networks.lr" in md and "### networks.width" in md
    sweep = md[md.index("## Gap to the linearized network against each varied setting") :]
    rows = [ln for ln in sweep[: sweep.index("sweep.png")].splitlines() if ln.startswith("| ")]
    assert rows and not any("±" in ln for ln in rows)
    assert all(lo >= 0 for ln in rows for lo, _ in _intervals(ln))

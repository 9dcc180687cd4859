"""The verdict in one currency (prediction gaps), its intervals, and the NN ↔ kernel-regression
gap recomputed from the store by a plain solve."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from scipy.special import stdtrit

from ntkflow import report, trial
from ntkflow.config.presets import load_config
from ntkflow.figures import verdict_png
from ntkflow.intervals import positive_interval
from ntkflow.kernels import kernel
from ntkflow.markdown_verdict import verdict_markdown
from ntkflow.names import NetSpec
from ntkflow.store import Store
from ntkflow.verdict import fmt_gap, verdict

SPEC = NetSpec(depth=1, width=512, lr=0.02, epochs=300, batch_size=8, parameterization="ntkj")
SIDES = {"kernel": "NTKJ1", "inf": "LIN1-inf", "flow": "LIN1", "sgd": "LIN1-sgd"}
ONE_NET = ["networks.depths=[1]", "networks.epochs=[3]"]
METHODS = ["NN1", "LIN1", "LIN1-inf", "LIN1-sgd", "NTKJ1"]


def _fixture(gaps: dict[str, float], trials: int = 6, shift: float = 0.0) -> pd.DataFrame:
    """Results of ``trials`` trials: NN1 with its gap to NTKJ1 (``gaps["kernel"]``, relative,
    ± 10% noise) and the LIN rows with theirs; NTKJ1's RMSE is NN1's − ``shift``."""
    rng = np.random.default_rng(0)
    rows = []
    for k in range(trials):
        nn = 1.0 + 0.05 * rng.standard_normal()
        noisy = {s: nn * g * (1 + 0.1 * rng.standard_normal()) for s, g in gaps.items()}
        rows += [
            {"trial": k, "method": "NN1", "rmse": nn, "status": "ok"}
            | {"rmse_vs_kernel": noisy["kernel"], "kernel_compared": "NTKJ1"},
            {"trial": k, "method": "NTKJ1", "rmse": nn - shift, "status": "ok"},
        ]
        for side in ("inf", "flow", "sgd"):
            rows.append(
                {"trial": k, "method": SIDES[side], "rmse": nn, "status": "ok"}
                | {"rmse_vs_network": noisy[side]}
            )
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    "gaps, supports, words",
    [
        ({"kernel": 0.02, "inf": 0.3, "flow": 0.4, "sgd": 0.5}, "kernel", "most like kernel"),
        ({"kernel": 0.5, "inf": 0.4, "flow": 0.3, "sgd": 0.02}, "linearization", "more like its"),
        ({"kernel": 0.3, "inf": 0.3, "flow": 0.31, "sgd": 0.29}, "tied", "do not separate"),
    ],
)
def test_the_sentence_follows_the_gaps_intervals(gaps, supports, words):
    # the paper's RMSE difference points the other way (large) and must not change the outcome
    (v,) = verdict(_fixture(gaps, shift=0.3), [SPEC], METHODS).values()
    assert v["supports"] == supports and words in v["sentence"]
    assert set(v["gaps"]) == set(SIDES) and v["n"] == 6
    for side, g in v["gaps"].items():
        assert g["predictor"] == SIDES[side]
        assert 0 <= g["ci_low"] <= g["geo_mean"] <= g["ci_high"]
        r = g["relative"]  # the same interval, in units of the network's mean RMSE
        assert r["ci_low"] * v["nn_rmse"] == pytest.approx(g["ci_low"], rel=1e-12)
    # the sentence quotes each side it names exactly as the table prints it
    for side in v["closest"] + ["kernel"]:
        assert f"{SIDES[side]} {fmt_gap(v['gaps'][side])}" in v["sentence"]
    # the closest sides: not separated from the smallest, every other side is
    best = min(v["gaps"].values(), key=lambda g: g["geo_mean"])
    for side, g in v["gaps"].items():
        assert (side in v["closest"]) == (g is best or g["ci_low"] <= best["ci_high"])
    assert v["paper"]["NTKJ1"]["ci_low"] > 0  # kept, labelled, and not used by the sentence
    one = verdict(_fixture(gaps).query("trial == 0"), [SPEC], METHODS)
    assert one["NN1"]["supports"] == "undecided"
    no_kernel = verdict(_fixture(gaps).drop(columns="rmse_vs_kernel"), [SPEC], METHODS)
    assert no_kernel["NN1"]["supports"] == "undecided"


def test_report_and_figure_never_show_a_gap_below_zero():
    gaps = {"kernel": 0.02, "inf": 0.01, "flow": 0.5, "sgd": 0.02}
    df = _fixture(gaps, trials=3)
    df.loc[df.method == "LIN1-sgd", "rmse_vs_network"] = [1e-4, 1e-4, 0.3]  # t on values < 0
    v = verdict(df, [SPEC], METHODS)
    lines = verdict_markdown({"verdict": v})
    gap_rows = [ln for ln in lines if ln.startswith("| NN1 | 3 |")]
    assert len(gap_rows) == 4
    for row in gap_rows:
        assert not re.search(r"-\d", row), row
    assert "t interval on the log" in "\n".join(lines)
    assert verdict_png(v)[:4] == b"\x89PNG"


def test_positive_interval():
    v = np.array([1e-4, 1e-4, 0.3])
    plain = v.mean() - stdtrit(2, 0.975) * v.std(ddof=1) / np.sqrt(3)
    d = positive_interval(v)
    assert plain < 0 < d["ci_low"] < d["geo_mean"] < d["ci_high"]
    zero = positive_interval([0.0, 0.1, 0.2])  # no log: the t interval clipped at 0
    assert zero["ci_low"] == 0.0 and zero["geo_mean"] == 0.0 and zero["ci_high"] > 0.1
    with pytest.raises(ValueError, match="negative"):
        positive_interval([-1.0, 1.0])
    # exact for log-normal values: coverage of the geometric mean at n = 8 is 95%; 4000
    # replicates give a binomial SE of 0.0034, so ±0.017 is 5 SE
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(4000):
        d = positive_interval(np.exp(rng.normal(-2.0, 0.8, 8)))
        hits += d["ci_low"] <= np.exp(-2.0) <= d["ci_high"]
    assert abs(hits / 4000 - 0.95) < 0.017


def test_the_kernel_gap_in_summary_matches_a_plain_solve(tmp_path):
    cfg = load_config("smoke", overrides=["kernels=[NTKJ1]", *ONE_NET])
    store = Store(tmp_path / cfg.run_id)
    for k in range(cfg.trials):
        trial.run_trial(cfg, store, k)
    summary = report.aggregate(cfg, store)
    per_trial = pd.read_parquet(tmp_path / cfg.run_id / "results.parquet").set_index("method")
    ntk = kernel("NTKJ1", formulas="exact")
    gaps = []
    for k in range(cfg.trials):
        d = trial.load_data(store, k)
        res = json.loads((tmp_path / cfg.run_id / f"trials/{k:03d}/result.json").read_text())
        rec = res["methods"]["NTKJ1"]
        x_train, x_test = d.x[d.train], d.x[d.test]
        a = ntk(x_train, x_train) + (rec["ridge"] + rec.get("jitter", 0.0)) * np.eye(len(x_train))
        k_test = ntk(x_test, x_train)
        alpha = np.linalg.solve(a, d.y[d.train])
        with np.load(tmp_path / cfg.run_id / res["methods"]["NN1"]["predictions"]) as z:
            f_nn = z["pred_test"]
        gap = np.sqrt(np.mean((f_nn - k_test @ alpha) ** 2))
        # float64 rounding of two solves: ‖Δα‖ ≤ κ(A)·n·ε·‖α‖, carried through K_test
        kappa = np.linalg.cond(a)
        tol = 10 * len(x_train) * kappa * np.finfo(float).eps * np.linalg.norm(k_test, 2)
        tol *= np.linalg.norm(alpha) / np.sqrt(len(x_test))
        row = per_trial.loc["NN1"].set_index("trial").loc[k]
        assert row["kernel_compared"] == "NTKJ1"
        assert abs(row["rmse_vs_kernel"] - gap) <= tol, (gap, row["rmse_vs_kernel"], tol)
        gaps.append(gap)
    g = summary["verdict"]["NN1"]["gaps"]["kernel"]
    assert g["predictor"] == "NTKJ1" and g["n"] == cfg.trials
    assert g["geo_mean"] == pytest.approx(np.exp(np.mean(np.log(gaps))), rel=1e-9)

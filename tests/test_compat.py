"""A run folder written by an earlier version (tests/data/run-f558695.tar.gz: the smoke preset,
2 trials, kernels NTKB1 and K1, one network, written by commit f558695 before the trial/
package) is reused by this code: every item whose key is unchanged is reused as it is, byte for
byte, and every item whose key this code changes on purpose (a new code version of its modules)
is recomputed under the new key, never misread; the numbers do not change. Methods added since
are computed beside them: LIN1-after fails, naming why, when the old network is reused (it has
no trained kernel Θ̂_T), and is computed when the network is recomputed.

Since keys cover every module on an item's path (ntkflow.keys), no key of that folder is the
current one: every item is recomputed from the old folder's data, to the same numbers."""

import json
import tarfile
from pathlib import Path

import pytest
import yaml

from ntkflow import report, trial
from ntkflow.config import validate
from ntkflow.names import parse_method
from ntkflow.store import Store

FIXTURE = Path(__file__).parent / "data" / "run-f558695.tar.gz"
RUN_ID = "fd33f893ffc6"


def _tolerance(method: str) -> float:
    """How closely a recomputation on this machine must match the fixture's number. Kernels:
    float64 NumPy/SciPy, the same to rounding (1e-12; they match exactly here). Networks and
    their linearizations: float32 torch training on the CPU, whose kernels sum in an order that
    depends on the CPU's vector instructions, so another machine agrees to float32 rounding
    (eps 1.2e-7) amplified over the SGD steps, not to the bit: 1e-5, ~100 float32 ulps
    (measured here against the fixture's machine: NN1 1.4e-7, LIN1-inf 7.5e-9)."""
    return 1e-5 if parse_method(method).kind in ("network", "linearized") else 1e-12


@pytest.mark.parametrize("drop_result", [False, True], ids=["as-written", "without-result"])
def test_a_run_folder_of_the_previous_layout_is_reused(tmp_path, drop_result):
    """``without-result``: every item goes through its own reuse check, not the trial's."""
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    run_dir = tmp_path / RUN_ID
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    raw.pop("provenance")
    cfg, store = validate(raw), Store(run_dir)
    assert cfg.run_id == RUN_ID
    old = {k: json.loads((run_dir / f"trials/{k:03d}/result.json").read_text()) for k in (0, 1)}
    if drop_result:
        for k in (0, 1):
            (run_dir / f"trials/{k:03d}/result.json").unlink()
    before = {p: p.read_bytes() for p in run_dir.glob("trials/*/items/*.json")}
    for k in (0, 1):
        t = trial.Trial(cfg, store, k)
        same = {m: rec["key"] == trial.method_key(t, m) for m, rec in old[k]["methods"].items()}
        new = set(cfg.methods) - set(same)
        assert set(same) < set(cfg.methods) and new == {"LIN1-after"}
        res = trial.run_trial(cfg, store, k)["methods"]
        after = res["LIN1-after"]
        if same["NN1"]:
            assert after["status"] == "failed" and "no stored trained kernel" in after["error"]
        else:
            assert after.get("status", "ok") == "ok" and after["rmse"] is not None
        for m, rec in res.items():
            if m in new:
                continue
            was = old[k]["methods"][m]
            if same[m]:  # reused as it was: the same record, byte for byte
                assert rec == was
                path = run_dir / f"trials/{k:03d}/items/{m}.json"
                assert path.read_bytes() == before[path]
            else:  # its code changed: recomputed under the current key, the same numbers
                assert rec["key"] == trial.method_key(t, m) != was["key"]
                assert rec["rmse"] == pytest.approx(was["rmse"], rel=_tolerance(m))
        assert not any(same.values())  # the keys of f558695 hash fewer modules than ours
    assert report.verify(cfg, store) == {0: [], 1: []}

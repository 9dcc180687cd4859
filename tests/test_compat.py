"""A run folder written by an earlier version (tests/data/run-f558695.tar.gz: the smoke preset,
2 trials, kernels NTKB1 and K1, one network, written by commit f558695 before the trial/
package) is reused by this code: every item whose key is unchanged is reused as it is, and any
item whose key this code changes on purpose is recomputed, never misread."""

import json
import tarfile
from pathlib import Path

import yaml

from ntkflow import report, trial
from ntkflow.config import validate
from ntkflow.store import Store

FIXTURE = Path(__file__).parent / "data" / "run-f558695.tar.gz"
RUN_ID = "fd33f893ffc6"


def _bytes(root: Path) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_run_folder_of_the_previous_layout_is_reused(tmp_path):
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    run_dir = tmp_path / RUN_ID
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    raw.pop("provenance")
    cfg = validate(raw)
    assert cfg.run_id == RUN_ID
    store = Store(run_dir)
    old = {k: json.loads((run_dir / f"trials/{k:03d}/result.json").read_text()) for k in (0, 1)}
    same_key = {
        (k, m): rec["key"] == trial.method_key(trial.Trial(cfg, store, k), m)
        for k, res in old.items()
        for m, rec in res["methods"].items()
    }
    assert set(m for _, m in same_key) == set(cfg.methods)
    before = _bytes(run_dir / "trials")

    for k in (0, 1):
        res = trial.run_trial(cfg, store, k)
        for m, rec in res["methods"].items():
            item = Path(f"{k:03d}/items/{m}.json")
            if same_key[k, m]:  # reused as it was: the same record, byte for byte
                assert rec == old[k]["methods"][m]
                assert (run_dir / "trials" / item).read_bytes() == before[item]
            else:  # a key changed on purpose: recomputed under the current key
                assert rec["key"] == trial.method_key(trial.Trial(cfg, store, k), m)
    after = _bytes(run_dir / "trials")
    if all(same_key.values()):  # nothing to recompute: no artifact was rewritten
        assert {p: b for p, b in after.items() if "lease" not in p.parts} == {
            p: b for p, b in before.items() if "lease" not in p.parts
        }
    assert report.verify(cfg, store) == {0: [], 1: []}


def test_items_of_the_previous_layout_are_reused_one_by_one(tmp_path):
    """Without result.json every item goes through the reuse check of its own item: none is
    recomputed, and the rebuilt result holds the same records."""
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    run_dir = tmp_path / RUN_ID
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    raw.pop("provenance")
    cfg, store = validate(raw), Store(run_dir)
    t = run_dir / "trials/001"
    old = json.loads((t / "result.json").read_text())
    (t / "result.json").unlink()
    items = {p.name: p.read_bytes() for p in (t / "items").iterdir()}
    assert all(
        rec["key"] == trial.method_key(trial.Trial(cfg, store, 1), m)
        for m, rec in old["methods"].items()
    ), "the fixture's keys changed: this code recomputes them (see the test above)"
    res = trial.run_trial(cfg, store, 1)
    assert res["methods"] == old["methods"] and res["manifest"] == old["manifest"]
    assert {p.name: p.read_bytes() for p in (t / "items").iterdir()} == items

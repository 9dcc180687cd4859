"""One trial against the artifact store: reuse, verification, recomputation, blockwise solves."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ntkflow import report, trial
from ntkflow.config import load_config
from ntkflow.store import Store

KERNELS_ONLY = ["networks.enabled=false", "kernels=[NTKB1, NTKJ2, K1]"]


def _cfg(*extra):
    return load_config("smoke", overrides=[*KERNELS_ONLY, *extra])


def test_memory_store_end_to_end():
    cfg = _cfg()
    store = Store("memory://ntkflow-e2e/run")
    for k in range(cfg.trials):
        trial.run_trial(cfg, store, k)
    summary = report.aggregate(cfg, store)
    assert summary["failed_trials"] == []
    assert all(summary["methods"][m]["n"] == 2 for m in cfg.methods)
    assert store.read_bytes("boxplot.png")[:4] == b"\x89PNG"
    assert set(store.listdir("trials/000/gram")) == {"NTKB1.zarr", "NTKJ2.zarr", "K1.zarr"}


def test_blockwise_solve_matches_in_memory(tmp_path):
    mem = trial.run_trial(_cfg(), Store(tmp_path / "a"), 0)["methods"]
    blk = trial.run_trial(
        _cfg("compute.memory_budget_gb=1e-9", "compute.gram_block=32"), Store(tmp_path / "b"), 0
    )["methods"]
    for name in ("NTKB1", "NTKJ2", "K1"):
        assert blk[name]["solver"] == "blockwise-cholesky" and mem[name]["solver"] == "cholesky"
        cond = mem[name]["condition_estimate"]
        # both solves are backward stable: the RMSEs agree to ~cond·eps (relative)
        tol = 100 * cond * np.finfo(float).eps
        assert tol < 1e-3
        assert blk[name]["rmse"] == pytest.approx(mem[name]["rmse"], rel=tol)


def _flip_bytes(path: Path, at: int = 100) -> None:
    raw = bytearray(path.read_bytes())
    raw[at : at + 8] = bytes(255 - b for b in raw[at : at + 8])
    path.write_bytes(bytes(raw))


def test_corrupted_artifacts_are_detected_and_recomputed(tmp_path, caplog):
    cfg = _cfg()
    store = Store(tmp_path)
    for k in range(cfg.trials):
        trial.run_trial(cfg, store, k)
    before = report.aggregate(cfg, store)["methods"]
    t0 = tmp_path / "trials/000"

    # a truncated result.json, a corrupted Gram chunk (with its item record gone) and an
    # edited data array: all detected, none used
    res = t0 / "result.json"
    res.write_bytes(res.read_bytes()[:200])
    (t0 / "items/NTKB1.json").unlink()
    chunk = t0 / "gram/NTKB1.zarr/train_train/c/0/0"  # Zarr v3 chunk key of block (0, 0)
    _flip_bytes(chunk)
    assert trial.load_result(store, 0) is None
    with caplog.at_level("WARNING"):
        again = trial.run_trial(cfg, store, 0)
    assert "checksum mismatch" in caplog.text
    assert again["methods"]["NTKB1"]["gram_reused"] is False
    assert trial.load_result(store, 0) is not None
    after = report.aggregate(cfg, store)["methods"]
    assert after == before  # recomputed bit for bit: same summary

    y_chunks = [p for p in (t0 / "data.zarr/y").rglob("*") if p.is_file() and p.name != "zarr.json"]
    _flip_bytes(y_chunks[0], at=0)
    with pytest.raises(trial.CorruptArtifact):
        trial.load_data(store, 0)
    trial.ensure_data(cfg, store, 0)  # resimulated from the trial's seed
    np.testing.assert_array_equal(trial.load_data(store, 0).y, trial.load_data(store, 0).y)


def test_rerun_reuses_verified_items(tmp_path):
    cfg = _cfg()
    store = Store(tmp_path)
    first = trial.run_trial(cfg, store, 1)
    (tmp_path / "trials/001/result.json").unlink()
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "trials/001/items").iterdir()}
    second = trial.run_trial(cfg, store, 1)
    assert {
        p.name: p.stat().st_mtime_ns for p in (tmp_path / "trials/001/items").iterdir()
    } == mtimes
    assert second["methods"] == first["methods"]


WRITER = """
import sys
from ntkflow.store import Store
Store(sys.argv[1]).write_bytes("big.bin", b"x" * (400 * 2**20))
print("done")
"""


def test_writer_killed_mid_write_leaves_nothing_that_verifies(tmp_path):
    store = Store(tmp_path)
    store.write_json("big.bin", {"old": True}, checksum=True)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir()):
        assert time.monotonic() < deadline and proc.poll() is None, "writer never started"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # the target is the old record, intact; the partial temporary file is never read as it
    assert store.read_json("big.bin", verify=True) == {"old": True}
    assert json.loads(store.read_bytes("big.bin"))["old"] is True

"""The artifact store on a real S3 API (moto_server on 127.0.0.1): the whole command end to end,
concurrent launches, SIGKILL and rerun, leftovers of dead writers. The unit-level store, lease and
corruption tests run on S3 too (parametrized in test_gram_store, test_concurrency and
test_trial_store)."""

import subprocess
import sys
import time

import numpy as np
import pytest
from launch import SMALL, kill_tree, launch, reference_table

from ntkflow import report, trial
from ntkflow.config.presets import load_config
from ntkflow.store import Store
from ntkflow.trial import manifest

SETS = [*SMALL, "compute.n_workers=2"]
ARGS = ["run", "--preset", "smoke", "--kernels-only", *[a for s in SETS for a in ("--set", s)]]
CFG = load_config("smoke", overrides=[*SETS, "networks.enabled=false"])


@pytest.fixture
def reference(once):
    """The kernels' numbers S3 must give: those of the same trials on a local folder, from the
    table the Slurm tests use too (the networks they add change no kernel's numbers)."""
    table = reference_table(once, SMALL)
    return {m: table[m] for m in CFG.methods}


def _ntkflow(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def _leftovers(store: Store) -> list[str]:
    return [f for f in store.files("") if ".tmp-" in f or ".trash-" in f]


@pytest.mark.slow
def test_two_launches_then_rerun_verify_report_on_s3(tmp_path, s3_root, reference, shared_api):
    procs = [
        launch(
            [*ARGS, "--out", s3_root],
            tmp_path / f"launch-{i}.log",
            tmp_path / f"home-{i}",
            api=shared_api,
        )
        for i in range(2)
    ]
    for p in procs:
        p.wait(timeout=600)
    logs = [(tmp_path / f"launch-{i}.log").read_text() for i in range(2)]
    assert [p.returncode for p in procs] == [0, 0], logs
    run = Store(f"{s3_root}/{CFG.run_id}")
    assert run.read_json("summary.json")["methods"] == reference  # digit for digit
    tables = [log[log.index("┏") : log.index("└")] for log in logs]
    assert tables[0] == tables[1]

    items = {f for f in run.files("trials") if "/items/" in f}
    again = launch(
        [*ARGS, "--out", s3_root], tmp_path / "rerun.log", tmp_path / "home-0", api=shared_api
    )
    again.wait(timeout=600)
    log = (tmp_path / "rerun.log").read_text()
    assert again.returncode == 0 and f"{CFG.trials} trial(s), 0 to compute" in log, log
    assert {f for f in run.files("trials") if "/items/" in f} == items

    res = _ntkflow("verify", run.url)
    assert res.returncode == 0, res.stderr
    assert f"{CFG.trials} of {CFG.trials} trial(s) verified" in res.stderr
    res = _ntkflow("report", run.url)
    assert res.returncode == 0, res.stderr
    assert run.read_json("summary.json")["methods"] == reference
    assert not _leftovers(run)


@pytest.mark.slow
def test_sigkill_then_rerun_on_s3_gives_the_uninterrupted_numbers(tmp_path, s3_root, reference):
    run = Store(f"{s3_root}/{CFG.run_id}")
    proc = launch([*ARGS, "--out", s3_root], tmp_path / "kill.log", tmp_path / "home")
    deadline = time.monotonic() + 600
    while proc.poll() is None and not run.exists("trials/000/result.json"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert proc.poll() is None, (tmp_path / "kill.log").read_text()  # killed mid-run
    kill_tree(proc)
    again = launch([*ARGS, "--out", s3_root], tmp_path / "rerun.log", tmp_path / "home")
    again.wait(timeout=600)
    assert again.returncode == 0, (tmp_path / "rerun.log").read_text()
    assert run.read_json("summary.json")["methods"] == reference
    assert report.verify(CFG, run) == {k: [] for k in range(CFG.trials)}


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_temporary_groups_of_dead_writers_are_swept(tmp_path, backend, request, monkeypatch):
    """A `.tmp-*` group (a folder locally, a prefix with no date of its own on S3) older than the
    stale age is removed by the next run of its trial; a young one (a live writer's) is kept."""
    import zarr

    root = tmp_path if backend == "local" else request.getfixturevalue("s3_root")
    store = Store(root)
    cfg = load_config("smoke", overrides=["trials=1", "kernels=[K1]", "networks.enabled=false"])
    trial.run_trial(cfg, store, 0)
    old = "trials/000/gram/.tmp-0123-NTKB1.zarr"
    g = zarr.open_group(store=store.zarr_store(old), mode="w")
    g.create_array("train_train", data=np.ones((4, 4)))
    time.sleep(7)
    young = "trials/000/items/.tmp-4567-K1.json"
    store.write_text(young, "{}")
    age_old, age_young = store.age(old), store.age(young)
    assert age_old is not None and 6 < age_old < 600  # the newest object's age
    # The stale age: the young file's + 5 s. Ages are lower bounds, up to 1 s short on S3
    # (LastModified has whole-second resolution), so the young file looks stale only after
    # 5 - 1 = 4 s more (the rerun's start, seen to take 1.6 s on S3 under load, must not use
    # them up), and the old group, 7 s older, is stale by at least 7 - 1 - 5 = 1 s.
    monkeypatch.setattr(manifest, "STALE_AGE", age_young + 5)
    store.remove("trials/000/result.json")
    trial.run_trial(cfg, store, 0)
    assert not store.files(old) and store.exists(young)

"""Several runs on one store: leases (unit level: local, memory:// and S3) and concurrent
launches of the real `ntkflow run` (end to end)."""

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from ntkflow import lease
from ntkflow.store import Store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["local", "memory", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return Store(tmp_path)
    if request.param == "s3":  # real conditional PUTs (If-None-Match: *) on an S3 API
        return Store(request.getfixturevalue("s3_root"))
    return Store(f"memory://lease-test-{uuid.uuid4().hex}")


def test_create_exclusive_is_create_if_absent(store):
    assert store.create_exclusive("a/x.json", {"n": 1})
    assert not store.create_exclusive("a/x.json", {"n": 2})
    assert store.read_json("a/x.json") == {"n": 1}
    assert store.listdir("a") == ["x.json"]  # no temporary file left


def test_racing_creators_exactly_one_wins(store):
    wins, barrier = [], threading.Barrier(8)

    def create(i):
        barrier.wait()
        if store.create_exclusive("race.json", {"i": i}):
            wins.append(i)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and store.read_json("race.json") == {"i": wins[0]}


def test_a_live_lease_is_exclusive_until_released(store):
    held, holder = lease.try_acquire(store, "L", ttl=30)
    assert held is not None and holder is None
    other, holder = lease.try_acquire(store, "L", ttl=30)
    assert other is None and holder["owner"] == held.record["owner"]
    assert holder["pid"] == os.getpid() and holder["host"] == lease.host_id()
    held.release()
    again, _ = lease.try_acquire(store, "L", ttl=30)
    assert again is not None and again.gen == held.gen + 1
    assert store.listdir("L") == [f"{again.gen:08d}.json"]  # superseded generations removed
    again.release()


def test_heartbeat_keeps_a_short_lease_alive(store):
    # renewed every ttl/4: that must exceed a write's latency (S3 requests take ~0.1-0.3 s here)
    ttl = 3.0 if store.url.startswith("s3://") else 0.6
    with lease.try_acquire(store, "L", ttl=ttl)[0] as held:
        first = held.record["expires"]
        time.sleep(2.5 * ttl)  # alive only because the heartbeat renews it
        assert lease.try_acquire(store, "L", ttl=ttl)[0] is None
        assert store.read_json(held.path)["expires"] > first
    again = lease.try_acquire(store, "L", ttl=ttl)[0]
    assert again is not None
    again.release()


def _foreign(store, gen, expires_in):
    """A lease record of a holder on another host (its process cannot be checked)."""
    now = time.time()
    record = {"owner": "x", "host": "elsewhere", "pid": 1, "expires": now + expires_in, "ttl": 1}
    assert store.create_exclusive(f"L/{gen:08d}.json", record)


def test_expired_lease_is_taken_over_by_exactly_one_of_racing_takers(store):
    _foreign(store, 3, expires_in=-1)
    got, barrier = [], threading.Barrier(6)

    def take():
        barrier.wait()
        held, _ = lease.try_acquire(store, "L", ttl=30)
        if held is not None:
            got.append(held)

    threads = [threading.Thread(target=take) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 1 and got[0].gen == 4
    got[0].release()


def test_a_lease_of_another_host_is_waited_for_until_it_expires(store):
    _foreign(store, 0, expires_in=1.0)
    t0 = time.monotonic()
    held = lease.acquire_or_wait(store, "L", 30, done=lambda: False, poll=0.1)
    waited = time.monotonic() - t0
    assert held is not None and held.gen == 1 and waited > 0.5
    held.release()


def test_waiting_ends_when_the_holder_finishes_the_work(store):
    _foreign(store, 0, expires_in=60)
    finished = threading.Timer(0.5, lambda: store.write_text("done", "1"))
    finished.start()
    assert lease.acquire_or_wait(store, "L", 30, lambda: store.exists("done"), poll=0.1) is None


def test_a_dead_local_holder_is_taken_over_at_once(tmp_path):
    store = Store(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from ntkflow import lease; from ntkflow.store import Store;"
            "lease.try_acquire(Store(sys.argv[1]), 'L', 600)",
            str(tmp_path),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0
    (name,) = store.listdir("L")
    record = store.read_json(f"L/{name}")
    assert record["expires"] > time.time() + 500 and lease.expired(record)  # its pid is gone
    held, holder = lease.try_acquire(store, "L", ttl=600)  # its pid is gone: no 600 s wait
    assert held is not None
    held.release()


def test_a_holder_that_was_taken_over_notices(store):
    held, _ = lease.try_acquire(store, "L", ttl=0.4)
    _foreign(store, held.gen + 1, expires_in=60)
    assert held.lost.wait(5)
    held.release()
    assert store.read_json(f"L/{held.gen + 1:08d}.json")["owner"] == "x"  # left alone


# ---- concurrent launches of the real command ----------------------------------------------------
def _launch_together(tmp_path, n, sets, api):
    from launch import launch, summary

    from ntkflow.config.presets import load_config

    args = ["run", "--preset", "smoke", "--kernels-only", *[a for s in sets for a in ("--set", s)]]
    out = tmp_path / "runs"
    run_dir = out / load_config("smoke", overrides=[*sets, "networks.enabled=false"]).run_id
    procs = [
        launch(
            [*args, "--out", str(out)],
            tmp_path / f"launch-{i}.log",
            tmp_path / f"home-{i}",
            api=api,
        )
        for i in range(n)
    ]
    for p in procs:
        p.wait(timeout=900)
    logs = [(tmp_path / f"launch-{i}.log").read_text() for i in range(n)]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log
        # no trial failed (Dask may still print a traceback when closing a loaded cluster)
        assert "FAILED" not in log and "Finished in state Failed" not in log, log
    first = summary(run_dir)
    trials = first["run"]["trials"]
    assert first["failed_trials"] == [] and all(s["n"] == trials for s in first["methods"].values())
    # every launch printed the same complete table
    tables = [log[log.index("┏") : log.index("└")] for log in logs]
    assert all(t == tables[0] for t in tables)
    elsewhere = [log.count("finished by another run") for log in logs]
    print(f"{n} launches: exit codes 0; trials finished by another run, per launch: {elsewhere}")

    items = {p: p.stat().st_mtime_ns for p in run_dir.glob("trials/*/items/*.json")}
    again = launch([*args, "--out", str(out)], tmp_path / "rerun.log", tmp_path / "home-0", api=api)
    again.wait(timeout=600)
    log = (tmp_path / "rerun.log").read_text()
    assert again.returncode == 0 and f"{trials} trial(s), 0 to compute" in log, log
    assert {p: p.stat().st_mtime_ns for p in run_dir.glob("trials/*/items/*.json")} == items
    assert summary(run_dir)["methods"] == first["methods"]  # bit for bit
    assert not list(run_dir.rglob(".tmp-*")) and not list(run_dir.rglob(".trash-*"))


@pytest.mark.slow
def test_three_launches_at_the_same_moment(tmp_path, shared_api):
    """Every check holds for each of the three launches, so this also proves what two launches
    must do (test_two_launches_at_the_same_moment ran the same checks with two launches of 16
    trials of 800 rows, at more than twice this test's cost)."""
    _launch_together(tmp_path, 3, ["trials=6", "data.n_obs=300"], shared_api)

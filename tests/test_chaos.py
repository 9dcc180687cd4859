"""Chaos: `ntkflow run` SIGKILLed (whole process tree) at random moments, then rerun: the final
summary is bit for bit the one of an uninterrupted run. And a lease left by a killed run is
taken over once it expires."""

import random
import time

import pytest
from launch import kill_tree, launch, n_complete, summary

from ntkflow.config import load_config
from ntkflow.store import Store

pytestmark = pytest.mark.slow

SETS = ["trials=6", "data.n_obs=300", "compute.n_workers=2", "kernels=[NTKB1, NTKJ2, GP1, K1]"]
ARGS = ["run", "--preset", "smoke", "--kernels-only", *[a for s in SETS for a in ("--set", s)]]
RUN_ID = load_config("smoke", overrides=[*SETS, "networks.enabled=false"]).run_id
KILLS = 5


def _run(out, log, home, env=None, timeout=600):
    proc = launch([*ARGS, "--out", str(out)], log, home, env)
    proc.wait(timeout=timeout)
    return proc.returncode, log.read_text()


def test_sigkill_at_random_moments_then_rerun_gives_the_uninterrupted_summary(tmp_path):
    home = tmp_path / "prefect-home"
    # the uninterrupted reference, timing when work starts and ends
    ref_out = tmp_path / "ref"
    t0 = time.monotonic()
    proc = launch([*ARGS, "--out", str(ref_out)], tmp_path / "ref.log", home)
    started = None
    while proc.poll() is None:
        if started is None and (ref_out / RUN_ID / "trials").exists():
            started = time.monotonic() - t0
        time.sleep(0.05)
    ended = time.monotonic() - t0
    assert proc.returncode == 0, (tmp_path / "ref.log").read_text()
    reference = summary(ref_out / RUN_ID)["methods"]

    rng = random.Random(20261124)
    out, run_dir = tmp_path / "chaos", tmp_path / "chaos" / RUN_ID
    report = []
    for i in range(KILLS):
        at = rng.uniform(0.5 * (started or 0), ended)
        proc = launch([*ARGS, "--out", str(out)], tmp_path / f"kill-{i}.log", home)
        deadline = time.monotonic() + at
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        finished = proc.poll() is not None
        killed = kill_tree(proc)
        report.append((i, round(at, 2), finished, killed, n_complete(run_dir)))
        print(
            f"iteration {i}: SIGKILL at {at:.2f} s after launch "
            f"({'it had already finished' if finished else f'{killed} processes'}), "
            f"{n_complete(run_dir)} of 6 trials complete"
        )
    code, log = _run(out, tmp_path / "final.log", home)
    assert code == 0, log
    final = summary(run_dir)
    assert final["failed_trials"] == []
    assert final["methods"] == reference  # bit for bit (JSON floats round-trip exactly)
    assert all(s["n"] == 6 for s in final["methods"].values())
    print("kills (iteration, seconds, had finished, processes killed, trials complete):", report)
    assert any(not r[2] for r in report), "no kill hit a running command"
    from ntkflow import report as rep

    cfg = load_config("smoke", overrides=[*SETS, "networks.enabled=false"])
    assert rep.verify(cfg, Store(run_dir)) == {k: [] for k in range(6)}


def test_lease_of_a_killed_run_is_taken_over_after_it_expires(tmp_path):
    home = tmp_path / "prefect-home"
    out, run_dir = tmp_path / "runs", tmp_path / "runs" / RUN_ID
    ttl = 15.0
    env = {"NTKFLOW_HOST_ID": "host-a"}
    args = [*ARGS, "--set", f"compute.lease_seconds={ttl}", "--set", "data.n_obs=1200"]
    proc = launch([*args, "--out", str(out)], tmp_path / "a.log", home, env)
    store = Store(run_dir)
    held = None
    while proc.poll() is None and held is None:
        for lease_file in run_dir.glob("trials/*/lease/trial/*.json"):
            record = store.read_json(str(lease_file.relative_to(run_dir)))
            if (
                record
                and not record.get("released")
                and not lease_file.parent.parent.parent.joinpath("result.json").exists()
            ):
                held = (lease_file, record)
                break
        time.sleep(0.02)
    assert held is not None, (tmp_path / "a.log").read_text()
    kill_tree(proc)
    killed_at = time.time()
    lease_file, record = held
    trial = lease_file.parents[2]
    assert not (trial / "result.json").exists()
    # another host cannot tell that the holder died: it must wait for the expiry
    proc = launch(
        [*args, "--out", str(out)], tmp_path / "b.log", home, {"NTKFLOW_HOST_ID": "host-b"}
    )
    proc.wait(timeout=600)
    assert proc.returncode == 0, (tmp_path / "b.log").read_text()
    finished_at = time.time()
    assert summary(run_dir)["failed_trials"] == []
    (new,) = (trial / "lease/trial").glob("*.json")
    taken = store.read_json(str(new.relative_to(run_dir)))
    assert taken["host"] == "host-b" and int(new.stem) > int(lease_file.stem)
    assert taken["acquired"] >= record["expires"]  # not before the dead holder's expiry
    assert (trial / "result.json").stat().st_mtime > record["expires"]  # done after the expiry
    print(
        f"lease of host-a (expiry {record['expires'] - killed_at:+.1f} s after the kill) taken "
        f"over by host-b {taken['acquired'] - killed_at:.1f} s after the kill; rerun ended "
        f"{finished_at - killed_at:.1f} s after it"
    )

"""Chaos: `ntkflow run` SIGKILLed (whole process tree) at random moments, then rerun: the final
summary is bit for bit the one of an uninterrupted run. And a lease left by a killed run is
taken over once it expires."""

import json
import random
import time

import pytest
from launch import kill_tree, launch, n_complete, summary

from ntkflow import report as rep
from ntkflow.config.presets import load_config
from ntkflow.store import Store

pytestmark = pytest.mark.slow

SETS = ["trials=4", "data.n_obs=240", "compute.n_workers=2", "kernels=[NTKB1, NTKJ2, GP1, K1]"]
ARGS = ["run", "--preset", "smoke", "--kernels-only", *[a for s in SETS for a in ("--set", s)]]
RUN_ID = load_config("smoke", overrides=[*SETS, "networks.enabled=false"]).run_id
KILLS = 5


def _launch_until(out, log, home, stop, api=None):
    """Launch; poll until ``stop(elapsed since the work started)`` or the command ends."""
    proc = launch([*ARGS, "--out", str(out)], log, home, api=api)
    started = None
    while proc.poll() is None:
        if started is None and (out / RUN_ID / "trials").exists():
            started = time.monotonic()
        if started is not None and stop(time.monotonic() - started):
            break
        time.sleep(0.02)
    return proc, started


# Kill moments as fractions of the reference's work span (first trial folder → last result.json),
# drawn once from a fixed seed: most fall inside the work (< 1), some in the aggregation after it.
_rng = random.Random(20261124)
FRACTIONS = [_rng.uniform(0, 1.2) for _ in range(KILLS)]
assert sum(f < 1 for f in FRACTIONS) >= 3, "most kills must hit a running command"


@pytest.fixture
def reference(once, shared_api):
    """The uninterrupted run: its summary and its work span, computed once per session for every
    xdist worker (``once``: the first one runs it, the others read it), on the shared Prefect
    server (what is killed below is a command with its embedded server, as a user runs it)."""

    def build(shared):
        ref, last = shared / "ref", [0.0]

        def watch(t):
            if n_complete(ref / RUN_ID) < 4:
                last[0] = t
            return False

        proc, _ = _launch_until(ref, shared / "ref.log", shared / "home", watch, shared_api)
        assert proc.returncode == 0, (shared / "ref.log").read_text()
        payload = {"work": last[0], "methods": summary(ref / RUN_ID)["methods"]}
        (shared / "reference.json").write_text(json.dumps(payload))

    return json.loads((once("chaos-reference", ARGS, build) / "reference.json").read_text())


@pytest.mark.parametrize("i", range(KILLS))
def test_sigkill_at_random_moments_then_rerun_gives_the_uninterrupted_summary(
    tmp_path, reference, shared_api, i
):
    """Each kill hits a command with its embedded server, as a user runs it. The first rerun
    is a user's rerun too, on the embedded server of the killed command's Prefect home (as in
    tests/test_s3.py); the others report to the shared server, which saves booting one: their
    subject is the numbers, which no Prefect API computes."""
    home = tmp_path / "prefect-home"
    work, fraction = reference["work"], FRACTIONS[i]
    at = fraction * work
    out = tmp_path / f"chaos-{i}"
    run_dir = out / RUN_ID

    def stop(t):  # a kill meant for the work span also fires once the last trial is done (the
        # command then still aggregates for seconds), so a faster run than the reference's
        # cannot slip past it
        return t >= at or (fraction < 1 and n_complete(run_dir) == 4)

    proc, _ = _launch_until(out, tmp_path / f"kill-{i}.log", home, stop)
    finished = proc.poll() is not None
    killed = kill_tree(proc)
    done_at_kill = n_complete(run_dir)
    api = shared_api if i else None
    proc = launch([*ARGS, "--out", str(out)], tmp_path / f"rerun-{i}.log", home, api=api)
    proc.wait(timeout=600)
    assert proc.returncode == 0, (tmp_path / f"rerun-{i}.log").read_text()
    final = summary(run_dir)
    identical = final["methods"] == reference["methods"]  # bit for bit (JSON floats round-trip)
    print(
        f"iteration {i}: SIGKILL {at:.2f} s after the work started (span {work:.1f} s) "
        f"({'after it finished' if finished else f'{killed} processes'}), "
        f"{done_at_kill} of 4 trials complete; rerun: exit 0, summary identical: {identical}"
    )
    if fraction < 1:  # inside the work span: the command was still running
        assert not finished and killed > 0
    assert identical and final["failed_trials"] == []
    cfg = load_config("smoke", overrides=[*SETS, "networks.enabled=false"])
    assert rep.verify(cfg, Store(run_dir)) == {k: [] for k in range(4)}


def test_lease_of_a_killed_run_is_taken_over_after_it_expires(tmp_path, shared_api):
    home = tmp_path / "prefect-home"
    big = [*SETS, "data.n_obs=1200", "networks.enabled=false"]  # trials long enough to catch
    out, run_dir = tmp_path / "runs", tmp_path / "runs" / load_config("smoke", overrides=big).run_id
    ttl = 15.0
    env = {"NTKFLOW_HOST_ID": "host-a"}
    args = [*ARGS, "--set", f"compute.lease_seconds={ttl}", "--set", "data.n_obs=1200"]
    proc = launch([*args, "--out", str(out)], tmp_path / "a.log", home, env, api=shared_api)
    store = Store(run_dir)
    held = None
    while proc.poll() is None and held is None:
        for lease_file in run_dir.glob("trials/*/lease/trial/*.json"):
            record = store.read_json(str(lease_file.relative_to(run_dir)))
            if record and not record.get("released"):
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
    env = {"NTKFLOW_HOST_ID": "host-b"}
    proc = launch([*args, "--out", str(out)], tmp_path / "b.log", home, env, api=shared_api)
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

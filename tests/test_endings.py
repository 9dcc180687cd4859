"""Every ending of `ntkflow run` is told as it is: after a signal, a worker lost for good or a
failed aggregation, no flow run or task run of the command is left Running or Pending in the
Prefect API (a real `prefect server`, whose database outlives the command), the console's last
line is ntkflow's own, and a run that submitted no batch job calls no Slurm command."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import servers as S
from launch import survivors

from ntkflow.config.presets import load_config

# one xdist worker, so one `prefect server` (the module's ``api``) for all of them
pytestmark = pytest.mark.xdist_group("endings-server")

ROOT = Path(__file__).resolve().parent.parent
OPEN = {"SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING"}
TRAINING = ["trials=2", "compute.n_workers=2", "networks.epochs=[50000, 50000]"]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with S.prefect_server(tmp_path_factory.mktemp("endings-server")) as url:
        yield url


@pytest.fixture
def fake_slurm(tmp_path):
    """A Slurm client on PATH that records every call (and fails as an unconfigured one does):
    ``(bin folder, record file)``."""
    folder, record = tmp_path / "fake-slurm", tmp_path / "slurm-calls"
    folder.mkdir()
    for name in ("scancel", "squeue", "sbatch", "sinfo"):
        script = folder / name
        script.write_text(
            f'#!/bin/sh\necho "{name} $*" >> {record}\n'
            f'echo "{name}: fatal: Could not establish a configuration source" >&2\nexit 1\n'
        )
        script.chmod(0o755)
    return folder, record


def _env(prefect_home, api, **extra) -> dict:
    return {
        **os.environ,
        "PREFECT_API_URL": api,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **extra,
    }


def _start(tmp_path, env, sets):
    """`ntkflow run --preset smoke` in its own process group (a terminal's foreground job), its
    stdout and stderr read apart."""
    cmd = [sys.executable, "-m", "flows.cli", "run", "--preset", "smoke"]
    cmd += [a for s in sets for a in ("--set", s)] + ["--out", str(tmp_path / "runs")]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    out: list[str] = []
    err: list[str] = []
    readers = [
        threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True),
        threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True),
    ]
    for r in readers:
        r.start()
    return proc, out, err, readers


def _flow_run_ids(api) -> set[str]:
    return {f["id"] for f in S.api_post(api, "flow_runs/filter", {})}


def _runs_since(api, before: set[str]):
    """The flow runs created since ``before`` (those of the one command in between) and their
    task runs."""
    flows = [f for f in S.api_post(api, "flow_runs/filter", {}) if f["id"] not in before]
    body = {"flow_runs": {"id": {"any_": [f["id"] for f in flows]}}}
    return flows, S.api_post(api, "task_runs/filter", body)


def _wait_for_training(api, before, proc, err, timeout=300) -> list[dict]:
    """The command's train task runs once some are Running, asked of the API (``api`` None:
    the embedded one, whose URL the command prints)."""
    deadline = time.monotonic() + timeout
    while True:
        embedded = re.search(r"Prefect API (\S+) \(embedded\)", "".join(err))
        url = api or (embedded and embedded[1])
        _, tasks = _runs_since(url, before) if url else ([], [])
        running = [t for t in tasks if "/train/" in t["name"] and t["state_type"] == "RUNNING"]
        if running:
            return running
        assert proc.poll() is None and time.monotonic() < deadline, "".join(err)[-3000:]
        time.sleep(0.5)


def _workers(proc) -> list[psutil.Process]:
    """The command's Dask worker processes: the children of its forkserver (its child with
    that command line, which its forked workers share: lifecycle.start_cluster)."""
    forkservers = [
        p for p in psutil.Process(proc.pid).children() if "forkserver" in " ".join(p.cmdline())
    ]
    return [w for p in forkservers for w in p.children()]


def _blocks_sigint(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        mask = next(line for line in f if line.startswith("SigBlk:")).split()[1]
    return bool(int(mask, 16) >> (signal.SIGINT - 1) & 1)


def _open(tasks) -> list[tuple[str, str]]:
    return [(t["name"], t["state_type"]) for t in tasks if t["state_type"] in OPEN]


def _finish(proc, readers, timeout=600) -> int:
    rc = proc.wait(timeout=timeout)
    for r in readers:
        r.join(timeout=30)
    return rc


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, embedded",
    [(signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["SIGINT-embedded-API", "SIGTERM-prefect-server"],
)
def test_a_signal_during_training_ends_every_run_of_the_command(
    tmp_path, request, prefect_home, fake_slurm, signum, embedded
):
    """The signal goes to the whole process group (a Ctrl-C in a terminal, a service manager's
    stop): the command exits 128 + signal within seconds and no process it started survives;
    10 s later the parent flow run, its subflow and every task run of the command are
    final (Crashed, saying why), stderr ends with ntkflow's line, and no Slurm command ran
    (a local run, with a Slurm client on PATH). The embedded API's database is read afterwards
    by a `prefect server` on the same Prefect home."""
    folder, record = fake_slurm
    path = f"{folder}{os.pathsep}{os.environ['PATH']}"
    if embedded:  # the command's own API, on the home a server reads afterwards (servers.py)
        env = _env(S.seed_home(tmp_path / "server-home"), None, PATH=path)
        del env["PREFECT_API_URL"]
        api, before = None, set()
    else:
        api = request.getfixturevalue("api")
        env, before = _env(prefect_home, api, PATH=path), _flow_run_ids(api)
    proc, _, err, readers = _start(tmp_path, env, TRAINING)
    try:
        training = _wait_for_training(api, before, proc, err)
        tree = psutil.Process(proc.pid).children(recursive=True)
        dog = [p for p in tree if "flows.watchdog" in " ".join(p.cmdline())]
        workers = _workers(proc)
        assert len(workers) == 2 and all(_blocks_sigint(p.pid) for p in workers)
        t0 = time.monotonic()
        os.killpg(proc.pid, signum)
        assert _finish(proc, readers, timeout=60) == 128 + signum, "".join(err)[-3000:]
        took = time.monotonic() - t0
        assert took < 20, (took, "".join(err)[-3000:])  # within seconds, on a loaded machine
        psutil.wait_procs(dog, timeout=30)  # the watchdog ends after its own clean-up
        # no process the command started (API server, nannies, workers, watchdog) survives
        assert survivors(tree) == []
        time.sleep(10)  # what the UI shows once everything has settled
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    name = signal.Signals(signum).name
    with contextlib.ExitStack() as stack:
        if embedded:
            api = stack.enter_context(S.prefect_server(tmp_path))
        flows, tasks = _runs_since(api, before)
    assert len(flows) == 2  # experiment and its subflow trials
    for f in flows:
        assert f["state_type"] == "CRASHED", f
        assert f["state"]["message"] == f"{name}: interrupted; rerun to resume"
    assert _open(tasks) == []
    crashed = {t["id"] for t in tasks if t["state_type"] == "CRASHED"}
    assert {t["id"] for t in training} <= crashed  # the trainings seen Running
    lines = [line for line in "".join(err).splitlines() if line.strip()]
    assert lines[-1] == f"ntkflow: {name}: interrupted; rerun to resume", lines[-20:]
    assert not record.exists(), record.read_text()  # no scancel, no squeue


@pytest.mark.slow
def test_a_worker_lost_for_good_ends_its_task_run_crashed(tmp_path, api, prefect_home):
    """Every worker dies while training and Dask gives up on those tasks (KilledWorker; no
    retry allowed here): the task runs they were running end Crashed naming it, the trial
    fails, the run is aggregated and both flow runs end Failed; nothing stays Running."""
    env = _env(prefect_home, api, DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="0")
    before = _flow_run_ids(api)
    sets = ["trials=1", "compute.n_workers=2", "networks.epochs=[50000, 50000]"]
    proc, out, err, readers = _start(tmp_path, env, sets)
    try:
        _wait_for_training(api, before, proc, err)
        for p in _workers(proc):
            p.kill()
        assert _finish(proc, readers) == 1, "".join(out + err)[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    flows, tasks = _runs_since(api, before)
    assert [f["state_type"] for f in flows] == ["FAILED", "FAILED"], flows
    assert _open(tasks) == []
    lost = [t for t in tasks if t["state_type"] == "CRASHED"]
    assert lost and all("/train/" in t["name"] for t in lost), [(t["name"]) for t in lost]
    assert all("KilledWorker" in t["state"]["message"] for t in lost), lost
    cfg = load_config("smoke", overrides=sets)
    summary = json.loads((tmp_path / "runs" / cfg.run_id / "summary.json").read_text())
    assert summary["failed_trials"] == [0]
    failed = [line for line in "".join(err).splitlines() if "trial-000 FAILED" in line]
    assert failed and "KilledWorker" in failed[0], "".join(err)[-3000:]  # the cause, named


@pytest.mark.slow
def test_a_failed_aggregation_ends_both_flow_runs_failed(tmp_path, api, prefect_home, run_cli):
    before = _flow_run_ids(api)
    sets = ["trials=1", "compute.n_workers=1", "faults.fail_aggregate=true"]
    args = ["run", "--preset", "smoke", "--kernels-only", "--out", str(tmp_path / "runs")]
    res = run_cli(*args, *[a for s in sets for a in ("--set", s)], env={"PREFECT_API_URL": api})
    assert res.returncode == 1, res.stdout + res.stderr
    assert "injected fault in the aggregation" in res.stderr, res.stderr[-3000:]
    flows, tasks = _runs_since(api, before)
    assert [f["state_type"] for f in flows] == ["FAILED", "FAILED"], flows
    assert _open(tasks) == []
    (agg,) = [t for t in tasks if t["name"] == "aggregate"]
    assert agg["state_type"] == "FAILED"


# ---- Slurm: a run that submitted no batch job calls no Slurm command ---------------------------
WATCHDOG = "flows.watchdog"
COMMAND = """
import sys
from flows import watchdog
from ntkflow.cluster import slurm
import os
watchdog.start()
if sys.argv[1] == "submits":
    slurm.note_submission()  # as a Slurm cluster's start does
print(os.getpid(), slurm.cancel_jobs(), slurm.queued_jobs(), flush=True)
"""


@pytest.mark.parametrize("submits", [False, True], ids=["local", "slurm"])
def test_slurm_is_asked_only_by_a_run_that_submits_jobs(tmp_path, fake_slurm, submits):
    """A local run's cancellations (its own and its watchdog's, after it ends) call no Slurm
    command; once a run submits jobs, both do (the fake client records the calls)."""
    folder, record = fake_slurm
    env = {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}
    res = subprocess.run(
        [sys.executable, "-c", COMMAND, "submits" if submits else "local"],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    pid = res.stdout.split()[0]
    procs = psutil.process_iter(["cmdline"])
    dogs = [p for p in procs if (p.info["cmdline"] or [])[-2:] == [WATCHDOG, pid]]
    psutil.wait_procs(dogs, timeout=60)  # it ends after its clean-up
    calls = record.read_text().splitlines() if record.exists() else []
    if not submits:
        assert res.stdout.split()[1:] == ["None", "None"]
        assert calls == [] and "fatal" not in res.stderr
    else:
        assert "scancel: fatal" in res.stdout  # the command's own cancellation said it failed
        # the command's scancel and squeue, then the watchdog's, once the command is gone
        assert [c.split()[0] for c in calls[:3]] == ["scancel", "squeue", "scancel"], calls

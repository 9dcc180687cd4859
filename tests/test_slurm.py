"""`ntkflow run` on a real single-node Slurm (slurmctld + slurmd with two fake GPUs, started
here by tests/servers.py): the shipped GPU spec with only site fields changed, jobs Slurm refuses,
jobs that never start, signals. Every test ends with nothing left in the queue."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from launch import SMALL, launch, reference_table
from servers import slurm_spec as _spec

from ntkflow.cluster.slurm import job_name
from ntkflow.config.presets import load_config

ROOT = Path(__file__).resolve().parent.parent
# every Slurm test in one xdist worker (one private Slurm; the node has few CPUs)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]

SETS = SMALL  # the S3 tests share its reference table
ARGS = ["run", "--preset", "smoke", *[a for s in SETS for a in ("--set", s)]]
CFG = load_config("smoke", overrides=SETS)


def _queue() -> list[str]:
    res = subprocess.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True)
    return res.stdout.split("\n")[:-1]


def _queue_empties(timeout: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := _queue()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def test_the_shipped_gpu_spec_runs_on_slurm_with_the_local_numbers(
    slurm_env, tmp_path, once, shared_api
):
    spec = _spec(tmp_path)
    log = tmp_path / "run.log"
    args = [*ARGS, "--cluster", str(spec), "--out", str(tmp_path / "runs")]
    proc = launch(args, log, tmp_path, api=shared_api)
    proc.wait(timeout=600)
    out = log.read_text()
    assert proc.returncode == 0, out
    assert _queue_empties() == []
    summary = json.loads((tmp_path / "runs" / CFG.run_id / "summary.json").read_text())
    reference = reference_table(once, SETS)  # the same numbers as a local computation
    assert summary["failed_trials"] == []
    for method, stats in reference.items():
        assert summary["methods"][method]["mean_rmse"] == pytest.approx(
            stats["mean_rmse"], rel=1e-9
        ), method
    # each job held one GPU of the node: Slurm set CUDA_VISIBLE_DEVICES for it
    visible = {
        line.split("=", 1)[1]
        for f in (tmp_path / "spec-logs").glob("*.out")
        for line in f.read_text().splitlines()
        if line.startswith("GPU-VISIBLE=")
    }
    assert visible and visible <= {"0", "1"}, visible
    scripts = list((tmp_path / "spec-logs").glob("*"))
    assert scripts, "no job wrote a log"

    # nothing to compute: no job is submitted (no cluster starts), the logs stay as they were
    logs = sorted(p.name for p in (tmp_path / "spec-logs").iterdir())
    again = launch(args, tmp_path / "re.log", tmp_path, api=shared_api)
    again.wait(timeout=300)
    assert again.returncode == 0 and "0 to compute" in (tmp_path / "re.log").read_text()
    assert sorted(p.name for p in (tmp_path / "spec-logs").iterdir()) == logs


def test_a_job_slurm_refuses_fails_the_run_at_once_with_sbatchs_message(
    slurm_env, tmp_path, shared_api
):
    spec = _spec(tmp_path, job_extra_directives=["--gres=gpux:1"])
    args = [*ARGS, "--cluster", str(spec), "--out", str(tmp_path / "runs")]
    proc = launch(args, tmp_path / "l", tmp_path, api=shared_api)
    proc.wait(timeout=300)
    out = (tmp_path / "l").read_text()
    assert proc.returncode == 2, out
    assert "Invalid generic resource (gres) specification" in out
    assert "Traceback" not in out
    assert _queue() == []


def test_a_job_still_pending_after_the_start_timeout_stops_the_run(slurm_env, tmp_path, shared_api):
    spec = _spec(tmp_path, job_extra_directives=["--gres=gpu:1", "--begin=now+3600"])
    args = [*ARGS, "--set", "compute.start_timeout=8", "--cluster", str(spec)]
    proc = launch(
        [*args, "--out", str(tmp_path / "runs")], tmp_path / "l", tmp_path, api=shared_api
    )
    proc.wait(timeout=300)
    out = (tmp_path / "l").read_text()
    assert proc.returncode == 2, out
    assert "compute.start_timeout" in out and "PENDING (BeginTime)" in out, out
    assert _queue_empties(10) == []


def test_sigterm_cancels_every_job_of_the_run_before_it_exits(slurm_env, tmp_path):
    spec = _spec(tmp_path)
    sets = ["--set", "networks.epochs=[5000]"]  # still training when the signal comes
    proc = launch(
        [*ARGS, *sets, "--cluster", str(spec), "--out", str(tmp_path / "runs")],
        tmp_path / "l",
        tmp_path,
    )
    deadline = time.monotonic() + 300
    while not list((tmp_path / "runs").glob("*/trials/*/items/K1.json")):  # kernels done
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "l").read_text()
        time.sleep(0.5)
    time.sleep(3)  # training now (5000 epochs: a minute)
    assert [j for j in _queue() if "RUNNING" in j]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    # cancelled by the command itself (without it: RUNNING for minutes); slurmd on a loaded
    # 2-core machine takes seconds to end a job (KillWait=3 here)
    assert _queue_empties(30) == [], (tmp_path / "l").read_text()[-3000:]
    done = list((tmp_path / "runs").glob("*/trials/*/items/NN*.json"))
    time.sleep(5)
    assert list((tmp_path / "runs").glob("*/trials/*/items/NN*.json")) == done  # no training


def test_a_busy_worker_cancelled_by_scancel_is_replaced_with_the_same_numbers(
    slurm_env, tmp_path, once, shared_api
):
    spec = _spec(tmp_path)
    spec.write_text(spec.read_text().replace("maximum: 2", "maximum: 1"))  # one job at a time
    sets = [*SETS, "networks.epochs=[600]"]
    args = ["run", "--preset", "smoke", *[a for s in sets for a in ("--set", s)]]
    args += ["--cluster", str(spec), "--out", str(tmp_path / "runs")]
    proc = launch(args, tmp_path / "l", tmp_path, api=shared_api)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "runs").glob("*/trials/*/items/K1.json")):
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "l").read_text()
        time.sleep(0.5)
    time.sleep(2)  # training
    (job,) = [j.split()[0] for j in _queue() if "RUNNING" in j]
    subprocess.run(["scancel", job], check=True)
    proc.wait(timeout=600)
    out = (tmp_path / "l").read_text()
    assert proc.returncode == 0, out
    jobs = {p.stem.rsplit("-", 1)[1] for p in (tmp_path / "spec-logs").glob("*.out")}
    assert len(jobs) >= 2 and job in jobs, jobs  # the cancelled job and its replacement
    summary = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    assert summary["failed_trials"] == []
    for method, stats in reference_table(once, sets).items():
        assert summary["methods"][method]["mean_rmse"] == pytest.approx(
            stats["mean_rmse"], rel=1e-9
        ), method
    assert _queue_empties() == []


def test_sigkill_of_the_command_cancels_its_jobs_through_the_watchdog(slurm_env, tmp_path):
    spec = _spec(tmp_path)
    sets = ["--set", "networks.epochs=[5000]"]
    proc = launch(
        [*ARGS, *sets, "--cluster", str(spec), "--out", str(tmp_path / "runs")],
        tmp_path / "l",
        tmp_path,
    )
    deadline = time.monotonic() + 300
    while not [j for j in _queue() if "RUNNING" in j]:
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "l").read_text()
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)  # no handler runs: only the watchdog is left to clean up
    proc.wait(timeout=30)
    assert _queue_empties(15) == []


# `ntkflow run` as far as signals go: its watchdog, its handler, a Slurm cluster's start (which
# notes that the run submits jobs), then it waits for a signal
COMMAND = """
import sys
from flows import signals, watchdog
from ntkflow.cluster import slurm
signals.exit_on_signals(spare=watchdog.start().pid)
slurm.note_submission()
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_job_submitted_after_the_command_is_gone_is_cancelled_by_its_watchdog(
    slurm_env, tmp_path, signum
):
    """Dask's adaptive scaling submits from its own thread, also while the signal handler cancels:
    a submission in flight when the command ends lands after its scancel (seen as a job RUNNING
    after the SIGTERM test). The watchdog, spared by the handler, cancels until none is left."""
    cmd = subprocess.Popen(
        [sys.executable, "-c", COMMAND],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert cmd.stdout.readline() == "ready\n"
        (dog,) = psutil.Process(cmd.pid).children()
        time.sleep(1)  # the watchdog watches
        cmd.send_signal(signum)
        assert cmd.wait(timeout=60) in (128 + signum, -signal.SIGKILL)
        time.sleep(2)  # after the watchdog's first scancel
        sbatch = ["sbatch", "-J", job_name(cmd.pid), "-o", "/dev/null", "--wrap", "sleep 300"]
        subprocess.run(sbatch, check=True, capture_output=True)
        assert _queue_empties(30) == []
        dog.wait(timeout=30)  # and then it ends
    finally:
        if cmd.poll() is None:
            cmd.kill()
            cmd.wait()

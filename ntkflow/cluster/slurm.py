"""Slurm job control: the name every batch job of a run carries, and what Slurm says of them
(a worker job it refuses, what a pending job waits for); cancelling them, until none is left.

Batch jobs carry :func:`job_name`, so they are cancelled when the run ends, however it ends
(:func:`ntkflow.cluster.lifecycle.start_cluster` as it stops, ``flows.signals`` on signals,
``flows.watchdog`` on SIGKILL)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from ntkflow.cluster.errors import ClusterError


def job_name(pid: int | None = None) -> str:
    """The name of every batch job a run submits: unique to the launching process, so its jobs
    can be cancelled by name (also by :mod:`flows.watchdog` once that process is gone)."""
    return f"ntkflow-{socket.gethostname()}-{pid or os.getpid()}"


def _user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def cancel_jobs(pid: int | None = None) -> None:
    """Cancel the batch jobs of the run launched by ``pid`` (this process), pending or running.
    Best effort, bounded: a no-op where Slurm is not installed."""
    if not shutil.which("scancel"):
        return
    cmd = ["scancel", "--name", job_name(pid), "--user", _user()]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        print(f"ntkflow: {' '.join(cmd)}: {e}", file=sys.stderr, flush=True)
        return
    if res.returncode:  # no such jobs is not an error for scancel; anything else is said
        print(f"ntkflow: {' '.join(cmd)}: {res.stderr.strip()}", file=sys.stderr, flush=True)


def queued_jobs(pid: int | None = None, fmt: str = "%i %T") -> list[str] | None:
    """squeue's lines (format ``fmt``) for the batch jobs of the run launched by ``pid`` (this
    process) that are still queued, running or completing; None where Slurm cannot be asked."""
    if not shutil.which("squeue"):
        return None
    cmd = ["squeue", "-h", "--name", job_name(pid), "--user", _user(), "-o", fmt]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.splitlines() if res.returncode == 0 else None


def cancel_jobs_until_gone(
    pid: int, settle: float = 5.0, timeout: float = 20.0, interval: float = 0.5
) -> list[str]:
    """Cancel the batch jobs of the run launched by ``pid``, which has ended, until squeue has
    shown none for ``settle`` seconds, for at most ``timeout`` seconds; returns those left.

    One scancel is not enough: dask-jobqueue submits from the run's event loop thread, which
    goes on while a signal handler cancels, and an ``sbatch`` started just before the process
    ended submits after it."""
    cancel_jobs(pid)
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    while (jobs := queued_jobs(pid)) is not None and time.monotonic() < deadline:
        if jobs:
            cancel_jobs(pid)
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= settle:
            return []
        time.sleep(interval)
    return jobs or []


def is_slurm(cluster_class: str | None) -> bool:
    """Whether a plan's cluster class submits Slurm jobs (dask-jobqueue's SLURMCluster)."""
    return (cluster_class or "").endswith("SLURMCluster")


def check_submission(cluster) -> None:
    """``sbatch --test-only`` of the worker job: a job Slurm refuses (unknown gres, partition or
    account, a size no node has) is a ClusterError with sbatch's own message, before any job."""
    if not shutil.which("sbatch"):
        raise ClusterError("sbatch not found: this spec submits Slurm jobs (use a login node)")
    with tempfile.NamedTemporaryFile("w", suffix=".sh") as f:
        f.write(cluster.job_script())
        f.flush()
        res = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True, text=True)
    if res.returncode:
        message = " ".join((res.stderr or res.stdout).split())
        raise ClusterError(f"Slurm refuses the worker job: {message}")


def pending_reason() -> str:
    """What this run's batch jobs are waiting for, from squeue (empty when it cannot say)."""
    jobs = queued_jobs(fmt="job %i %T (%r)")
    if jobs is None:
        return ""
    return f": {'; '.join(jobs[:3])}" if jobs else ": no job queued"

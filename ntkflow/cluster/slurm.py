"""Slurm job control: the name every batch job of a run carries, and what Slurm says of them
(a worker job it refuses, what a pending job waits for); cancelling them, until none is left.

Batch jobs carry :func:`job_name`, so they are cancelled when the run ends, however it ends
(:func:`ntkflow.cluster.lifecycle.start_cluster` as it stops, ``flows.signals`` on signals,
``flows.watchdog`` on SIGKILL). Only a run that submits jobs asks Slurm anything: a run on a
local cluster calls no Slurm command, also where Slurm's client is installed (without a
configuration, ``scancel`` would only print its "fatal" error)."""

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


_SUBMITS = False  # whether this run submits batch jobs (set by note_submission)
_LISTENERS: list = []  # called once a run submits: the watchdog is told (flows.watchdog)


def note_submission() -> None:
    """This run submits batch jobs (a Slurm cluster is starting): from now on its jobs are
    asked for and cancelled; ``on_submission`` listeners are called once."""
    global _SUBMITS
    if not _SUBMITS:
        _SUBMITS = True
        for listener in _LISTENERS:
            listener()


def on_submission(listener) -> None:
    """Call ``listener()`` once this run submits batch jobs (at once if it already does)."""
    _LISTENERS.append(listener)
    if _SUBMITS:
        listener()


def submitted() -> bool:
    """Whether this run submits batch jobs (:func:`note_submission`): without, no Slurm command."""
    return _SUBMITS


def _user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def cancel_jobs(pid: int | None = None, report: bool = True) -> str | None:
    """Cancel the batch jobs of the run launched by ``pid`` (this process), pending or running.
    Best effort, bounded: a no-op unless the run submits jobs (:func:`submitted`) and Slurm is
    installed. A failure is returned, and printed to stderr if ``report``."""
    if not _SUBMITS or not shutil.which("scancel"):
        return None
    cmd = ["scancel", "--name", job_name(pid), "--user", _user()]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        problem = res.stderr.strip() if res.returncode else None  # no such job: not an error
    except (OSError, subprocess.SubprocessError) as e:
        problem = str(e)
    if problem is None:
        return None
    problem = f"{' '.join(cmd)}: {problem}"
    if report:
        print(f"ntkflow: {problem}", file=sys.stderr, flush=True)
    return problem


def queued_jobs(pid: int | None = None, fmt: str = "%i %T") -> list[str] | None:
    """squeue's lines (format ``fmt``) for the batch jobs of the run launched by ``pid`` (this
    process) that are still queued, running or completing; None where Slurm cannot be asked
    (or the run submits no jobs)."""
    if not _SUBMITS or not shutil.which("squeue"):
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

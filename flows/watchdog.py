"""The watchdog of ``ntkflow run``: nothing outlives a command that was killed.

A SIGINT/SIGTERM is handled by the command itself (``flows.signals.exit_on_signals``); a SIGKILL
or the OOM killer is not, and would leave the embedded Prefect server, the Dask scheduler's
workers and the Slurm jobs of the run behind. This small process, started by the command in a
session of its own, watches it: every half second it notes the command's descendants (psutil
remembers each one's start time, so a reused pid is never mistaken for one), and once the
command is gone, however it ended, it stops those still running (SIGTERM, then SIGKILL after
3 s) and cancels the run's batch jobs by job name, which carries the command's pid, until none
is left (``slurm.cancel_jobs_until_gone``: a submission in flight when the command ended
lands after a first scancel). The signal handler spares it for that.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import psutil

from flows.processes import terminate_then_kill

INTERVAL = 0.5


def watch(pid: int, interval: float = INTERVAL) -> list[psutil.Process]:
    """Block until process ``pid`` ends, then stop what it left; returns what had to be stopped."""
    me = os.getpid()
    known: dict[int, psutil.Process] = {}
    try:
        parent = psutil.Process(pid)
        while parent.is_running() and parent.status() != psutil.STATUS_ZOMBIE:
            for p in parent.children(recursive=True):
                if p.pid != me:
                    known.setdefault(p.pid, p)
            time.sleep(interval)
    except psutil.Error:
        pass
    left = []
    for p in known.values():  # with their own children (reparented, unknown to the command)
        with contextlib.suppress(psutil.Error):
            if p.is_running():
                left += [p, *p.children(recursive=True)]
    terminate_then_kill(left, grace=3)
    from ntkflow.cluster.slurm import cancel_jobs_until_gone

    cancel_jobs_until_gone(pid)
    return left


def start() -> subprocess.Popen:
    """Start the watchdog of this process (in its own session: a Ctrl-C or a kill of the
    command's process group does not reach it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "flows.watchdog", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


if __name__ == "__main__":
    left = watch(int(sys.argv[1]))
    if left:
        print(f"ntkflow watchdog: stopped {len(left)} leftover process(es)", file=sys.stderr)

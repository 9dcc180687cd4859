"""The watchdog of ``ntkflow run``: nothing outlives a command that was killed.

A SIGINT/SIGTERM is handled by the command itself (``flows.signals.exit_on_signals``); a SIGKILL
or the OOM killer is not, and would leave the embedded Prefect server, the Dask scheduler's
workers and the Slurm jobs of the run behind. This small process, started by the command in a
session of its own, watches it: every half second it notes the command's descendants (psutil
remembers each one's start time, so a reused pid is never mistaken for one), and once the
command is gone, however it ended, it stops those still running (SIGTERM, then SIGKILL after
3 s) and, if the command submitted batch jobs, cancels them by job name, which carries the
command's pid, until none is left (``slurm.cancel_jobs_until_gone``: a submission in flight
when the command ended lands after a first scancel). The command tells it on its stdin that it
submits jobs (:func:`start`); a command that submitted none is followed by no Slurm command.
The signal handler spares it for that.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys

import psutil

from flows.processes import terminate_then_kill

INTERVAL = 0.5
SUBMITS = b"submits\n"  # what the command writes on the watchdog's stdin once it submits jobs


def watch(pid: int, interval: float = INTERVAL, news: int | None = None) -> list[psutil.Process]:
    """Block until process ``pid`` ends, then stop what it left; returns what had to be stopped.
    ``news``: a file descriptor (the watchdog's stdin) where the command says it submits jobs."""
    me = os.getpid()
    known: dict[int, psutil.Process] = {}
    try:
        parent = psutil.Process(pid)
        while parent.is_running() and parent.status() != psutil.STATUS_ZOMBIE:
            for p in parent.children(recursive=True):
                if p.pid != me:
                    known.setdefault(p.pid, p)
            news = _listen(news, interval)
    except psutil.Error:
        pass
    while news is not None:  # what the command wrote before it ended, up to the end of the pipe
        news = _listen(news, 0)
    left = []
    for p in known.values():  # with their own children (reparented, unknown to the command)
        with contextlib.suppress(psutil.Error):
            if p.is_running():
                left += [p, *p.children(recursive=True)]
    terminate_then_kill(left, grace=3)
    from ntkflow.cluster import slurm

    if slurm.submitted():  # told by the command: it submitted batch jobs
        slurm.cancel_jobs_until_gone(pid)
    return left


def _listen(fd: int | None, timeout: float) -> int | None:
    """Wait up to ``timeout`` seconds for the command's news on ``fd``; returns ``fd``, or None
    once the command's end of it is closed (then it only waits)."""
    if fd is None:
        select.select([], [], [], timeout)
        return None
    if not select.select([fd], [], [], timeout)[0]:
        return fd
    try:
        data = os.read(fd, 4096)
    except OSError:
        data = b""
    if SUBMITS.strip() in data:
        from ntkflow.cluster import slurm

        slurm.note_submission()
    return fd if data else None


def start() -> subprocess.Popen:
    """Start the watchdog of this process (in its own session: a Ctrl-C or a kill of the
    command's process group does not reach it); it is told on its stdin once this process
    submits batch jobs (:func:`ntkflow.cluster.slurm.note_submission`)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.watchdog", str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    from ntkflow.cluster import slurm

    def tell() -> None:
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.write(SUBMITS)
            proc.stdin.flush()

    slurm.on_submission(tell)
    return proc


if __name__ == "__main__":
    left = watch(int(sys.argv[1]), news=sys.stdin.fileno())
    if left:
        print(f"ntkflow watchdog: stopped {len(left)} leftover process(es)", file=sys.stderr)

"""Stopping processes: terminate, then kill what outlives a grace period.

One function for the three places that stop what a command started (the embedded API server,
the children on a signal, the leftovers the watchdog finds). psutil only: the watchdog, a
separate process started early, imports this module and nothing heavier.
"""

from __future__ import annotations

import contextlib
import signal

import psutil


def terminate_then_kill(processes: list[psutil.Process], grace: float) -> list[psutil.Process]:
    """SIGTERM every process of ``processes``, SIGKILL those still alive after ``grace``
    seconds and wait (at most ``grace`` seconds more) for them to go; returns the killed ones.

    psutil remembers each process's start time, so a pid reused meanwhile by another process
    is never signalled; a process already gone is skipped. One that ignores or blocks SIGTERM
    (Linux says so: multiprocessing's resource tracker does) is killed at once: waiting for it
    would be in vain."""
    for p in processes:
        with contextlib.suppress(psutil.Error):
            p.kill() if _ignores_sigterm(p.pid) else p.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=grace)
    return alive


def _ignores_sigterm(pid: int) -> bool:
    """Whether process ``pid`` ignores or blocks SIGTERM (its masks in /proc; False elsewhere)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            masks = [line.split()[1] for line in f if line.startswith(("SigBlk:", "SigIgn:"))]
    except (OSError, IndexError):
        return False
    return any(int(m, 16) >> (signal.SIGTERM - 1) & 1 for m in masks)

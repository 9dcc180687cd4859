"""Signals of the ``ntkflow`` command: on SIGINT/SIGTERM nothing is left running (children,
batch jobs), every flow and task run of the command ends Crashed (:mod:`flows.endings`), its own
line is the last thing it writes, and it exits at once."""

from __future__ import annotations

import contextlib
import os
import signal

from flows.endings import crash_command
from flows.processes import terminate_then_kill
from ntkflow.cluster import slurm

INTERRUPTED = "interrupted; rerun to resume"


def stop_children(grace: float = 5.0, spare: int | None = None) -> None:
    """Terminate every process this one started (Prefect server, Dask nannies and workers),
    then kill what is still alive after ``grace`` seconds: nothing is left orphaned. The child
    ``spare`` (the watchdog) and its own children are left running."""
    import psutil

    children = []
    for child in psutil.Process().children():
        if child.pid != spare:
            with contextlib.suppress(psutil.Error):
                children += [child, *child.children(recursive=True)]
    terminate_then_kill(children, grace)


_HANDLER = None
_SPARE: int | None = None  # the child the handler leaves running: the watchdog


def exit_on_signals(signals=(signal.SIGINT, signal.SIGTERM), spare: int | None = None) -> None:
    """On SIGINT/SIGTERM: freeze the local Dask workers, say so (ntkflow's line, the last thing
    the command writes: its output goes to /dev/null after it), mark every flow and task run of
    the command Crashed, cancel the run's batch jobs (if it submitted any), stop the workers and
    the embedded server (not the child ``spare``, the watchdog: :func:`spare_watchdog`), cancel
    again, exit 128 + signal. Installed for the whole process by the console entry point,
    ``flows.cli``.

    A graceful unwinding through Prefect and Dask can hang for minutes once the server or the
    workers are gone (a Ctrl-C reaches the whole process group), and finished work is already
    committed to the store, so the process stops its children itself and exits at once; a
    rerun of the same command resumes from the store. The workers are frozen (SIGSTOP) first:
    stopped, they print nothing, report nothing and are not restarted by their nannies while
    the runs are marked; a local cluster's workers never take a Ctrl-C themselves
    (:func:`ntkflow.cluster.lifecycle.start_cluster` starts them with SIGINT blocked). Dask's
    adaptive scaling goes on in its own thread meanwhile and may still submit a job: the
    watchdog, spared, cancels the run's jobs until none is left once this process is gone.
    """

    def handler(signum, frame):
        for s in signals:  # a second signal while stopping must not interrupt the cleanup
            signal.signal(s, signal.SIG_IGN)
        # It runs between any two bytecodes of the main thread, an import half done included:
        # nothing may raise out of it (the code it interrupted would get the exception), and
        # it exits whatever happens.
        try:
            name = signal.Signals(signum).name
            frozen = _freeze_workers()
            say = _last_words(f"\nntkflow: {name}: {INTERRUPTED}\n")
            with contextlib.suppress(Exception):
                problem = crash_command(f"{name}: {INTERRUPTED}")
                if problem:
                    say(f"ntkflow: the UI may show this run as running: {problem}\n")
            _cancel_jobs(say)  # the run's batch jobs, pending or running, before it exits
            for p in frozen:  # stopped: a SIGTERM could wait for a SIGCONT
                with contextlib.suppress(Exception):
                    p.kill()
            stop_children(spare=_SPARE)
            _cancel_jobs(say)  # and those submitted meanwhile
        finally:
            os._exit(128 + signum)

    global _HANDLER, _SPARE
    _HANDLER = handler
    if spare is not None:
        _SPARE = spare
    for s in signals:
        signal.signal(s, handler)


def _freeze_workers() -> list:
    """SIGSTOP the worker processes this one started (multiprocessing's children: a local Dask
    cluster's, with their own children); returns them."""
    import multiprocessing

    import psutil

    frozen = []
    with contextlib.suppress(Exception):
        for child in multiprocessing.active_children():
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(child.pid)
                frozen += [p, *p.children(recursive=True)]
    for p in frozen:
        with contextlib.suppress(psutil.Error):
            p.suspend()
    return frozen


def _last_words(line: str):
    """Write ``line`` to stderr, then send this process's stdout and stderr to /dev/null (what
    its threads write as it stops: Dask's and Prefect's logs, a thread's traceback); returns a
    writer to the real stderr for ntkflow's own messages."""
    with contextlib.suppress(OSError):
        os.write(2, line.encode())
    try:
        err = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
    except OSError:
        err = 2

    def say(text: str) -> None:
        with contextlib.suppress(OSError):
            os.write(err, text.encode())

    return say


def _cancel_jobs(say) -> None:
    """Cancel the run's batch jobs when it submitted any (a local run calls no Slurm command)."""
    if slurm.submitted():
        with contextlib.suppress(Exception):
            problem = slurm.cancel_jobs(report=False)
            if problem:
                say(f"ntkflow: {problem}\n")


def spare_watchdog(pid: int) -> None:
    """On a signal, leave the child ``pid`` running: the watchdog, started once a run has work
    (after :func:`exit_on_signals`), which cancels the run's jobs after this process is gone."""
    global _SPARE
    _SPARE = pid


def reclaim_signals() -> None:
    """Inside a flow started by ``ntkflow run``: put back :func:`exit_on_signals`' handler.

    Prefect replaces the SIGTERM handler during a flow run with a graceful unwinding that
    reports to the API; when a SIGTERM reached the whole process group the server is already
    gone and that unwinding retried for minutes. Flows not started by the CLI keep Prefect's.
    """
    import threading

    if _HANDLER is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _HANDLER)

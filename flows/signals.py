"""Signals of the ``ntkflow`` command: on SIGINT/SIGTERM nothing is left running (children,
batch jobs), the flow run is marked Crashed, and the command exits at once."""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from flows.processes import terminate_then_kill
from ntkflow.cluster.slurm import cancel_jobs

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
    """On SIGINT/SIGTERM: say so, cancel the run's batch jobs, stop the workers and the embedded
    server (not the child ``spare``, the watchdog: :func:`spare_watchdog`), cancel again, exit
    128 + signal. Installed for the whole process by the console entry point, ``flows.cli``.

    A graceful unwinding through Prefect and Dask can hang for minutes once the server or the
    workers are gone (a Ctrl-C reaches the whole process group), and finished work is already
    committed to the store, so the process stops its children itself and exits at once; a
    rerun of the same command resumes from the store. Dask's adaptive scaling goes on in its
    own thread meanwhile and may still submit a job: the watchdog, spared, cancels the run's
    jobs until none is left once this process is gone.
    """

    def handler(signum, frame):
        for s in signals:  # a second signal while stopping must not interrupt the cleanup
            signal.signal(s, signal.SIG_IGN)
        # It runs between any two bytecodes of the main thread, an import half done included:
        # nothing may raise out of it (the code it interrupted would get the exception), and
        # it exits whatever happens.
        try:
            name = signal.Signals(signum).name
            print(f"\nntkflow: {name}: {INTERRUPTED}", file=sys.stderr, flush=True)
            with contextlib.suppress(Exception):
                _mark_crashed(f"{name}: {INTERRUPTED}")
            cancel_jobs()  # the run's batch jobs, pending or running, before it exits
            stop_children(spare=_SPARE)
            cancel_jobs()  # and those submitted meanwhile
            sys.stdout.flush()
        finally:
            os._exit(128 + signum)

    global _HANDLER, _SPARE
    _HANDLER = handler
    if spare is not None:
        _SPARE = spare
    for s in signals:
        signal.signal(s, handler)


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


def _mark_crashed(message: str, timeout: float = 5.0) -> None:
    """Best effort: end the current flow run in a Crashed state, so the UI does not show it
    Running forever. Bounded by ``timeout`` (the server may already be gone)."""
    import threading

    # Prefect not imported yet, or half imported (the signal came during its import): no flow
    # run to mark, and no import here
    run_context = getattr(sys.modules.get("prefect.context"), "FlowRunContext", None)
    ctx = run_context.get() if run_context is not None else None
    if ctx is None or ctx.flow_run is None:
        return
    flow_run_id = ctx.flow_run.id

    def send() -> None:
        from prefect.client.orchestration import get_client
        from prefect.states import Crashed

        with contextlib.suppress(Exception), get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    t.join(timeout)

"""Prefect and Dask around a flow run: the embedded API and the task runner."""

from __future__ import annotations

import contextlib
import os

from ntkflow import compute
from ntkflow.config import Config

STARTUP_TIMEOUT = int(os.environ.get("NTKFLOW_PREFECT_STARTUP_TIMEOUT", "300"))


@contextlib.contextmanager
def prefect_api():
    """Use PREFECT_API_URL when set; otherwise start Prefect's embedded server for this run.

    The server is started here, before the Dask cluster, and its URL exported, so the worker
    processes report to it instead of each starting an ephemeral server of its own. The first
    start on 2 cores (database migrations) can take a minute: the timeout is generous.
    """
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"], False
        return
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=STARTUP_TIMEOUT)
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        yield server.api_url, True
    finally:
        _flush_logs()
        del os.environ["PREFECT_API_URL"]
        server.stop()


def _flush_logs() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=10)
        except Exception:  # noqa: BLE001 - best effort before shutting the server down
            pass


def task_runner(cfg: Config):
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(**compute.cluster_spec(cfg.compute))

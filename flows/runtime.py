"""Prefect and Dask around a flow run: the embedded API and the task runner."""

from __future__ import annotations

import contextlib
import os

from distributed.diagnostics.plugin import WorkerPlugin

from ntkflow import compute

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


class PrefectAPIPlugin(WorkerPlugin):
    """Dask worker plugin: sets PREFECT_API_URL in each worker, also in workers that join later."""

    name = "ntkflow-prefect-api"

    def __init__(self, api_url: str):
        self.api_url = api_url

    def setup(self, worker) -> None:
        os.environ["PREFECT_API_URL"] = self.api_url


def prepare_workers(client, api_url: str | None) -> int:
    """Export the run's Prefect API URL into every worker, also those joining later; returns
    the number of workers connected now.

    Workers started elsewhere (by hand, Slurm, Kubernetes) do not inherit this process's
    environment; without the URL each one would start a private ephemeral Prefect server and
    its task runs would be lost to the UI. An embedded API listens on 127.0.0.1, so it reaches
    workers on this machine only: for workers elsewhere, run `prefect server start` and set
    PREFECT_API_URL everywhere.
    """
    if api_url:
        client.register_plugin(PrefectAPIPlugin(api_url))
    return len(compute.worker_resources(client))


def task_runner_at(address: str):
    """The Dask task runner of a flow run on the cluster already started at ``address``."""
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(address=address)

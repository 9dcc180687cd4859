"""The Dask workers of a flow run: what each worker is set up with (the Prefect API settings,
its allocator), the resources a training asks for, the flow's Dask client and task runner."""

from __future__ import annotations

import os

from distributed.diagnostics.plugin import WorkerPlugin

from flows.internals import refresh_settings
from ntkflow.cluster.processes import exit_without_collecting, reuse_freed_memory
from ntkflow.cluster.resources import cluster_has_gpus, worker_resources

# What a worker imports to run the trials' tasks: a local cluster's forkserver imports it once
# for all its workers (ntkflow.cluster.lifecycle.start_cluster's ``preload``). A run that
# trains networks adds what the training and theory tasks import as they first run (torch:
# ~1.5 CPU-s in each worker otherwise).
WORKER_IMPORTS = ("flows.tasks",)
NETWORK_IMPORTS = ("ntkflow.nets", "ntkflow.train", "ntkflow.empirical", "ntkflow.linearized")


def worker_imports(networks: bool) -> tuple[str, ...]:
    """What a local cluster's forkserver imports for a run (``networks``: it trains some)."""
    return WORKER_IMPORTS + (NETWORK_IMPORTS if networks else ())


class PrefectAPIPlugin(WorkerPlugin):
    """Dask worker plugin: exports the Prefect API settings (``{"PREFECT_API_URL": …,
    "PREFECT_API_KEY": …}``) in each worker, also in workers that join later."""

    name = "ntkflow-prefect-api"

    def __init__(self, settings: dict[str, str]):
        self.settings = dict(settings)

    def setup(self, worker) -> None:
        os.environ.update(self.settings)
        refresh_settings()  # Prefect imported already: by the forkserver a worker is forked from


class AllocatorPlugin(WorkerPlugin):
    """Dask worker plugin: large arrays reuse freed memory (:func:`reuse_freed_memory`) and the
    process exits without its last garbage collections (:func:`exit_without_collecting`), also
    in workers that join later."""

    name = "ntkflow-allocator"

    def setup(self, worker) -> None:
        reuse_freed_memory()
        exit_without_collecting()


def prepare_workers(client, api: dict[str, str] | None) -> int:
    """Export the run's Prefect API settings (``flows.server.api_settings()``: URL, key, auth
    string, CA file, as this process's Prefect resolved them from its environment or profile)
    into every worker, also those joining later, and let their allocator reuse freed memory;
    returns the number of workers connected now.

    Workers started elsewhere (by hand, Slurm, Kubernetes) do not inherit this process's
    environment or profile; without the URL each one would start a private ephemeral Prefect
    server and its task runs would be lost to the UI. An embedded API listens on 127.0.0.1, so
    it reaches workers on this machine only: for workers elsewhere, run `prefect server start`
    and configure its URL (docs/prefect-ui.md).
    """
    client.register_plugin(AllocatorPlugin())
    if api and api.get("PREFECT_API_URL"):
        client.register_plugin(PrefectAPIPlugin(api))
    return len(worker_resources(client))


def train_resources(client, declared: dict | None) -> dict:
    """The Dask resources a training task asks for: those the cluster plan declares, else
    (an existing scheduler) GPU=1 where the connected workers declare GPUs."""
    if declared is not None:
        return declared
    return {"GPU": 1} if cluster_has_gpus(client) else {}


def dask_client():
    """The flow's Dask client: its DaskTaskRunner's (which is not registered as the default
    client, so ``distributed.get_client()`` alone finds none in the flow). ValueError if none."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    client = getattr(getattr(ctx, "task_runner", None), "client", None)
    if client is None:
        from distributed import get_client

        return get_client()
    return client


def task_runner_at(address: str):
    """The Dask task runner of a flow run on the cluster already started at ``address``."""
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(address=address)

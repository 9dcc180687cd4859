"""The Prefect flow ``experiment``: trials fanned out as tasks on a Dask cluster, then aggregate.

Tasks are thin: each calls one step of :mod:`ntkflow.trial` with the config and the store URL,
and returns a small JSON-able record. The store's verified ``result.json`` is the ground truth,
so a rerun of the same experiment (same run id) skips finished trials and recomputes the rest.
"""

from __future__ import annotations

import os
import time

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed
from prefect.states import Failed

from ntkflow import compute, report
from ntkflow import trial as tr
from ntkflow.config import Config
from ntkflow.store import Store


def _transient(task, task_run, state) -> bool:
    """Retry only what a second attempt can fix: a lost worker, a dropped connection, CUDA OOM."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - classification only
        name = type(exc).__name__
        return name in {
            "KilledWorker",
            "CommClosedError",
            "ConnectionError",
            "TimeoutError",
            "OutOfMemoryError",
        } or "CUDA out of memory" in str(exc)
    return False


RETRY = {"retries": 2, "retry_delay_seconds": 2, "retry_condition_fn": _transient}


@task(task_run_name="trial-{k:03d}", **RETRY)
def trial_task(cfg: Config, out: str, k: int, versions: dict) -> dict:
    """Data and every kernel of trial k; finishes the trial when it has no networks."""
    store = Store(out)
    done = tr.load_result(store, k)
    if done is not None:
        return {"trial": k, "status": "reused"}

    with tr.recording_errors(store, k):
        items = tr.run_kernels(cfg, store, k)
        if not cfg.networks.enabled:  # no network tasks follow: the trial ends here
            tr.finish(cfg, store, k, items, versions)
    return {"trial": k, "status": "kernels-done" if cfg.networks.enabled else "ok"}


@task(task_run_name="trial-{k:03d}/train/NN{depth}", **RETRY)
def train_task(cfg: Config, out: str, k: int, depth: int) -> dict:
    """One network of trial k, on the worker's GPU when it has one (dask-cuda pins cuda:0)."""
    from ntkflow.train import set_torch_threads

    store = Store(out)
    set_torch_threads(cfg.compute.threads_per_worker)
    with tr.recording_errors(store, k):
        item = tr.network_item(cfg, store, k, depth, compute.torch_device())
    return {"trial": k, "method": item["method"], "rmse": item["rmse"]}


@task(task_run_name="trial-{k:03d}/result")
def finish_task(cfg: Config, out: str, k: int, versions: dict) -> dict:
    store = Store(out)
    if tr.load_result(store, k) is None:
        items = [
            store.read_json(f"{tr.trial_dir(k)}/items/{m}.json", verify=True) for m in cfg.methods
        ]
        tr.finish(cfg, store, k, items, versions)
    return {"trial": k, "status": "ok"}


@task(task_run_name="aggregate")
def aggregate_task(cfg: Config, out: str, run_info: dict) -> dict:
    return report.aggregate(cfg, Store(out), run_info)


def _gpu_annotation(resources: dict | None = None) -> dict:
    """Dask resource annotation for training tasks: ``resources`` when given (the cluster plan's,
    checked against the workers by the flow ``experiment``), else GPU=1 when workers declare it."""
    if resources is not None:
        return {"resources": resources} if resources else {}
    try:
        from distributed import get_client

        return {"resources": {"GPU": 1}} if compute.cluster_has_gpus(get_client()) else {}
    except ValueError:  # no client: not on Dask
        return {}


@flow(name="trials", log_prints=True)
def run_trials(cfg: Config, out: str, train_resources: dict | None = None) -> dict:
    """Every trial of ``cfg`` into the run folder ``out``, then the aggregate.

    Runs as a subflow of ``experiment``, which picks its Dask task runner per flow run."""
    import dask

    log = get_run_logger()
    store = Store(out)
    versions = report.versions()
    trials = list(range(cfg.trials))
    progress = create_progress_artifact(0.0, description=f"trials done of {cfg.trials}")
    todo = [k for k in trials if tr.load_result(store, k) is None]
    log.info(
        "run %s: %d trial(s), %d to compute, store %s",
        cfg.run_id,
        len(trials),
        len(todo),
        store.url,
    )

    # The last future of each trial: its trial task, or its finish task after the networks.
    last = {}
    for k in todo:
        fut = trial_task.submit(cfg, out, k, versions)
        if cfg.networks.enabled:
            with dask.annotate(**_gpu_annotation(train_resources)):
                nets = [
                    train_task.submit(cfg, out, k, L, wait_for=[fut]) for L in cfg.networks.depths
                ]
            fut = finish_task.submit(cfg, out, k, versions, wait_for=nets)
        last[fut] = k

    done, start = len(trials) - len(todo), time.monotonic()
    update_progress_artifact(progress, 100.0 * done / len(trials))
    for i, fut in enumerate(as_completed(list(last)), 1):
        k = last[fut]
        done += 1
        eta = (time.monotonic() - start) / i * (len(todo) - i)
        if tr.load_result(store, k) is not None:  # the store, not the future, is the truth
            log.info("trial-%03d done [%d/%d, ETA %.0f s]", k, done, len(trials), eta)
        else:
            err = store.read_json(f"{tr.trial_dir(k)}/error.json") or {}
            log.error("trial-%03d FAILED [%d/%d]: %s", k, done, len(trials), err.get("error"))
        update_progress_artifact(progress, 100.0 * done / len(trials))

    summary = aggregate_task(cfg, out, {"prefect_api": os.environ.get("PREFECT_API_URL")})
    create_table_artifact(
        [{"method": m, **s} for m, s in summary["methods"].items()],
        key=f"results-{cfg.run_id}",
        description=f"test RMSE per method, run {cfg.run_id}",
    )
    create_markdown_artifact(store.read_bytes("report.md").decode(), key=f"report-{cfg.run_id}")
    if summary["failed_trials"]:
        # A Failed state, not an exception: the run is marked failed without a traceback.
        return Failed(
            message=f"{len(summary['failed_trials'])} trial(s) failed: "
            f"{summary['failed_trials']}; rerun the same command to recompute only those "
            f"(summary: {store.url}/summary.json)"
        )
    return summary


def _refused(e: Exception):
    """A Failed state naming the bad input; the error itself is its data (the CLI exits 2)."""
    get_run_logger().error("%s", e)
    return Failed(message=str(e), data=e)


@flow(name="experiment", log_prints=True)
def experiment(
    preset: str = "quick",
    overrides: list[str] | dict | None = None,
    out: str = "runs",
    cluster: str = "local",
    kernels_only: bool = False,
):
    """An experiment from what a person types: preset, ``a.b=VALUE`` overrides (or a mapping),
    the store, the Dask cluster (local, cuda, a scheduler address or a deploy/*.yaml spec).

    Builds and validates the config, checks the cluster and the store, writes the run folder's
    ``config.yaml`` and runs the trials as the subflow ``trials`` on that cluster, so the task
    runner is chosen per flow run, also when the run is retried. Bad input fails the run before
    any trial, naming the field. ``ntkflow run`` calls this same flow.
    """
    from prefect.settings import PREFECT_API_URL

    from flows.runtime import prepare_workers, task_runner_at
    from ntkflow import launch
    from ntkflow.config import ConfigError

    log = get_run_logger()
    try:
        cfg = launch.build_config(preset, overrides, cluster, kernels_only)
        plan = compute.resolve_cluster(cfg.compute.cluster, cfg.compute)
        launch.open_store(out)
        log.info("run %s on %s", cfg.run_id, plan.describe())
        with compute.start_cluster(plan) as address, compute.connect(address) as client:
            api = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
            n = prepare_workers(client, api)
            log.info("%d worker(s) of %s report to %s", n, address, api)
            resources = plan.train_resources
            if resources is None:  # an existing scheduler: use GPUs where workers declare them
                resources = {"GPU": 1} if compute.cluster_has_gpus(client) else {}
            if cfg.networks.enabled:
                compute.check_resources(client, resources)
            store = launch.write_run_config(cfg, out)
            launch.check_workers_see(client, store)
            # a subflow on this cluster; its failures are in its state, never raised here
            state = run_trials.with_options(task_runner=task_runner_at(address))(
                cfg, store.url, resources, return_state=True
            )
    except ConfigError as e:
        return _refused(e)
    if state.is_completed():
        return state.result()
    # the subflow's own message ("1 trial(s) failed: [1]; ..."), not Prefect's "1/1 states failed"
    return Failed(message=state.message)

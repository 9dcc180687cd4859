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
from ntkflow.config import Config, network_spec, network_specs
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


def _network_task_name(step: str):
    """Task run name ``trial-007/<step>/NN1`` (``NN1@w1024`` in a width sweep)."""

    def name() -> str:
        from prefect.runtime import task_run

        p = task_run.parameters
        spec = network_spec(p["cfg"], p["depth"], p.get("width"))
        return f"trial-{p['k']:03d}/{step}/{spec.name}"

    return name


@task(task_run_name=_network_task_name("train"), **RETRY)
def train_task(cfg: Config, out: str, k: int, depth: int, width: int | None = None) -> dict:
    """One network of trial k, on the worker's GPU when it has one (dask-cuda pins cuda:0)."""
    from ntkflow.train import set_torch_threads

    store = Store(out)
    set_torch_threads(cfg.compute.threads_per_worker)
    with tr.recording_errors(store, k):
        item = tr.network_item(cfg, store, k, depth, compute.torch_device(), width)
    return {"trial": k, "method": item["method"], "rmse": item["rmse"]}


@task(task_run_name=_network_task_name("theory"), **RETRY)
def theory_task(cfg: Config, out: str, k: int, depth: int, width: int | None = None) -> dict:
    """The linearized predictors and their agreement with the trained network (SPEC §6)."""
    from ntkflow.train import set_torch_threads

    store = Store(out)
    set_torch_threads(cfg.compute.threads_per_worker)
    with tr.recording_errors(store, k):
        items = tr.theory_item(cfg, store, k, depth, width)
    return {"trial": k, "methods": {i["method"]: i["rmse"] for i in items}}


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


def _gpu_annotation() -> dict:
    """Dask resource annotation for training tasks when the cluster declares GPUs."""
    try:
        from distributed import get_client

        return {"resources": {"GPU": 1}} if compute.cluster_has_gpus(get_client()) else {}
    except ValueError:  # no client: not on Dask
        return {}


@flow(name="experiment", log_prints=True)
def experiment(cfg: Config, out: str) -> dict:
    """Every trial of ``cfg`` into the run folder ``out``, then the aggregate."""
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
            with dask.annotate(**_gpu_annotation()):
                trained = {
                    s: train_task.submit(cfg, out, k, s.depth, s.width, wait_for=[fut])
                    for s in network_specs(cfg)  # one per depth, or per (depth, width)
                }
            nets = [
                theory_task.submit(cfg, out, k, s.depth, s.width, wait_for=[f])
                for s, f in trained.items()
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

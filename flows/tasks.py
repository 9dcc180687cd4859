"""The thin Prefect tasks of one trial, with their retry policy.

Each task opens trial k of the store (:class:`ntkflow.trial.Trial`), runs one leased step of
:mod:`ntkflow.trial.steps` and returns a small JSON-able record; the store stays the ground
truth. A step whose upstream step failed is still submitted, with ``upstream_error`` naming the
first failure: it ends at once in a Failed state named ``UpstreamFailed``, so nothing stays
Pending in the UI.
"""

from __future__ import annotations

import contextlib

from prefect import get_run_logger, task
from prefect.states import Failed

from flows.progress import epoch_logger
from ntkflow import preflight, report
from ntkflow import trial as tr
from ntkflow.cluster.resources import torch_device
from ntkflow.config import Config
from ntkflow.names import network_spec
from ntkflow.store import Store

TRANSIENT = {
    "KilledWorker",
    "CommClosedError",
    "ConnectionError",
    "TimeoutError",
    "OutOfMemoryError",
}


def _transient(task, task_run, state) -> bool:
    """Retry only what a second attempt can fix: a lost worker, a dropped connection, CUDA OOM."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - classification only
        return type(exc).__name__ in TRANSIENT or "CUDA out of memory" in str(exc)
    return False


RETRY = {"retries": 2, "retry_delay_seconds": 2, "retry_condition_fn": _transient}


class UpstreamFailed(RuntimeError):
    """A trial's later step was not run because an earlier one failed."""


def not_run(cause: str):
    """The terminal state of a step that cannot run; ``cause`` names the failed step and its
    error ("trial-001 failed (InjectedFault: ...)")."""
    msg = f"not run: {cause}"
    return Failed(name="UpstreamFailed", message=msg, data=UpstreamFailed(msg))


@contextlib.contextmanager
def _logged_errors(t: tr.Trial):
    """Record a failure in the trial's error.json and log its traceback in the task's logs
    (Prefect itself logs it only once retries are used up, which a deterministic error skips)."""
    try:
        with t.recording_errors():
            yield
    except Exception as exc:
        get_run_logger().error("%s failed: %s: %s", t.name, type(exc).__name__, exc, exc_info=True)
        raise


def _network_task_name(step: str):
    """Task run name ``trial-007/<step>/NN1`` (``NN1@w1024``, ``NN1@lr=0.02`` in a sweep)."""

    def name() -> str:
        from prefect.runtime import task_run

        p = task_run.parameters
        return f"trial-{p['k']:03d}/{step}/{p['network']}"

    return name


def _network_trial(cfg: Config, out: str, k: int) -> tr.Trial:
    """Trial k for a network step, with torch's threads set for this worker (imported only by
    steps that run: a step after a failed one ends before it)."""
    from ntkflow.train import set_torch_threads

    set_torch_threads(cfg.compute.threads_per_worker or 1)
    return tr.Trial(cfg, Store(out), k, device=torch_device())


@task(task_run_name="check-store", retries=0)
def store_check_task(out: str, token: str) -> str:
    """On a worker: write a probe file into the store (the flow reads it back)."""
    return preflight.probe_write(out, token)


@task(task_run_name="trial-{k:03d}", **RETRY)
def trial_task(cfg: Config, out: str, k: int, versions: dict) -> dict:
    """Data and every kernel of trial k; finishes the trial when it has no networks."""
    t = tr.Trial(cfg, Store(out), k, versions)
    log = get_run_logger()
    with _logged_errors(t):  # under the trial's lease; waits for a live holder
        status = tr.kernel_part(t, on_wait=log.info)
    if status == tr.ELSEWHERE:
        log.info("%s was finished by another run", t.name)
    return {"trial": k, "status": status}


@task(task_run_name=_network_task_name("train"), **RETRY)
def train_task(cfg: Config, out: str, k: int, network: str, upstream_error: str | None):
    """One network of trial k, on the worker's GPU when it has one (dask-cuda pins cuda:0)."""
    if upstream_error is not None:
        return not_run(upstream_error)
    t = _network_trial(cfg, out, k)
    with _logged_errors(t):
        progress = epoch_logger(k, network, network_spec(cfg, network).epochs)
        item = tr.network_part(t, network, progress, on_wait=get_run_logger().info)
    return {"trial": k, "method": item["method"], "rmse": item["rmse"]}


@task(task_run_name=_network_task_name("theory"), **RETRY)
def theory_task(cfg: Config, out: str, k: int, network: str, upstream_error: str | None):
    """The linearized predictors and their agreement with the trained network (docs/theory.md)."""
    if upstream_error is not None:
        return not_run(upstream_error)
    t = _network_trial(cfg, out, k)
    with _logged_errors(t):
        items = tr.theory_part(t, network, on_wait=get_run_logger().info)
    return {"trial": k, "methods": {i["method"]: i["rmse"] for i in items}}


@task(task_run_name="trial-{k:03d}/result", **RETRY)
def finish_task(cfg: Config, out: str, k: int, versions: dict, upstream_error: str | None):
    """result.json of trial k, after every network's theory."""
    if upstream_error is not None:
        return not_run(upstream_error)
    t = tr.Trial(cfg, Store(out), k, versions)
    with _logged_errors(t):
        return {"trial": k, "status": tr.finish_part(t, on_wait=get_run_logger().info)}


@task(task_run_name="aggregate")
def aggregate_task(cfg: Config, out: str, run_info: dict) -> dict:
    if cfg.faults.fail_aggregate:
        raise tr.InjectedFault("injected fault in the aggregation (faults.fail_aggregate)")
    return report.aggregate(cfg, Store(out), run_info)

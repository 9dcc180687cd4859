"""The subflow ``trials``: every trial of a config into its run folder, then the aggregate.

    check that the workers share the store → config.yaml → which trials are left
    → per trial: kernels → per network: train → theory → result      (one graph of tasks)
    → follow them (progress) → aggregate → results table and report artifacts

Each trial's steps are submitted at once as a graph: a later step receives its upstream's
outcome through ``allow_failure`` (on Dask, a dependency: it is scheduled only once its upstream
ended), so a step after a failed one still runs and ends at once as ``UpstreamFailed`` naming
the failure; nothing stays Pending. The store's verified ``result.json`` decides which trials
are done.
"""

from __future__ import annotations

import os
import random
import threading
import uuid

import dask
from prefect import allow_failure, flow, get_run_logger
from prefect.futures import as_completed
from prefect.states import Failed

from flows import runtime
from flows.artifacts import flow_runs, publish
from flows.progress import Progress
from flows.tasks import (
    aggregate_task,
    finish_task,
    store_check_task,
    theory_task,
    train_task,
    trial_task,
)
from ntkflow import preflight, report
from ntkflow import trial as tr
from ntkflow.config import Config, to_yaml
from ntkflow.names import network_specs
from ntkflow.store import Store


def check_store(out: str) -> None:
    """Before any work: a worker writes the store and this process reads it back (else a
    PlaceError: results written where the flow cannot see them would be lost)."""
    token = uuid.uuid4().hex
    fut = store_check_task.submit(out, token)
    try:
        host = fut.result()
    except Exception as e:  # noqa: BLE001 - whatever the worker hit writing the store
        raise preflight.worker_cannot_write(out, e) from e
    preflight.probe_read(out, token, host)


def submit_trial(cfg: Config, out: str, k: int, versions: dict, resources: dict):
    """Trial k as a graph of tasks; returns (its kernel step, its last step)."""
    kernels = trial_task.submit(cfg, out, k, versions)
    theories = []
    for s in network_specs(cfg):
        with dask.annotate(**({"resources": resources} if resources else {})):
            train = train_task.submit(cfg, out, k, s.depth, s.width, allow_failure(kernels))
        theories.append(theory_task.submit(cfg, out, k, s.depth, s.width, allow_failure(train)))
    if not theories:  # kernels only: the kernel step finishes the trial
        return kernels, kernels
    return kernels, finish_task.submit(cfg, out, k, versions, [allow_failure(f) for f in theories])


def follow(progress: Progress, store: Store, steps: dict) -> None:
    """Move the progress as kernel steps and trials end (and, every second, with the epochs of
    the trainings running), until every trial ended; a trial is done when its result is."""
    watch = {last: ("trial", k) for k, (_, last) in steps.items()}
    watch |= {first: ("kernels", k) for k, (first, last) in steps.items() if first is not last}
    running = set(steps)
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(1.0):
            progress.update(running=set(running))

    progress.follow_epochs()
    ticker = threading.Thread(target=tick, name="ntkflow-progress", daemon=True)
    ticker.start()
    try:
        for fut in as_completed(list(watch)):
            step, k = watch[fut]
            if step == "kernels":
                if fut.state.is_completed():
                    progress.kernels_done.add(k)
                continue
            running.discard(k)
            done = tr.load_result(store, k) is not None  # the store, not the future, decides
            progress.trial_ended(k, done, None if done else _failure(store, k, fut))
    finally:
        stop.set()
        ticker.join()
    progress.update()


def _failure(store: Store, k: int, fut) -> str:
    """What failed in trial k, never "None": its error.json, else the task's final state."""
    err = tr.recorded_error(store, k)
    if err:
        return err
    try:
        state = fut.state
    except Exception:  # noqa: BLE001 - API unreachable: say what is known
        state = None
    if state is not None and state.message:
        return f"{state.name}: {state.message}"
    return f"no result.json and no error recorded (final state {getattr(state, 'name', '?')})"


@flow(name="trials", log_prints=True)
def run_trials(cfg: Config, out: str, train_resources: dict | None = None) -> dict:
    """Every trial of ``cfg`` into the run folder ``out``, then the aggregate.

    Runs as a subflow of ``experiment``, which picks its Dask task runner per flow run;
    ``train_resources`` are the Dask resources of a training task (None: GPU=1 where workers
    declare GPUs)."""
    log = get_run_logger()
    runtime.reclaim_signals()  # SIGTERM stops the run at once (ntkflow run only)
    store = Store(out)
    try:
        check_store(out)  # before any work: the workers' writes must be visible here
    except preflight.PlaceError as e:  # a usage error, reported without a traceback
        log.error("%s", e)
        return Failed(message=str(e), data=e)
    versions = report.versions()
    store.write_text("config.yaml", to_yaml(cfg, provenance=versions))
    todo = [k for k in range(cfg.trials) if tr.complete(cfg, store, k) is None]
    # Each launch takes the trials in its own random order, so concurrent launches of the same
    # run mostly compute different trials instead of waiting on each other's leases.
    random.shuffle(todo)
    log.info(
        "run %s: %d trial(s), %d to compute, store %s", cfg.run_id, cfg.trials, len(todo), store.url
    )
    progress = Progress(cfg, out, cfg.trials - len(todo), log)
    if train_resources is None and todo and network_specs(cfg):
        train_resources = runtime.train_resources(runtime.dask_client(), None)
    steps = {k: submit_trial(cfg, out, k, versions, train_resources or {}) for k in todo}
    follow(progress, store, steps)

    run_info = {"prefect_api": os.environ.get("PREFECT_API_URL"), "flow_runs": flow_runs(store)}
    summary = aggregate_task(cfg, out, run_info)
    publish(cfg, out, summary)
    if summary["failed_trials"]:
        msg = (
            f"{len(summary['failed_trials'])} trial(s) failed: "
            f"{summary['failed_trials']}; rerun the same command (or retry this flow run) to "
            f"recompute only those (summary: {store.url}/summary.json)"
        )
        log.error("run %s finished in state Failed: %s", cfg.run_id, msg)
        # A Failed state, not an exception: the run is marked failed without a traceback.
        return Failed(message=msg)
    return summary

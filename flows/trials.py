"""The subflow ``trials``: every trial of a config into its run folder, then the aggregate.

    check that the workers share the store → config.yaml → which trials are left
    → per trial: kernels → per network: train → theory → result      (TrialSteps)
    → aggregate → results table and report artifacts

A step after a failed one still runs and ends at once as ``UpstreamFailed`` naming the failure;
nothing stays Pending. The store's verified ``result.json`` decides which trials are done.
"""

from __future__ import annotations

import queue
import random
import uuid

import dask
from prefect import flow, get_run_logger
from prefect.settings import get_current_settings
from prefect.states import Failed

from flows import endings, internals, signals, workers
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


def _same_filesystem(cfg: Config, store: Store) -> bool:
    """Whether the workers see this store as the flow does without asking them: worker
    processes of a local cluster (started by this flow, on this machine) and a local folder."""
    return cfg.compute.cluster in ("local", "cuda") and store.local


class TrialSteps:
    """Each trial's steps, each submitted as its upstream step ends: kernels → each network's
    training → its theory → the result, then the trial ends (progress).

    Why not one graph of Prefect futures submitted up front: a later step must run even when
    its upstream failed, to end at once as UpstreamFailed (nothing may stay Pending in the UI).
    Prefect's way is to pass the upstream future wrapped in ``allow_failure``; on the
    DaskTaskRunner (prefect-dask 0.3) that wrapper does not survive Dask's packing of the
    task's arguments, so the step is left ``Pending``/``NotReady`` ("Upstream task run … did not
    reach a 'COMPLETED' state") under a generic name (tests/test_browser.py shows it). So each
    step is submitted when its upstream ended, with the upstream's failure as a parameter;
    the ends arrive as Prefect future callbacks, not by polling.
    """

    def __init__(self, cfg: Config, out: str, versions: dict, resources: dict, progress):
        self.cfg, self.out, self.versions, self.progress = cfg, out, versions, progress
        self.resources, self.store = resources, Store(out)
        self.specs = network_specs(cfg)  # one network per depth (and grid point of a sweep)
        self.pending: dict = {}  # future -> (trial, step, network spec or None)
        self.theories: dict[int, list] = {}  # trial -> the error (or None) of each theory
        self.ended: queue.Queue = queue.Queue()

    def submit(self, k: int, step: str, spec=None, error: str | None = None) -> None:
        cfg, out = self.cfg, self.out
        if step == "trial":
            fut = trial_task.submit(cfg, out, k, self.versions)
        elif step == "train":
            with dask.annotate(**({"resources": self.resources} if self.resources else {})):
                fut = train_task.submit(cfg, out, k, spec.name, error)
        elif step == "theory":
            fut = theory_task.submit(cfg, out, k, spec.name, error)
        else:
            fut = finish_task.submit(cfg, out, k, self.versions, error)
        self.pending[fut] = (k, step, spec)
        fut.add_done_callback(self.ended.put)

    def run(self, todo: list[int]) -> None:
        """Submit every trial and follow its steps to the end, moving the progress as each
        step ends and, between, every second (with the epochs of the trainings running)."""
        self.progress.follow_epochs()
        for k in todo:
            self.submit(k, "trial")
        while self.pending:
            try:
                fut = self.ended.get(timeout=1.0)
            except queue.Empty:
                fut = None
            if fut is not None:
                self.step_ended(fut, *self.pending.pop(fut))
            self.progress.update(running={k for k, _, _ in self.pending.values()})
        self.progress.update()

    def step_ended(self, fut, k: int, step: str, spec) -> None:
        state = _final_state(fut)
        error = (
            None if state is not None and state.is_completed() else self.error(k, step, spec, state)
        )
        if step == "trial" and self.specs:
            if error is None:
                self.progress.kernels_done.add(k)
            self.theories[k] = []
            for s in self.specs:
                self.submit(k, "train", s, error)
        elif step == "train":  # its theory follows, or ends at once naming the failure
            self.submit(k, "theory", spec, error)
        elif step == "theory":  # the result step follows every network's theory
            self.theories[k].append(error)
            if len(self.theories[k]) == len(self.specs):
                self.submit(k, "result", None, next((e for e in self.theories[k] if e), None))
        else:
            done = tr.load_result(self.store, k) is not None  # the store decides, not the future
            cause = None if done else error or self.error(k, step, spec, state)
            self.progress.trial_ended(k, done, cause)  # the first failure, with its step

    def error(self, k: int, step: str, spec, state) -> str:
        """What a later step names as its cause: an upstream's own UpstreamFailed message is
        passed on as it is (the first failure), any other failure is named here."""
        if state is not None and state.name == "UpstreamFailed" and state.message:
            return state.message.removeprefix("not run: ")
        name = f"trial-{k:03d}" + (f"/{step}/{spec.name}" if spec is not None else "")
        return f"{name} failed ({_failure(self.store, k, state)})"


def rerun_hint(cfg: Config) -> str:
    """How to recompute the failed trials: a rerun, unless a fault set to fire on every run
    (``faults.*`` without ``faults.fail_once``) would fail them again."""
    f = cfg.faults
    armed = [name for name in ("fail_trials", "fail_networks") if getattr(f, name)]
    if not armed or f.fail_once:
        return "rerun the same command (or retry this flow run) to recompute only those"
    keys = " and ".join(f"faults.{name}" for name in armed)
    drop = " ".join(f"--set faults.{name}=[]" for name in armed)
    verb, it = ("is", "it") if len(armed) == 1 else ("are", "them")
    return f"{keys} {verb} set: drop {it} ({drop}) to recompute them"


def _final_state(fut):
    """The ended future's Prefect state (None if it could not be read). A task run Dask gave up
    on (every worker running it died: KilledWorker) cannot end itself: it is ended Crashed here,
    naming Dask's error, instead of staying Running in the UI."""
    fut.wait()  # sets the state the task returned, without asking the API
    try:
        state = fut.state
    except Exception:  # noqa: BLE001 - API unreachable: the store decides
        return None
    if state is not None and not state.is_final():
        error = fut.wrapped_future.exception()
        why = f"{type(error).__name__}: {error}" if error else "its worker reported no end"
        state = endings.crash_task_run(fut.task_run_id, why)
    return state


def _failure(store: Store, k: int, state) -> str:
    """What failed in trial k, never "None": its error.json, else the task's final state."""
    err = tr.recorded_error(store, k)
    if err:
        return err
    if state is not None and state.message:
        return f"{state.name}: {state.message}"
    return f"no result.json and no error recorded (final state {getattr(state, 'name', '?')})"


@flow(name="trials", log_prints=True)
def run_trials(
    cfg: Config, out: str, train_resources: dict | None = None, todo: list[int] | None = None
) -> dict:
    """Every trial of ``cfg`` into the run folder ``out``, then the aggregate.

    Runs as a subflow of ``experiment``, which picks its Dask task runner per flow run;
    ``train_resources`` are the Dask resources of a training task (None: GPU=1 where workers
    declare GPUs); ``todo``: the trials left to compute when the caller knows them (else they
    are looked up here)."""
    log = get_run_logger()
    signals.reclaim_signals()  # SIGTERM stops the run at once (ntkflow run only)
    store = Store(out)
    if todo is None:
        todo = [k for k in range(cfg.trials) if tr.complete(cfg, store, k) is None]
    if todo and not _same_filesystem(cfg, store):
        try:
            check_store(out)  # before any work: the workers' writes must be visible here
        except preflight.PlaceError as e:  # a usage error, reported without a traceback
            log.error("%s", e)
            return Failed(message=str(e), data=e)
    versions = report.versions()
    store.write_text("config.yaml", to_yaml(cfg, provenance=versions))
    # Each launch takes the trials in its own random order, so concurrent launches of the same
    # run mostly compute different trials instead of waiting on each other's leases.
    todo = random.sample(todo, len(todo))
    progress = Progress(cfg, out, todo, log)  # "run …: 8 trial(s), 3 to compute (63 new items)"
    if train_resources is None and todo and network_specs(cfg):
        train_resources = workers.train_resources(workers.dask_client(), None)
    with internals.lean_tasks():  # settings shipped as they are, task runs untagged
        TrialSteps(cfg, out, versions, train_resources or {}, progress).run(todo)

    run_info = {"prefect_api": get_current_settings().api.url, "flow_runs": flow_runs(store)}
    summary = aggregate_task(cfg, out, run_info)
    publish(cfg, out, summary)
    if summary["failed_trials"]:
        msg = (
            f"{len(summary['failed_trials'])} trial(s) failed: {summary['failed_trials']}; "
            f"{rerun_hint(cfg)} (summary: {store.url}/summary.json)"
        )
        log.error("run %s finished in state Failed: %s", cfg.run_id, msg)
        # A Failed state, not an exception: the run is marked failed without a traceback.
        return Failed(message=msg)
    return summary

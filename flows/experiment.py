"""The Prefect flows: ``experiment`` (the entry point of ``ntkflow run``/``sweep`` and of every
deployment) builds the config from what a person types, starts or joins the Dask cluster and runs
its subflow ``trials`` there: each trial's kernels, then each network's training and theory, then
its result, fanned out as tasks; then the aggregate.

Tasks are thin: each calls one step of :mod:`ntkflow.trial` with the config and the store URL,
and returns a small JSON-able record. The store's verified ``result.json`` is the ground truth,
so a rerun of the same experiment (same run id) or a retry of its flow run skips finished trials
and recomputes the rest.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import math
import os
import random
import time
import uuid

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.states import Failed

from flows import runtime
from ntkflow import compute, preflight, report
from ntkflow import trial as tr
from ntkflow.config import Config, network_spec, network_specs, to_yaml
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


class UpstreamFailed(RuntimeError):
    """A trial's later step was not run because an earlier one failed."""


def _upstream_failed(upstream: str):
    """The terminal state of a step that cannot run; ``upstream`` names the failed step and
    its error ("trial-001 failed (InjectedFault: ...)")."""
    msg = f"not run: {upstream}"
    return Failed(name="UpstreamFailed", message=msg, data=UpstreamFailed(msg))


@contextlib.contextmanager
def _logged_errors(store: Store, k: int):
    """Record a failure in the trial's error.json and log its traceback in the task's logs
    (Prefect itself logs it only once retries are used up, which a deterministic error skips)."""
    try:
        with tr.recording_errors(store, k):
            yield
    except Exception as exc:
        get_run_logger().error(
            "trial-%03d failed: %s: %s", k, type(exc).__name__, exc, exc_info=True
        )
        raise


@task(task_run_name="check-store", retries=0)
def store_check_task(out: str, token: str) -> str:
    """On a worker: write a probe file into the store (the flow reads it back)."""
    return preflight.probe_write(out, token)


@task(task_run_name="trial-{k:03d}", **RETRY)
def trial_task(cfg: Config, out: str, k: int, versions: dict) -> dict:
    """Data and every kernel of trial k; finishes the trial when it has no networks."""
    store = Store(out)
    with _logged_errors(store, k):  # under the trial's lease; waits for a live holder
        status = tr.kernel_part(cfg, store, k, versions, on_wait=get_run_logger().info)
    if status == tr.ELSEWHERE:
        get_run_logger().info("trial-%03d was finished by another run", k)
    return {"trial": k, "status": status}


def _network_task_name(step: str):
    """Task run name ``trial-007/<step>/NN1`` (``NN1@w1024`` in a width sweep)."""

    def name() -> str:
        from prefect.runtime import task_run

        p = task_run.parameters
        spec = network_spec(p["cfg"], p["depth"], p.get("width"))
        return f"trial-{p['k']:03d}/{step}/{spec.name}"

    return name


def _network_store(cfg: Config, out: str) -> Store:
    """The store of a network step, with torch's threads set for this worker (imported only
    by steps that run: a step after a failed one ends before it)."""
    from ntkflow.train import set_torch_threads

    set_torch_threads(cfg.compute.threads_per_worker)
    return Store(out)


@task(task_run_name=_network_task_name("train"), **RETRY)
def train_task(
    cfg: Config,
    out: str,
    k: int,
    depth: int,
    width: int | None = None,
    upstream_error: str | None = None,
):
    """One network of trial k, on the worker's GPU when it has one (dask-cuda pins cuda:0)."""
    if upstream_error is not None:
        return _upstream_failed(upstream_error)
    store = _network_store(cfg, out)
    spec = network_spec(cfg, depth, width)
    epochs = cfg.networks.epochs[cfg.networks.depths.index(depth)]
    with _logged_errors(store, k):
        item = tr.network_part(
            cfg,
            store,
            k,
            depth,
            compute.torch_device(),
            on_wait=get_run_logger().info,
            progress=_epoch_logger(k, spec.name, epochs),
            width=width,
        )
    return {"trial": k, "method": item["method"], "rmse": item["rmse"]}


@task(task_run_name=_network_task_name("theory"), **RETRY)
def theory_task(
    cfg: Config,
    out: str,
    k: int,
    depth: int,
    width: int | None = None,
    upstream_error: str | None = None,
):
    """The linearized predictors and their agreement with the trained network (SPEC §6)."""
    if upstream_error is not None:
        return _upstream_failed(upstream_error)
    store = _network_store(cfg, out)
    with _logged_errors(store, k):
        items = tr.theory_item(cfg, store, k, depth, width)
    return {"trial": k, "methods": {i["method"]: i["rmse"] for i in items}}


@task(task_run_name="trial-{k:03d}/result", **RETRY)
def finish_task(cfg: Config, out: str, k: int, versions: dict, upstream_error: str | None = None):
    if upstream_error is not None:
        return _upstream_failed(upstream_error)
    store = Store(out)
    with _logged_errors(store, k):
        return {"trial": k, "status": tr.finish_part(cfg, store, k, versions)}


@task(task_run_name="aggregate")
def aggregate_task(cfg: Config, out: str, run_info: dict) -> dict:
    return report.aggregate(cfg, Store(out), run_info)


PROGRESS_TOPIC = "ntkflow-progress"


def _epoch_logger(k: int, name: str, epochs: int):
    """Training callback: log the losses and publish the epoch to the flow (Dask event)."""
    log = get_run_logger()

    def on_epoch(epoch: int, row: dict) -> None:
        log.info(
            "trial-%03d %s epoch %d/%d: train loss %.4g, val loss %.4g",
            k,
            name,
            epoch,
            epochs,
            row["train_loss"],
            row["val_loss"],
        )
        try:
            from distributed import get_worker

            get_worker().log_event(PROGRESS_TOPIC, {"trial": k, "net": name, "epoch": epoch})
        except ValueError:  # not on a Dask worker
            pass

    return on_epoch


def _dask_client():
    """The flow's Dask client: its DaskTaskRunner's (which is not registered as the default
    client, so ``distributed.get_client()`` alone finds none in the flow). ValueError if none."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    client = getattr(getattr(ctx, "task_runner", None), "client", None)
    if client is None:
        from distributed import get_client

        return get_client()
    return client


def _gpu_annotation(resources: dict | None = None) -> dict:
    """Dask resource annotation for training tasks: ``resources`` when given (the cluster plan's,
    checked against the workers by the flow ``experiment``), else GPU=1 when workers declare it."""
    if resources is not None:
        return {"resources": resources} if resources else {}
    try:
        return {"resources": {"GPU": 1}} if compute.cluster_has_gpus(_dask_client()) else {}
    except ValueError:  # no client: not on Dask
        return {}


def _check_store(out: str) -> None:
    """Before any work: a worker writes the store and this process reads it back (else a
    PlaceError: results written where the flow cannot see them would be lost)."""
    token = uuid.uuid4().hex
    fut = store_check_task.submit(out, token)
    try:
        host = fut.result()
    except Exception as e:  # noqa: BLE001 - whatever the worker hit writing the store
        raise preflight.worker_cannot_write(out, e) from e
    preflight.probe_read(out, token, host)


def _artifact_key(kind: str, cfg: Config, out: str) -> str:
    """``kind-<run id>-<store digest>``: runs of one experiment in two stores keep apart."""
    return f"{kind}-{cfg.run_id}-{hashlib.sha256(out.encode()).hexdigest()[:6]}"


def _sig(v, digits: int = 4):
    """A float rounded to ``digits`` significant digits (tables stay readable)."""
    if isinstance(v, float) and math.isfinite(v) and v != 0:
        return round(v, digits - 1 - math.floor(math.log10(abs(v))))
    return v


def _results_table(summary: dict) -> list[dict]:
    cols = ("n", "mean_rmse", "se", "median", "q1", "q3")
    return [
        {"method": m, **{c: _sig(s[c]) for c in cols if c in s}}
        for m, s in summary["methods"].items()
    ]


def _report_markdown(store: Store) -> str:
    """report.md with the box plot embedded as a data URI (the UI cannot load a store path)."""
    png = base64.b64encode(store.read_bytes("boxplot.png")).decode()
    md = store.read_bytes("report.md").decode()
    return md.replace("](boxplot.png)", f"](data:image/png;base64,{png})")


def _flow_runs(store: Store) -> list[dict]:
    """This flow run (id, name, UI URL, and its parent `experiment` run's) after those recorded
    by earlier runs of the same id."""
    from prefect.runtime import flow_run

    prev = (store.read_json("summary.json") or {}).get("run", {}).get("flow_runs", [])
    parent = flow_run.parent_flow_run_id  # the flow `experiment` (the one to retry), if any
    this = {
        "id": str(flow_run.id),
        "name": flow_run.name,
        "url": _ui_url(f"runs/flow-run/{flow_run.id}"),
        "experiment_id": parent,
        "experiment_url": _ui_url(f"runs/flow-run/{parent}") if parent else None,
        "api": os.environ.get("PREFECT_API_URL"),
    }
    return [r for r in prev if isinstance(r, dict) and r.get("id") != this["id"]] + [this]


def _ui_url(path: str) -> str | None:
    """The Prefect UI URL of ``path``: PREFECT_UI_URL, else the API URL without ``/api``."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    base = settings.ui_url or str(settings.api.url or "").removesuffix("/").removesuffix("/api")
    return f"{base.rstrip('/')}/{path}" if base else None


class _Progress:
    """Trials done, failed and running, with training epochs: the progress artifact and log."""

    def __init__(self, cfg: Config, out: str, reused: int, log):
        self.cfg, self.log, self.total = cfg, log, cfg.trials
        self.ok, self.failed, self.kernels_done = reused, [], set()
        self.epochs: dict[tuple[int, str], int] = {}  # (trial, network) -> last epoch
        self.start = time.monotonic()
        self.todo = cfg.trials - reused
        self.id = create_progress_artifact(
            self.value(),
            key=_artifact_key("progress", cfg, out),
            description=self.describe(),
        )
        self.shown = (self.value(), self.describe())

    def trial_fraction(self, k: int) -> float:
        """Share of trial k done: its kernel step and each network's epochs, equally weighted."""
        n = self.cfg.networks
        if not n.enabled:
            return 0.0
        parts = [1.0 if k in self.kernels_done else 0.0]
        parts += [
            self.epochs.get((k, s.name), 0) / n.epochs[n.depths.index(s.depth)]
            for s in network_specs(self.cfg)
        ]
        return sum(parts) / len(parts)

    def value(self, running=()) -> float:
        share = self.ok + sum(self.trial_fraction(k) for k in running)
        return round(100.0 * share / self.total, 2)

    def describe(self) -> str:
        failed = f", {len(self.failed)} failed" if self.failed else ""
        return f"{self.ok}/{self.total} trials done{failed} (run {self.cfg.run_id})"

    def follow_epochs(self) -> None:
        """Receive the training tasks' epoch events (pushed by the scheduler as they come)."""
        try:
            _dask_client().subscribe_topic(PROGRESS_TOPIC, self._on_epoch)
        except ValueError:  # no Dask client: progress moves with trials only
            pass

    def _on_epoch(self, event) -> None:
        msg = event[1]
        key = (msg["trial"], msg["net"])
        self.epochs[key] = max(self.epochs.get(key, 0), msg["epoch"])

    def trial_ended(self, k: int, ok: bool, error: str | None = None) -> None:
        finished = self.ok + len(self.failed) + 1 - (self.total - self.todo)
        if ok:
            self.ok += 1
            eta = (time.monotonic() - self.start) / finished * (self.todo - finished)
            self.log.info("trial-%03d done [%s, ETA %.0f s]", k, self.describe(), eta)
        else:
            self.failed.append(k)
            self.log.error("trial-%03d FAILED [%s]: %s", k, self.describe(), error)

    def update(self, running=()) -> None:
        shown = (self.value(running), self.describe())
        if shown != self.shown:
            update_progress_artifact(self.id, shown[0], description=shown[1])
            self.shown = shown


def _failure(store: Store, k: int, state) -> str:
    """What failed in trial k, never "None": its error.json, else the task's final state."""
    err = (store.read_json(f"{tr.trial_dir(k)}/error.json") or {}).get("error")
    if err:
        return err
    if state is not None and state.message:
        return f"{state.name}: {state.message}"
    return f"no result.json and no error recorded (final state {getattr(state, 'name', '?')})"


def _final_state(fut):
    """The finished future's Prefect state (None if it could not be read)."""
    fut.wait()
    try:
        return fut.state
    except Exception:  # noqa: BLE001 - API unreachable: the store decides
        return None


def _is_done(fut) -> bool:
    wrapped = getattr(fut, "wrapped_future", None)
    if wrapped is not None and hasattr(wrapped, "done"):
        return wrapped.done()
    return fut.state.is_final()


def _run_trials(
    cfg: Config, out: str, store: Store, todo: list[int], versions: dict, progress, resources
):
    """Submit each trial's steps as the previous one ends (kernels → each network's training →
    its theory → the result); a step after a failed one still runs as a task that ends at once
    in a Failed state naming the failure (nothing stays Pending)."""
    import dask

    specs = network_specs(cfg)  # one network per depth, or per (depth, width) in a sweep
    pending: dict = {}  # future -> (trial, step, network spec or None)
    nets: dict[int, list] = {}  # trial -> one error (or None) per network whose theory ended

    def failed(k: int, name: str, state) -> str:
        return f"{name} failed ({_failure(store, k, state)})"

    def submit(k: int, step: str, spec, error: str | None) -> None:
        if step == "train":
            with dask.annotate(**_gpu_annotation(resources)):
                fut = train_task.submit(cfg, out, k, spec.depth, spec.width, error)
        elif step == "theory":
            fut = theory_task.submit(cfg, out, k, spec.depth, spec.width, error)
        else:
            fut = finish_task.submit(cfg, out, k, versions, error)
        pending[fut] = (k, step, spec)

    progress.follow_epochs()
    for k in todo:
        pending[trial_task.submit(cfg, out, k, versions)] = (k, "trial", None)
    while pending:
        ended = [f for f in pending if _is_done(f)]
        for fut in ended:
            k, step, spec = pending.pop(fut)
            state = _final_state(fut)
            ok = state is not None and state.is_completed()
            if step == "trial" and specs:
                if ok:
                    progress.kernels_done.add(k)
                error = None if ok else failed(k, f"trial-{k:03d}", state)
                nets[k] = []
                for s in specs:
                    submit(k, "train", s, error)
                continue
            if step == "train":  # its theory follows, or ends at once naming the failure
                name = f"trial-{k:03d}/train/{spec.name}"
                submit(k, "theory", spec, None if ok else _upstream_error(state, name, failed, k))
                continue
            if step == "theory":  # the result step follows every network's theory
                name = f"trial-{k:03d}/theory/{spec.name}"
                nets[k].append(None if ok else _upstream_error(state, name, failed, k))
                if len(nets[k]) == len(specs):
                    submit(k, "result", None, next((e for e in nets[k] if e), None))
                continue
            done = tr.load_result(store, k) is not None  # the store, not the future, is the truth
            progress.trial_ended(k, done, None if done else _failure(store, k, state))
        progress.update(running={k for k, _, _ in pending.values()})
        if not ended:
            time.sleep(0.5)


def _upstream_error(state, name: str, failed, k: int) -> str:
    """What a later step names as its cause: an upstream step's own UpstreamFailed message is
    passed on as it is (the first failure), any other failure is named here."""
    if state is not None and state.name == "UpstreamFailed" and state.message:
        return state.message.removeprefix("not run: ")
    return failed(k, name, state)


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
        _check_store(out)  # before any work: the workers' writes must be visible here
    except preflight.PlaceError as e:  # a usage error, reported without a traceback
        log.error("%s", e)
        return Failed(message=str(e), data=e)
    versions = report.versions()
    store.write_text("config.yaml", to_yaml(cfg, provenance=versions))
    trials = list(range(cfg.trials))
    todo = [k for k in trials if tr.complete(cfg, store, k) is None]
    # Each launch takes the trials in its own random order, so concurrent launches of the same
    # run mostly compute different trials instead of waiting on each other's leases.
    random.shuffle(todo)
    log.info(
        "run %s: %d trial(s), %d to compute, store %s",
        cfg.run_id,
        len(trials),
        len(todo),
        store.url,
    )
    progress = _Progress(cfg, out, len(trials) - len(todo), log)
    _run_trials(cfg, out, store, todo, versions, progress, train_resources)
    progress.update()

    run_info = {
        "prefect_api": os.environ.get("PREFECT_API_URL"),
        "flow_runs": _flow_runs(store),
    }
    summary = aggregate_task(cfg, out, run_info)
    create_table_artifact(
        _results_table(summary),
        key=_artifact_key("results", cfg, out),
        description=f"test RMSE per method (4 significant digits), run {cfg.run_id}",
    )
    create_markdown_artifact(
        _report_markdown(store),
        key=_artifact_key("report", cfg, out),
        description=f"report of run {cfg.run_id} (also {store.url}/report.md)",
    )
    if summary["failed_trials"]:
        msg = (
            f"{len(summary['failed_trials'])} trial(s) failed: "
            f"{summary['failed_trials']}; rerun the same command (or retry this flow run) to "
            "recompute only those "
            f"(summary: {store.url}/summary.json)"
        )
        log.error("run %s finished in state Failed: %s", cfg.run_id, msg)
        # A Failed state, not an exception: the run is marked failed without a traceback.
        return Failed(message=msg)
    return summary


def run_name(cfg: Config, preset: str) -> str:
    return f"{cfg.run_id}-{preset}-{cfg.formulas}"


def run_tags(cfg: Config, preset: str) -> tuple[str, ...]:
    return (f"run:{cfg.run_id}", f"preset:{preset}", f"formulas:{cfg.formulas}")


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
    from prefect import tags
    from prefect.settings import PREFECT_API_URL

    from flows.runtime import prepare_workers, task_runner_at
    from ntkflow import launch
    from ntkflow.config import ConfigError

    log = get_run_logger()
    try:
        cfg = launch.build_config(preset, overrides, cluster, kernels_only)
        plan = compute.resolve_cluster(cfg.compute.cluster, cfg.compute)
        store = launch.open_store(out).child(cfg.run_id)
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
            # A subflow on this cluster (its failures are in its state, never raised here);
            # it checks that the workers share the store, then writes config.yaml. Runs of one
            # experiment are found together in the UI: named and tagged by run id, preset and
            # formulas.
            trials = run_trials.with_options(
                task_runner=task_runner_at(address), flow_run_name=run_name(cfg, preset)
            )
            with tags(*run_tags(cfg, preset)):
                state = trials(cfg, store.url, resources, return_state=True)
    except ConfigError as e:
        return _refused(e)
    if state.is_completed():
        return state.result()
    try:
        error = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - no result stored: the message says why
        error = None
    if isinstance(error, (ConfigError, preflight.PlaceError)):  # bad input: the CLI exits 2
        return _refused(error)
    # the subflow's own message ("1 trial(s) failed: [1]; ..."), not Prefect's "1/1 states failed"
    return Failed(message=state.message)

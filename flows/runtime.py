"""Prefect and Dask around a flow run: the embedded API, the workers (Prefect API URL, the
resources a training needs), the task runner, and signals (nothing is left running)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from distributed.diagnostics.plugin import WorkerPlugin

from ntkflow import compute

STARTUP_TIMEOUT = int(os.environ.get("NTKFLOW_PREFECT_STARTUP_TIMEOUT", "300"))


class EmbeddedAPI:
    """Prefect's embedded API server of one command: the uvicorn process that Prefect's own
    ``SubprocessASGIServer`` runs (UI off, ephemeral services), started *without* importing
    the server into this process (seconds of imports this process never uses) and without
    waiting: it boots while this process gets the flow ready, and :meth:`wait` blocks until it
    answers. It reads the same profile and environment as this process."""

    def __init__(self):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.process = self._start()

    def _start(self):
        import subprocess

        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            # No block types registered at start: Prefect imports every installed collection
            # first (prefect-kubernetes, -docker, -dask: ~1.5-2.5 s of this server's boot,
            # even when a memo says nothing changed). No run of ntkflow uses a stored block,
            # and `prefect server start` registers them for its UI on the same database.
            "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
            "PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
        }
        args = ["--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1"]
        args += ["--port", str(self.port), "--log-level", "error", "--lifespan", "on"]
        return subprocess.Popen([sys.executable, "-c", _UVICORN, *args], env=env)

    def wait(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Until the server answers /health; RuntimeError if it exits or times out. Until
        then, whatever else answers on its port (a process that took the port first, speaking
        another protocol) is no answer: the server then exits with "address in use" and is
        started on another port."""
        import http.client
        import time
        import urllib.request

        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code == 3:  # uvicorn's "address already in use": the port was taken meanwhile
                self.port = _free_port()
                self.url = os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{self.port}/api"
                self.process = self._start()
                continue
            if code is not None:
                raise RuntimeError(f"the embedded Prefect server exited with status {code}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the embedded Prefect server did not answer in {timeout} s")
            time.sleep(0.1)

    def stop(self) -> None:
        import subprocess

        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# ``python -m uvicorn`` that exits without its last garbage collections (the server is stopped
# at the end of every run, and waited for)
_UVICORN = (
    "import runpy, sys; from ntkflow.compute import exit_without_collecting; "
    "exit_without_collecting(); sys.argv[0] = 'uvicorn'; "
    "runpy.run_module('uvicorn', run_name='__main__', alter_sys=True)"
)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def prefect_api():
    """Use PREFECT_API_URL when set; otherwise start Prefect's embedded server for this run.

    Yields ``(url, server)``: ``server`` is the :class:`EmbeddedAPI` (None for a given API),
    already starting; call its ``wait()`` before the first API call. Its URL is exported at
    once, so the worker processes report to it instead of each starting an ephemeral server of
    its own. The first start on 2 cores (database migrations) can take a minute: the timeout
    is generous.
    """
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"], None
        return
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    server = EmbeddedAPI()
    os.environ["PREFECT_API_URL"] = server.url
    cert = _one_certificate() if "PREFECT_API_SSL_CERT_FILE" not in os.environ else None
    try:
        yield server.url, server
    finally:
        if server.process.poll() is None:
            _flush_logs()
        del os.environ["PREFECT_API_URL"]
        server.stop()
        if cert:
            del os.environ["PREFECT_API_SSL_CERT_FILE"]


def _one_certificate() -> str:
    """A CA file of one certificate, exported as PREFECT_API_SSL_CERT_FILE for this command
    and its workers. The embedded API is plain HTTP on 127.0.0.1, so no certificate is ever
    checked, yet every Prefect client (two per task run) loads its CA file into a TLS context:
    ~50 ms for the whole certifi bundle, ~1 ms for one certificate.

    The file lives in the Prefect home, written once (atomically) and reused by every later
    command: nothing to remove, so a command killed at any moment leaves nothing behind."""
    from prefect.settings import PREFECT_HOME

    path = ca_file(PREFECT_HOME.value())
    os.environ["PREFECT_API_SSL_CERT_FILE"] = path
    return path


def ca_file(folder) -> str:
    """``folder/ntkflow-api-ca.pem``: the first certificate of certifi's bundle, written if
    missing or different (a temporary sibling renamed over it)."""
    import re
    import uuid
    from pathlib import Path

    import certifi

    bundle = Path(certifi.where()).read_text()
    cert = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", bundle, re.S)
    path = Path(folder).expanduser() / "ntkflow-api-ca.pem"
    if not path.is_file() or path.read_text() != cert.group(0):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        tmp.write_text(cert.group(0))
        os.replace(tmp, path)
    return str(path)


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


class AllocatorPlugin(WorkerPlugin):
    """Dask worker plugin: large arrays reuse freed memory (:func:`compute.reuse_freed_memory`)
    and the process exits without its last garbage collections
    (:func:`compute.exit_without_collecting`), also in workers that join later."""

    name = "ntkflow-allocator"

    def setup(self, worker) -> None:
        compute.reuse_freed_memory()
        compute.exit_without_collecting()


def prepare_workers(client, api_url: str | None) -> int:
    """Export the run's Prefect API URL into every worker, also those joining later, and let
    their allocator reuse freed memory; returns the number of workers connected now.

    Workers started elsewhere (by hand, Slurm, Kubernetes) do not inherit this process's
    environment; without the URL each one would start a private ephemeral Prefect server and
    its task runs would be lost to the UI. An embedded API listens on 127.0.0.1, so it reaches
    workers on this machine only: for workers elsewhere, run `prefect server start` and set
    PREFECT_API_URL everywhere.
    """
    client.register_plugin(AllocatorPlugin())
    if api_url:
        client.register_plugin(PrefectAPIPlugin(api_url))
    return len(compute.worker_resources(client))


def train_resources(client, declared: dict | None) -> dict:
    """The Dask resources a training task asks for: those the cluster plan declares, else
    (an existing scheduler) GPU=1 where the connected workers declare GPUs."""
    if declared is not None:
        return declared
    return {"GPU": 1} if compute.cluster_has_gpus(client) else {}


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


@contextlib.contextmanager
def lean_tasks():
    """Within: each task submitted ships the least Prefect needs, and the least to unpack.

    Measured per task on 2 cores, with the embedded API serving 2 busy workers
    (benchmarks/prefect_floor.py, and sampling profiles of a worker in ``ntkflow run``):

    - **Settings.** The Dask task runner ships the caller's context with each task. Prefect
      renders its settings to a dict for every task (secrets included, over the whole
      settings tree: ~0.1 s in this process), and the worker validates that dict back into
      settings, reading the environment and the profile files again for each of ~45 sections
      (~0.15 s). The settings of a flow run do not change while it runs, so every task gets
      the flow's own settings object, which unpickles as it is.
    - **The flow run.** Likewise its context is shipped as the objects it holds (flow run,
      parameters, result store), not dumped to dicts that each worker validates back (~0.09 s
      per task). Validating the result store's storage block from its dict looks the block
      class up by slug, which first imports every Prefect collection installed: ~2.3 s of
      CPU in every worker where prefect-kubernetes is installed.
    - **Tags.** Prefect asks the API for tag concurrency slots before every *tagged* task run:
      one blocking call per task (~0.19 s with the embedded API busy), even where no limit
      exists. So task runs carry no tags; the flow runs keep theirs (run id, preset, formulas:
      ``flows.experiment.run_tags``), and the UI finds a run's tasks through its flow run.
    - **Code.** Tasks and flows pickle their function by reference (:func:`pickle_by_reference`).

    Whoever asks for a serialization without secrets still gets Prefect's rendering.
    """
    from prefect.context import EngineContext, SettingsContext, TagsContext

    pickle_by_reference()

    class Shipped(SettingsContext):
        def serialize(self, include_secrets: bool = True) -> dict:
            if not include_secrets:  # rendered, for whoever asks for it without secrets
                return super().serialize(include_secrets=False)
            return {"profile": self.profile, "settings": self.settings}

    ctx = SettingsContext.get()
    with contextlib.ExitStack() as stack:
        stack.enter_context(Shipped(profile=ctx.profile, settings=ctx.settings))
        stack.enter_context(TagsContext(current_tags=set()))
        run = EngineContext.get()
        if run is not None:
            stack.enter_context(_shipped_run(run))
        yield


SHIPPED_RUN_FIELDS = (  # what Prefect's EngineContext.serialize ships, besides the result store
    "flow_run",
    "flow",
    "parameters",
    "log_prints",
    "start_time",
    "input_keyset",
    "persist_result",
)


def _shipped_run(run):
    """The flow run context ``run`` as a context that serializes to the objects it holds: the
    same fields, the same objects (task counters, results, client and task runner shared)."""
    from prefect._internal.result_records import ResultRecordMetadata
    from prefect.context import EngineContext
    from prefect.flows import Flow
    from prefect.tasks import Task

    class ShippedRun(EngineContext):
        def serialize(self, include_secrets: bool = True) -> dict:
            if not include_secrets:
                return super().serialize(include_secrets=False)
            out = {f: getattr(self, f) for f in SHIPPED_RUN_FIELDS if f in self.model_fields_set}
            if self.result_store:
                out["result_store"] = self.result_store
            return out

    # the forward references Prefect resolves the same way (prefect.context.hydrated_context)
    ShippedRun.model_rebuild(
        _types_namespace={"Flow": Flow, "Task": Task, "ResultRecordMetadata": ResultRecordMetadata}
    )
    fields = {f: getattr(run, f) for f in type(run).model_fields}
    return ShippedRun.model_construct(_fields_set=set(run.model_fields_set), **fields)


def pickle_by_reference() -> None:
    """Pickle Prefect tasks and flows with their function by reference (module and name), as
    functions are, not by value.

    cloudpickle ships a function by reference only when its module attribute of the same name
    *is* that function; the attribute of a Prefect task or flow is the Task or Flow wrapping
    it, so every submission pickled the task's function, and the subflow's (in the flow
    context shipped with each task), by value: their code, their globals and, for each code
    object, a scan of ``sys.modules`` (~30 ms per trial task in ``ntkflow run``, in the process
    that submits them all). A Task or Flow now pickles its attributes as before, except the
    function, which the unpickling process imports: that of the module attribute it came from
    (``with_options`` copies included). Workers import ``flows`` anyway (this module's worker
    plugins). Tasks and flows of a script (``__main__``), which no worker can import, and
    functions that are no module's task or flow are pickled as before.
    """
    import copyreg

    from prefect.flows import Flow
    from prefect.tasks import Task

    for cls in (Task, Flow):
        copyreg.pickle(cls, _reduce_by_reference)


def _reduce_by_reference(obj):
    fn = getattr(obj, "fn", None)
    module, name = getattr(fn, "__module__", None), getattr(fn, "__name__", None)
    importable = module not in (None, "__main__", "__mp_main__")  # a script: no worker has it
    origin = getattr(sys.modules.get(module), name, None) if importable and name else None
    if getattr(origin, "fn", None) is not fn:
        return obj.__reduce_ex__(4)  # object's own reduction: copyreg's table is not consulted
    refs = [key for key, value in vars(obj).items() if value is fn]  # fn, __wrapped__
    state = {key: value for key, value in vars(obj).items() if value is not fn}
    return _with_function, (type(obj), module, name, refs, state)


def _with_function(cls, module: str, name: str, refs: list, state: dict):
    import importlib

    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    fn = getattr(importlib.import_module(module), name).fn
    for key in refs:
        setattr(obj, key, fn)
    return obj


def task_runner_at(address: str):
    """The Dask task runner of a flow run on the cluster already started at ``address``."""
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(address=address)


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
    for p in children:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=grace)


def exit_on_signals(signals=(signal.SIGINT, signal.SIGTERM), spare: int | None = None) -> None:
    """On SIGINT/SIGTERM: say so, cancel the run's batch jobs, stop the workers and the embedded
    server (not the child ``spare``, the watchdog), cancel again, exit 128 + signal.

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
        name = signal.Signals(signum).name
        print(f"\nntkflow: {name}: {INTERRUPTED}", file=sys.stderr, flush=True)
        _mark_crashed(f"{name}: {INTERRUPTED}")
        compute.cancel_jobs()  # the run's batch jobs, pending or running, before it exits
        stop_children(spare=spare)
        compute.cancel_jobs()  # and those submitted meanwhile
        sys.stdout.flush()
        os._exit(128 + signum)

    global _HANDLER
    _HANDLER = handler
    for s in signals:
        signal.signal(s, handler)


_HANDLER = None


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

    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
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

"""Every use of Prefect's internals in ntkflow, in one module, behind one version guard.

Prefect's public API has no way to ship a task less than it does (benchmarks/prefect_floor.py
measures what that costs), so this module reaches into what Prefect does not promise to keep:

- :func:`pickle_by_reference`: copyreg reducers for ``Task`` and ``Flow`` (their attributes as
  they are, their function by reference);
- :func:`lean_tasks`: subclasses of ``SettingsContext`` and ``EngineContext`` overriding
  ``serialize``, one built with ``model_construct`` and rebuilt with the forward references
  Prefect resolves (``prefect._internal.result_records``);
- :func:`flush_logs`: draining Prefect's log and event workers (``drain_all`` of its queue
  services) before the embedded server stops;
- :data:`EPHEMERAL_SERVER_ENV`: the private flags (``PREFECT__SERVER_*``) that Prefect's own
  ephemeral server is started with;
- :func:`refresh_settings`: Prefect's process-wide settings read again
  (``prefect.context.refresh_global_settings_context``, undocumented) after the environment
  changed;
- :func:`rename_flow_run`: renaming and tagging the running flow run through its client.

The patches (the first two) are applied only on the Prefect version they were written and
measured against, :data:`WRITTEN_FOR`. On any other version each entry point takes Prefect's
plain path (nothing patched: tasks ship what Prefect ships) and the process warns once, naming
both versions. The others are no patches: :func:`flush_logs` is best effort on every version (a
missing method is an error it swallows), an environment variable a version does not know is
ignored by it, :func:`refresh_settings` does nothing where the function is missing, and
:func:`rename_flow_run` calls the client's public ``update_flow_run``; reading the version would
import Prefect (1-2 s) in the command before the embedded server starts, which is what
:mod:`flows.server` avoids.
"""

from __future__ import annotations

import contextlib
import sys
import warnings

WRITTEN_FOR = "3.8.8"

# What Prefect's SubprocessASGIServer (prefect.server.api.server) sets for its ephemeral
# server, read by ``create_app``: no UI, no background services; the last app of the process.
EPHEMERAL_SERVER_ENV = {"PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}

_warned = False


def patches_apply() -> bool:
    """Whether the running Prefect is :data:`WRITTEN_FOR`; if not, warn (once per process)
    that ntkflow takes Prefect's plain path."""
    global _warned
    import prefect

    found = prefect.__version__
    if found == WRITTEN_FOR:
        return True
    if not _warned:
        _warned = True
        warnings.warn(
            f"ntkflow's Prefect optimizations were written for prefect {WRITTEN_FOR}, this is "
            f"prefect {found}: they are not applied (tasks ship as Prefect ships them, slower)",
            RuntimeWarning,
            stacklevel=2,
        )
    return False


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
      This is public API (a tags context), so it holds on every Prefect version: what a task
      run carries does not change with the version.
    - **Code.** Tasks and flows pickle their function by reference (:func:`pickle_by_reference`).

    Whoever asks for a serialization without secrets still gets Prefect's rendering. On a
    Prefect other than :data:`WRITTEN_FOR`, only the tags are cleared.
    """
    from prefect.context import EngineContext, SettingsContext, TagsContext

    lean = patches_apply()
    with contextlib.ExitStack() as stack:
        if lean:
            pickle_by_reference()
            stack.enter_context(_shipped_settings(SettingsContext.get()))
        stack.enter_context(TagsContext(current_tags=set()))
        run = EngineContext.get()
        if lean and run is not None:
            stack.enter_context(_shipped_run(run))
        yield


def _shipped_settings(ctx):
    """The settings context ``ctx`` as one that serializes to its settings object itself."""
    from prefect.context import SettingsContext

    class Shipped(SettingsContext):
        def serialize(self, include_secrets: bool = True) -> dict:
            if not include_secrets:  # rendered, for whoever asks for it without secrets
                return super().serialize(include_secrets=False)
            return {"profile": self.profile, "settings": self.settings}

    return Shipped(profile=ctx.profile, settings=ctx.settings)


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
    functions are, not by value; on a Prefect other than :data:`WRITTEN_FOR`, nothing changes.

    cloudpickle ships a function by reference only when its module attribute of the same name
    *is* that function; the attribute of a Prefect task or flow is the Task or Flow wrapping
    it, so every submission pickled the task's function, and the subflow's (in the flow
    context shipped with each task), by value: their code, their globals and, for each code
    object, a scan of ``sys.modules`` (~30 ms per trial task in ``ntkflow run``, in the process
    that submits them all). A Task or Flow now pickles its attributes as before, except the
    function, which the unpickling process imports: that of the module attribute it came from
    (``with_options`` copies included). Workers import ``flows`` anyway (the worker plugins of
    :mod:`flows.workers`). Tasks and flows of a script (``__main__``), which no worker can
    import, and functions that are no module's task or flow are pickled as before.
    """
    import copyreg

    from prefect.flows import Flow
    from prefect.tasks import Task

    if not patches_apply():
        return
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


def flush_logs(timeout: float = 10) -> None:
    """Best effort: send the log lines and events Prefect still holds in this process (its
    queue services' ``drain_all``), so they reach the embedded server before it stops."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout)
        except Exception:  # noqa: BLE001 - best effort before shutting the server down
            pass


def refresh_settings() -> None:
    """Prefect's process-wide settings read again from the environment and the profile, where
    Prefect is imported already (it reads them once, at its import; a variable exported later
    is not seen by its clients). Nothing where Prefect is not imported yet or has no such
    function."""
    context = sys.modules.get("prefect.context")
    refresh = getattr(context, "refresh_global_settings_context", None)
    if refresh is not None:
        refresh()


def rename_flow_run(name: str, tags) -> bool:
    """Name the flow run of this process ``name`` and add ``tags`` to its own, unless it has
    all of them (it was started with them); True when it was renamed. The API's client updates
    the flow run (``update_flow_run``, which replaces the tags: they are merged here), and the
    flow run of the running context is given the same name and tags, which Prefect reads for its
    log lines."""
    from prefect import get_client
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    run = ctx.flow_run if ctx is not None else None
    if run is None or set(tags) <= set(run.tags):
        return False
    merged = [*run.tags, *(t for t in tags if t not in run.tags)]
    with get_client(sync_client=True) as client:
        client.update_flow_run(run.id, name=name, tags=merged)
    run.name, run.tags = name, merged
    return True

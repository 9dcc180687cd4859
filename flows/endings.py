"""Final states, set from this process, for runs that cannot set their own.

A command stopped by a signal exits at once (:mod:`flows.signals`): its flow runs, the flow
``experiment`` and its subflow ``trials``, would stay Running in the UI, and so would every task
run its Dask workers were running (stopped with the command, they report nothing more). A worker
lost for good (Dask's KilledWorker) leaves the task run it was running Running too. Here those
runs are ended Crashed, with a message saying why: every flow run of the command (the one running
in this thread, its parents and their subflows) and every task run of those not yet final.
Bounded in time: the API may be gone or slow; what could not be marked is said, not raised.
"""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

OPEN = ["SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING"]  # Prefect's non-final types


def current_flow_run():
    """The flow run of this thread's flow run context, or None (no flow run, or Prefect not
    imported or half imported: a signal may come during its import; nothing is imported here)."""
    run_context = getattr(sys.modules.get("prefect.context"), "FlowRunContext", None)
    ctx = run_context.get() if run_context is not None else None
    return None if ctx is None else ctx.flow_run


def crash_command(message: str, timeout: float = 5.0, settle: float = 1.0) -> str | None:
    """End Crashed every flow run of this command and every task run of those that is not yet
    final, with ``message``; returns None when done (or no flow run is running here), else
    why not (the API did not answer within ``timeout`` seconds, or refused).

    The task runs are looked for twice, ``settle`` seconds apart (when the timeout leaves time
    for it): a task run whose first events were on their way to the server when the workers
    stopped is recorded a moment later."""
    flow_run = current_flow_run()
    if flow_run is None:
        return None
    deadline = time.monotonic() + timeout
    return _bounded(lambda client: _crash_all(client, flow_run, message, deadline, settle), timeout)


def crash_task_run(task_run_id, message: str, timeout: float = 10.0):
    """End the task run ``task_run_id`` Crashed with ``message`` (its worker is gone); returns
    the Crashed state (set, or not when the API could not be reached)."""
    from prefect.states import Crashed

    state = Crashed(message=message)
    _bounded(lambda client: client.set_task_run_state(task_run_id, state, force=True), timeout)
    return state


def _bounded(send, timeout: float) -> str | None:
    """``send(client)`` with Prefect's sync client, in a daemon thread waited for at most
    ``timeout`` seconds: None once it returned, else what happened."""
    outcome: list[str | None] = []

    def run() -> None:
        try:
            from prefect.client.orchestration import get_client

            with get_client(sync_client=True) as client:
                send(client)
            outcome.append(None)
        except Exception as e:  # noqa: BLE001 - said by the caller, never raised
            outcome.append(f"{type(e).__name__}: {e}")

    t = threading.Thread(target=run, daemon=True, name="ntkflow-endings")
    t.start()
    t.join(timeout)
    return outcome[0] if outcome else f"the Prefect API did not answer within {timeout:g} s"


def _crash_all(client, flow_run, message: str, deadline: float, settle: float) -> None:
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.states import Crashed

    flow_runs = _family(client, flow_run)
    of_command = FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in flow_runs]))
    still_open = TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=OPEN)))

    def mark(item) -> None:
        kind, run_id = item
        setter = client.set_flow_run_state if kind == "flow" else client.set_task_run_state
        setter(run_id, Crashed(message=message), force=True)

    todo = [("flow", r.id) for r in flow_runs if _is_open(r)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for look in (1, 2):
            tasks = client.read_task_runs(flow_run_filter=of_command, task_run_filter=still_open)
            todo += [("task", t.id) for t in tasks]
            list(pool.map(mark, todo))  # every one tried; the first error, if any, raised
            todo = []
            if look == 1 and time.monotonic() + settle + 1.0 < deadline:
                time.sleep(settle)
            else:
                return


def _family(client, flow_run) -> list:
    """Every flow run of the command running ``flow_run``: up to the one without a parent, then
    down through every subflow of those."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    root = flow_run
    while root.parent_task_run_id is not None:
        root = client.read_flow_run(client.read_task_run(root.parent_task_run_id).flow_run_id)
    family, level = [client.read_flow_run(root.id)], [root.id]
    while level:
        parents = FlowRunFilterParentFlowRunId(any_=level)
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=parents))
        children = [c for c in children if c.id not in {r.id for r in family}]
        family += children
        level = [c.id for c in children]
    return family


def _is_open(run) -> bool:
    return run.state_type is None or run.state_type.value in OPEN

"""flows.internals' version guard: on a Prefect other than the one its patches were written
for, nothing of Prefect is patched (tasks ship as Prefect ships them) and the process is told
so once, naming both versions. Real Prefect throughout; only the version string it reports is
changed."""

from __future__ import annotations

import copyreg
import warnings

import cloudpickle
import prefect
import pytest
from prefect import tags
from prefect.context import EngineContext, SettingsContext, TagsContext, serialize_context
from prefect.flows import Flow
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.tasks import Task

from flows import internals

OTHER = "3.99.0"


@pytest.fixture
def other_prefect(monkeypatch):
    """This process as if it ran Prefect ``OTHER``: not yet warned, no reducer registered (an
    earlier test of the session may have registered them on the real version)."""
    monkeypatch.setattr(prefect, "__version__", OTHER)
    monkeypatch.setattr(internals, "_warned", False)
    for cls in (Task, Flow):
        monkeypatch.delitem(copyreg.dispatch_table, cls, raising=False)


def _our_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "ntkflow" in str(w.message)]


def test_another_prefect_version_takes_prefects_plain_path(other_prefect):
    """Neither entry point patches anything; Prefect's own methods are the ones that run; the
    tags are still cleared (public API); one warning for two calls of each entry point."""
    from flows.tasks import trial_task

    prefects = (SettingsContext.serialize, EngineContext.serialize)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # the guard's own flag must do the once-only
        for _ in range(2):
            internals.pickle_by_reference()
            with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
                with tags("run:abc"), internals.lean_tasks():
                    assert type(SettingsContext.get()) is SettingsContext
                    assert TagsContext.get().current_tags == set()
                    shipped = serialize_context()
    assert Task not in copyreg.dispatch_table and Flow not in copyreg.dispatch_table
    assert (SettingsContext.serialize, EngineContext.serialize) == prefects
    # Prefect's rendering of the settings (a dict), not the settings object itself
    assert isinstance(shipped["settings_context"]["settings"], dict)
    # the task's function pickled by value, as cloudpickle does without the reducer
    assert trial_task.fn.__code__.co_code in cloudpickle.dumps(trial_task)
    (message,) = _our_warnings(caught)
    assert internals.WRITTEN_FOR in message and OTHER in message


def test_the_version_written_for_patches_without_a_warning(monkeypatch):
    """On :data:`WRITTEN_FOR` (the pinned Prefect) the guard lets the patches in, silently."""
    monkeypatch.setattr(prefect, "__version__", internals.WRITTEN_FOR)
    monkeypatch.setattr(internals, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert internals.patches_apply()
        with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
            with internals.lean_tasks():
                ctx = SettingsContext.get()
                assert type(ctx) is not SettingsContext and isinstance(ctx, SettingsContext)
                assert serialize_context()["settings_context"]["settings"] is ctx.settings
    assert _our_warnings(caught) == []
    assert copyreg.dispatch_table[Task] is internals._reduce_by_reference


@pytest.mark.slow
def test_another_prefect_version_leaves_the_flow_run_context_alone(
    other_prefect, prefect_home, monkeypatch
):
    """In a real flow run (embedded API), on another version: inside lean_tasks the flow run
    context is Prefect's own, and it is shipped as Prefect serializes it."""
    from prefect import flow
    from prefect.context import FlowRunContext

    from flows.embedded import EmbeddedAPI

    monkeypatch.setenv("PREFECT_HOME", str(prefect_home))
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    embedded = EmbeddedAPI()

    @flow
    def a_flow(k: int):
        before = FlowRunContext.get()
        with internals.lean_tasks():
            inside = FlowRunContext.get()
            shipped = serialize_context()["flow_run_context"]
        return inside is before, type(shipped["flow_run"]).__name__

    try:
        embedded.wait(timeout=300)
        with temporary_settings({PREFECT_API_URL: embedded.url}):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                same, flow_run = a_flow(3)
            internals.flush_logs()
    finally:
        embedded.stop()
    assert same
    assert flow_run == "dict"  # Prefect dumps the flow run to a dict for the worker to validate
    assert len(_our_warnings(caught)) == 1

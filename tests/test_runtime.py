"""flows.internals, flows.server and flows.embedded: what tasks are shipped with, and the embedded
API's start and stop."""

from __future__ import annotations

import pickle
import socket
import threading
import urllib.request

import pytest
from prefect import tags
from prefect.context import SettingsContext, TagsContext, hydrated_context, serialize_context
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

from flows import embedded as server_process
from flows import internals, server
from flows.internals import lean_tasks


def test_lean_tasks_ship_the_flows_settings_and_no_tags(monkeypatch):
    """Inside, a task is shipped the caller's settings themselves (Prefect's rendering of them
    never runs) and no tags; a worker unpacking what was shipped (pickled, as Dask sends it)
    gets settings equal to the caller's, field by field, secrets included. Outside, the
    caller's settings and tags are back."""
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # never called
        _lean_tasks_ship(monkeypatch)


def _lean_tasks_ship(monkeypatch):
    before = SettingsContext.get()
    rendered = []
    prefects = SettingsContext.serialize
    monkeypatch.setattr(
        SettingsContext, "serialize", lambda self, **kw: rendered.append(1) or prefects(self, **kw)
    )
    with tags("run:abc"):
        with lean_tasks():
            shipped = pickle.loads(pickle.dumps(serialize_context()))
            assert TagsContext.get().current_tags == set()
            without_secrets = SettingsContext.get().serialize(include_secrets=False)
        assert TagsContext.get().current_tags == {"run:abc"}
    assert rendered == [1]  # only for the caller that asked without secrets
    assert isinstance(without_secrets["settings"], dict)
    assert shipped["tags_context"]["current_tags"] == set()
    with hydrated_context(shipped):
        unpacked = get_current_settings()
        assert unpacked is not before.settings  # a copy, as a worker process gets it
        assert unpacked.model_dump(context={"include_secrets": True}) == before.settings.model_dump(
            context={"include_secrets": True}
        )
        assert SettingsContext.get().profile == before.profile
    assert SettingsContext.get() is before


def test_the_embedded_api_starts_on_another_port_when_its_port_is_taken(prefect_home, monkeypatch):
    """Between finding a free port and binding it, another process (a Dask worker of a run
    alongside) may take it and answer /health in its own protocol: that is no answer, and the
    server, unable to bind, is started again on another port, whose URL this process's Prefect
    (imported meanwhile) then uses."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()

    def speak_dask():  # what a Dask comm sends first: not HTTP
        while True:
            try:
                conn, _ = taken.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"\x00\x00compression python pickle-protocol\n")

    threading.Thread(target=speak_dask, daemon=True).start()
    ports = iter([taken.getsockname()[1]])
    free = server_process._free_port
    monkeypatch.setattr(server_process, "_free_port", lambda: next(ports, None) or free())
    monkeypatch.setenv("PREFECT_HOME", str(prefect_home))
    monkeypatch.setenv("PREFECT_API_URL", "")  # wait() exports the new port's URL
    embedded = server_process.EmbeddedAPI()
    try:
        embedded.wait(timeout=300)
        assert embedded.port != taken.getsockname()[1]
        with urllib.request.urlopen(f"{embedded.url}/health", timeout=10) as r:
            assert r.status == 200
        assert get_current_settings().api.url == embedded.url
    finally:
        embedded.stop()
        taken.close()
        monkeypatch.undo()
        internals.refresh_settings()  # this process's Prefect settings as before the test


def test_lean_tasks_ship_the_flow_run_as_the_objects_it_holds(prefect_home, monkeypatch):
    """In a real flow run (embedded API): inside lean_tasks, the flow run context is one with
    the same objects (task counters shared); what is shipped, pickled as Dask sends it, unpacks
    in a fresh thread into the same flow run, parameters and result store without looking up
    a block class (which imports every Prefect collection installed)."""
    import cloudpickle
    import prefect.blocks.core
    from prefect import flow
    from prefect.context import FlowRunContext

    monkeypatch.setenv("PREFECT_HOME", str(prefect_home))
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    embedded = server_process.EmbeddedAPI()

    @flow
    def a_flow(cfg: dict, k: int):
        before = FlowRunContext.get()
        with lean_tasks():
            inside = FlowRunContext.get()
            shipped = cloudpickle.dumps(serialize_context())  # as Dask sends it
        assert FlowRunContext.get() is before
        assert inside is not before and inside.task_run_dynamic_keys is before.task_run_dynamic_keys
        return shipped, before.flow_run.id, before.result_store

    try:
        embedded.wait(timeout=300)
        with temporary_settings({PREFECT_API_URL: embedded.url}):  # not an ephemeral server
            shipped, run_id, store = a_flow({"n_obs": 1000}, 3)
            internals.flush_logs()  # the run's logs and events reach the server before it stops
    finally:
        embedded.stop()
    looked_up = []
    lookup = prefect.blocks.core.load_prefect_collections
    monkeypatch.setattr(
        prefect.blocks.core, "load_prefect_collections", lambda: looked_up.append(1) or lookup()
    )
    unpacked = {}

    def worker():  # no flow run here, as on a Dask worker
        assert FlowRunContext.get() is None
        with hydrated_context(pickle.loads(shipped)):
            ctx = FlowRunContext.get()
            unpacked.update(id=ctx.flow_run.id, params=ctx.parameters, store=ctx.result_store)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert unpacked == {"id": run_id, "params": {"cfg": {"n_obs": 1000}, "k": 3}, "store": store}
    assert looked_up == []


def test_tasks_and_flows_pickle_their_function_by_reference(monkeypatch):
    """A module's Prefect task or flow (and a ``with_options`` copy of it) pickles with its
    function by reference: the function's code is not in the pickle, and unpickling gives the
    module's own function back, with every other attribute as it was. A task that is no
    module attribute, or a script's (``__main__``, which workers cannot import), still ships
    its function by value."""
    import sys

    import cloudpickle
    from prefect import task

    from flows.tasks import trial_task
    from flows.trials import run_trials

    internals.pickle_by_reference()
    copy = run_trials.with_options(flow_run_name="copy")
    for obj in (trial_task, copy):
        data = cloudpickle.dumps(obj)
        assert obj.fn.__code__.co_code not in data
        back = pickle.loads(data)
        assert type(back) is type(obj) and back.fn is obj.fn and back.__wrapped__ is obj.fn
        assert back.name == obj.name and back.description == obj.description
    assert pickle.loads(cloudpickle.dumps(copy)).flow_run_name == "copy"
    assert pickle.loads(cloudpickle.dumps(trial_task)).retries == trial_task.retries
    local = task(lambda x: x + 1, name="local")  # made here: no module holds it
    data = cloudpickle.dumps(local)
    assert local.fn.__code__.co_code in data and pickle.loads(data).fn(1) == 2

    def scripted(x):
        return x + 2

    scripted.__module__, scripted.__qualname__ = "__main__", "scripted"
    monkeypatch.setattr(sys.modules["__main__"], "scripted", task(scripted), raising=False)
    data = cloudpickle.dumps(sys.modules["__main__"].scripted)
    assert scripted.__code__.co_code in data and pickle.loads(data).fn(1) == 3


def test_the_api_ca_file_is_written_once_and_reused(tmp_path):
    """The embedded API's CA file (one certificate) lives in the Prefect home: the same file
    for every command, nothing beside it, and a damaged one is written again."""
    import ssl

    path = server.ca_file(tmp_path)
    text = open(path).read()
    assert server.ca_file(tmp_path) == path
    assert [p.name for p in tmp_path.iterdir()] == ["ntkflow-api-ca.pem"]
    assert text.count("BEGIN CERTIFICATE") == 1
    ssl.create_default_context(cafile=path)  # a CA file TLS loads
    open(path, "w").write(text[:40])
    assert server.ca_file(tmp_path) == path and open(path).read() == text
    assert [p.name for p in tmp_path.iterdir()] == ["ntkflow-api-ca.pem"]


def test_terminate_then_kill_kills_only_what_outlives_the_grace():
    """A process that ends on SIGTERM is not killed; one whose handler ignores SIGTERM is,
    after the grace period; one that ignores it outright (SIG_IGN, Linux says so) is killed at
    once; all are gone (reaped) when the call returns."""
    import subprocess
    import sys
    import time

    import psutil

    from flows.processes import terminate_then_kill

    def start(code: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"import signal, time; {code}; print('ready', flush=True); time.sleep(60)",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline() == "ready\n"  # its handler is in place
        proc.stdout.close()
        return proc

    polite = start("pass")
    stubborn = start("signal.signal(signal.SIGTERM, lambda *a: None)")
    procs = [psutil.Process(polite.pid), psutil.Process(stubborn.pid)]
    t0 = time.monotonic()
    killed = terminate_then_kill(procs, grace=1)
    assert 1 <= time.monotonic() - t0 < 30
    assert [p.pid for p in killed] == [stubborn.pid]
    assert not any(p.is_running() for p in procs)
    polite.wait(timeout=5), stubborn.wait(timeout=5)  # reaped already: returns at once

    deaf = start("signal.signal(signal.SIGTERM, signal.SIG_IGN)")
    t0 = time.monotonic()
    assert terminate_then_kill([gone := psutil.Process(deaf.pid)], grace=60) == []
    assert time.monotonic() - t0 < 30  # killed at once: the 60 s grace was not waited for
    assert not gone.is_running()
    deaf.wait(timeout=5)


def test_a_signal_during_prefects_import_marks_nothing_and_imports_nothing(monkeypatch):
    """The signal handler may run while ``prefect.context`` is half imported (a SIGTERM early in
    ``ntkflow run``): marking the flow run Crashed then finds no flow run, raises nothing and
    imports nothing (an ImportError raised there would surface in the interrupted import,
    which Prefect swallows, and the command would go on)."""
    import sys
    import types

    from flows.endings import crash_command

    monkeypatch.setitem(sys.modules, "prefect.context", types.ModuleType("prefect.context"))
    assert crash_command("SIGTERM: interrupted", timeout=1) is None
    assert not hasattr(sys.modules["prefect.context"], "FlowRunContext")


# stands in for the server: says it is up, then prints noise when stopped (what uvicorn's
# shutdown may log: the requests it cancelled), or dies by itself with a last word
_FAKE_SERVER = """
import signal, sys, time
def stopped(*_):
    print("Traceback (most recent call last): a request cancelled by the stop", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stopped)
print("up", flush=True)
if "{mode}" == "dies":
    print("the database is gone", flush=True)
    sys.exit(7)
time.sleep(120)
"""


def _fake_server(monkeypatch, mode: str) -> server_process.EmbeddedAPI:
    import time

    monkeypatch.setattr(server_process, "_UVICORN", _FAKE_SERVER.format(mode=mode))
    embedded = server_process.EmbeddedAPI()
    deadline = time.monotonic() + 60
    while "up" not in embedded.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    if mode == "dies":
        embedded.process.wait(timeout=60)
    return embedded


def test_what_the_embedded_server_prints_as_it_is_stopped_never_reaches_the_console(
    monkeypatch, capfd
):
    embedded = _fake_server(monkeypatch, "stopped")
    embedded.stop()
    assert embedded.process.returncode == 0  # it printed its noise and exited
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and "up" not in out + err


def test_an_embedded_server_that_dies_during_the_run_is_told_with_its_last_lines(
    monkeypatch, capfd
):
    embedded = _fake_server(monkeypatch, "dies")
    embedded.stop()
    err = capfd.readouterr().err
    assert "the embedded Prefect server had exited with status 7" in err
    assert "the database is gone" in err


def test_an_embedded_server_that_exits_at_its_start_is_an_error_with_its_last_lines(
    monkeypatch, capfd
):
    embedded = _fake_server(monkeypatch, "dies")
    with pytest.raises(RuntimeError, match="exited with status 7(.|\n)*the database is gone"):
        embedded.wait(timeout=60)
    embedded.stop()  # told once: in the error
    assert "had exited" not in capfd.readouterr().err

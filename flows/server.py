"""The Prefect API of one command: PREFECT_API_URL when set, else Prefect's embedded server,
started in a process of its own without importing the server here, with a one-certificate CA
file for its clients."""

from __future__ import annotations

import contextlib
import os
import sys

from flows.internals import EPHEMERAL_SERVER_ENV, flush_logs

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
            **EPHEMERAL_SERVER_ENV,
            # No block types registered at start: Prefect imports every installed collection
            # first (prefect-kubernetes, -docker, -dask: ~1.5-2.5 s of this server's boot,
            # even when a memo says nothing changed). No run of ntkflow uses a stored block,
            # and `prefect server start` registers them for its UI on the same database.
            "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
            "PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
        }
        args = ["--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1"]
        args += ["--port", str(self.port), "--log-level", "error", "--lifespan", "on"]
        # its own process group: a Ctrl-C (to the whole foreground group) does not stop it
        # before the command has marked its runs Crashed; the command stops it (flows.signals)
        return subprocess.Popen([sys.executable, "-c", _UVICORN, *args], env=env, process_group=0)

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
        """Terminate the server, kill it after 5 s; return once it is gone."""
        import psutil

        from flows.processes import terminate_then_kill

        if self.process.poll() is None:  # not yet reaped: its pid is still its own
            with contextlib.suppress(psutil.NoSuchProcess):
                terminate_then_kill([psutil.Process(self.process.pid)], grace=5)
        self.process.wait()


# ``python -m uvicorn`` that exits without its last garbage collections (the server is stopped
# at the end of every run, and waited for)
_UVICORN = (
    "import runpy, sys; from ntkflow.cluster.processes import exit_without_collecting; "
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
            flush_logs()
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

"""Prefect's embedded API server of one command (when Prefect has no API configured): its own
process, started without importing the server here, its output kept aside unless it fails."""

from __future__ import annotations

import contextlib
import os
import sys

from flows.internals import EPHEMERAL_SERVER_ENV, refresh_settings

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
        self.reported = False  # its exit was told in an error already
        self.process = self._start()

    def _start(self):
        """The server's process; its output goes to :attr:`log`, an anonymous temporary file
        (nothing on disk outlives the command, however it ends): a server stopped at the end
        of a run may log the requests its stop cancelled (tracebacks on the command's console,
        after a result or a usage error); what it printed is shown only when it failed
        (:meth:`output`)."""
        import subprocess
        import tempfile

        self.log = tempfile.TemporaryFile()

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
        return subprocess.Popen(
            [sys.executable, "-c", _UVICORN, *args],
            env=env,
            process_group=0,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self, lines: int = 20) -> str:
        """The last ``lines`` lines the server printed, indented, after a newline ("" if none)."""
        self.log.seek(0)
        tail = self.log.read().decode(errors="replace").splitlines()[-lines:]
        return "".join(f"\n  {line}" for line in tail)

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
                refresh_settings()  # a Prefect imported meanwhile took the first URL
                self.log.close()
                self.process = self._start()
                continue
            if code is not None:
                self.reported = True
                raise RuntimeError(
                    f"the embedded Prefect server exited with status {code}{self.output()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                said = f"the embedded Prefect server did not answer in {timeout} s{self.output()}"
                self.stop()
                raise RuntimeError(said)
            time.sleep(0.1)

    def stop(self) -> None:
        """Terminate the server, kill it after 5 s; return once it is gone. A server that had
        exited by itself is reported (a warning with its status and last lines)."""
        import psutil

        from flows.processes import terminate_then_kill

        code = self.process.poll()
        if code is None:  # not yet reaped: its pid is still its own
            with contextlib.suppress(psutil.NoSuchProcess):
                terminate_then_kill([psutil.Process(self.process.pid)], grace=5)
        elif not self.reported:  # it ended by itself during the run
            said = f"the embedded Prefect server had exited with status {code}{self.output()}"
            print(f"ntkflow: {said}", file=sys.stderr)
        self.process.wait()
        self.log.close()


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

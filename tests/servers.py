"""Real servers on 127.0.0.1 for the deployment tests and benchmarks/deployment.py.

PostgreSQL (initdb/pg_ctl on a temporary data directory, run as an unprivileged user when this
process is root, since initdb refuses root), a `prefect server` on it or on SQLite, a Prefect
worker: each a context manager that stops what it started, also when the body fails.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    dirs = [d for d in dirs if Path(d, "initdb").exists() and Path(d, "pg_ctl").exists()]
    return Path(dirs[-1]) if dirs else None


def _as_user(cmd: list[str], user: str | None) -> list[str]:
    return ["runuser", "-u", user, "--", *cmd] if user else cmd


@contextlib.contextmanager
def postgres(workdir: Path):
    """A PostgreSQL server on a free port of 127.0.0.1; yields its asyncpg URL for Prefect."""
    bindir = postgres_bindir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL binaries (initdb, pg_ctl) not found")
    user = None
    if os.geteuid() == 0:  # initdb refuses root: run the server as an unprivileged account
        user = "postgres" if _has_user("postgres") else "nobody"
    # the data directory must belong to that user; a fresh temp dir under /tmp is reachable
    data = Path(tempfile.mkdtemp(prefix="ntkflow-pg-"))
    if user:
        shutil.chown(data, user)
    port = free_port()
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}

    def pg(*args, **kw):
        return subprocess.run(_as_user(list(args), user), env=env, cwd="/", text=True, **kw)

    init = [str(bindir / "initdb"), "-D", str(data), "-U", "prefect", "--auth=trust", "-E", "UTF8"]
    opts = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c max_connections=200"
    try:  # everything after mkdtemp: the server is stopped even if its start timed out
        res = pg(*init, capture_output=True)
        if res.returncode:
            raise RuntimeError(f"initdb failed: {res.stdout}{res.stderr}")
        with open(workdir / "postgres.log", "w") as f:
            pg(
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                opts,
                "-w",
                "-t",
                "120",
                "-l",
                str(data / "server.log"),
                "start",
                check=True,
                stdout=f,
                stderr=f,
            )
        # the initial database `postgres` serves Prefect (one server per data directory)
        yield f"postgresql+asyncpg://prefect@127.0.0.1:{port}/postgres"
    finally:
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop", capture_output=True)
        with contextlib.suppress(OSError):
            shutil.copy(data / "server.log", workdir / "postgres-server.log")
        shutil.rmtree(data, ignore_errors=True)


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def base_env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return {
        **env,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        **extra,
    }


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL; the process and its children (own process group)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait(timeout=timeout)


@contextlib.contextmanager
def prefect_server(
    workdir: Path, database_url: str | None = None, timeout: float = 300, ui: bool = False
):
    """`prefect server start` on a free port (SQLite in its own PREFECT_HOME unless a database
    URL is given; with its UI if ``ui``); yields the API URL."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    extra = {"PREFECT_API_DATABASE_CONNECTION_URL": database_url} if database_url else {}
    if ui:  # the browser's UI calls this API
        extra.update(PREFECT_UI_ENABLED="true", PREFECT_UI_API_URL=api)
    env = base_env(workdir / "server-home", **extra)
    log = open(workdir / "server.log", "w")
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{api}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    raise RuntimeError(
                        "prefect server did not start:\n"
                        + (workdir / "server.log").read_text()[-3000:]
                    ) from None
                time.sleep(1)
        yield api
    finally:
        stop(proc)
        log.close()


def cli(args: list[str], env: dict, timeout: float = 300, check: bool = True):
    """A `prefect` CLI command from the repository root."""
    res = subprocess.run(
        [str(BIN / "prefect"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and res.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return res


@contextlib.contextmanager
def prefect_worker(workdir: Path, env: dict, pool: str):
    """`prefect worker start --pool POOL` in the background (its flow runs are its children)."""
    log = open(workdir / "worker.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", pool],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        stop(proc, timeout=60)
        log.close()


def api_post(api: str, path: str, body: dict | None = None):
    req = urllib.request.Request(
        f"{api}/{path}",
        data=json.dumps(body or {}).encode(),
        headers={"Content-Type": "application/json"},
    )
    return json.loads(urllib.request.urlopen(req, timeout=30).read())


def api_get(api: str, path: str):
    return json.loads(urllib.request.urlopen(f"{api}/{path}", timeout=30).read())


def wait_flow_run(api: str, run_id: str, timeout: float = 600, after: str | None = None) -> dict:
    """The flow run once it is in a terminal state (a state other than ``after``'s id)."""
    deadline = time.monotonic() + timeout
    while True:
        run = api_get(api, f"flow_runs/{run_id}")
        state = run.get("state") or {}
        if state.get("type") in TERMINAL and state.get("id") != after:
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"flow run {run_id} still {state.get('type')} after {timeout} s")
        time.sleep(1)


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextlib.contextmanager
def s3_server(workdir: Path, bucket: str = "ntkflow", timeout: float = 60):
    """A real S3 API (`moto_server`) on a free port of 127.0.0.1 with an empty bucket.

    Yields the environment (``AWS_ENDPOINT_URL`` and dummy credentials) that s3fs, and so every
    process started with it (CLI, Dask workers), honours. Conditional PUTs (``If-None-Match: *``)
    are enforced by it, as on AWS."""
    exe = BIN / "moto_server"
    if not exe.exists():
        raise FileNotFoundError("moto_server not installed (pip install 'moto[server]')")
    port = free_port()
    env = {**S3_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    log = open(workdir / "moto.log", "w")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{env['AWS_ENDPOINT_URL']}/moto-api/", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "moto_server did not start:\n" + (workdir / "moto.log").read_text()
                    ) from None
                time.sleep(0.2)
        with _environ(env):
            import s3fs

            s3fs.S3FileSystem.clear_instance_cache()
            s3fs.S3FileSystem().mkdir(bucket)
            yield env
            s3fs.S3FileSystem.clear_instance_cache()
    finally:
        stop(proc)
        log.close()


@contextlib.contextmanager
def _environ(extra: dict):
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

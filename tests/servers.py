"""Real servers on 127.0.0.1 for the deployment tests and benchmarks/deployment.py.

PostgreSQL (initdb/pg_ctl on a temporary data directory, run as an unprivileged user when this
process is root, since initdb refuses root), a `prefect server` on it or on SQLite, a Prefect
worker: each a context manager that stops what it started, also when the body fails.
"""

from __future__ import annotations

import contextlib
import glob
import http.client
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

from ntkflow.cluster.processes import environ

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback() -> tuple[str, int]:
    """Host and free port for a hand-started scheduler: the IPv6 loopback where this machine
    has one, else 127.0.0.1 (a run on an existing cluster is then still tested, only the
    IPv6 reading of the address is not)."""
    if socket.has_ipv6:
        with contextlib.suppress(OSError):  # no IPv6 loopback here
            with socket.socket(socket.AF_INET6) as s:
                s.bind(("::1", 0))
                return "::1", s.getsockname()[1]
    return "127.0.0.1", free_port()


@contextlib.contextmanager
def dask_cluster(workdir: Path, host: str, port: int):
    """`dask scheduler` on host:port and `dask worker --nworkers 2` of it, as a user starts
    them (a Prefect home of their own, as workers elsewhere have, and no Prefect API), until
    both workers answer; their output goes to workdir/dask.log. Yields the scheduler's
    address."""
    from distributed import Client

    env = base_env(workdir / "worker-home", seeded=False)
    dask = Path(sys.executable).parent / "dask"
    log = (workdir / "dask.log").open("w")
    bracketed = f"[{host}]" if ":" in host else host
    address = f"tcp://{bracketed}:{port}"
    commands = [
        [dask, "scheduler", "--host", bracketed, "--port", port, "--dashboard-address", ":0"],
        [dask, "worker", address, "--nworkers", 2, "--nthreads", 1, "--no-dashboard"],
    ]
    procs = []
    try:
        for cmd in commands:
            procs.append(
                subprocess.Popen(
                    [str(c) for c in cmd],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # stopped as a group (servers.stop)
                )
            )
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for p in reversed(procs):
            stop(p)
        log.close()


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


def seed_home(home: Path) -> Path:
    """A Prefect home whose SQLite database is already migrated: a copy of one made once per
    test session (a fresh home's first server start spends ~10 s of CPU on migrations, which
    every end-to-end launch in its own home would pay again)."""
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "prefect.db").exists():
        shutil.copyfile(template_db(), home / "prefect.db")
    return home


def template_db() -> Path:
    """The migrated database, made by the first test process that needs it (the others of the
    same pytest-xdist run wait on its lock); conftest starts it as the session starts.

    Prefect's own `prefect server database upgrade`: the tables an embedded server of a fresh
    home migrates to before its first run, and no more (no block types: the embedded server
    registers none, and `prefect server start` registers them itself, on any database). It
    costs half the CPU of a server started and stopped (11 vs 20 CPU-s here)."""
    import fcntl
    import sqlite3

    run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
    home = Path(tempfile.gettempdir()) / f"ntkflow-test-prefect-home-{run}"
    db = home / "prefect.db"
    home.mkdir(exist_ok=True)
    with open(home / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (home / "ready").exists():
            env = {**base_env(home, seeded=False), "PREFECT_HOME": str(home)}
            upgrade = [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"]
            res = subprocess.run(upgrade, env=env, capture_output=True, text=True, timeout=900)
            assert res.returncode == 0, f"{' '.join(upgrade[2:])}:\n{res.stdout}{res.stderr}"
            with contextlib.closing(sqlite3.connect(db)) as con:  # one file, no WAL left
                con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            (home / "ready").touch()
    return db


def base_env(home: Path, seeded: bool = True, **extra) -> dict:
    """The environment of a Prefect process in its own home (seeded: a migrated database)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    if seeded:
        seed_home(home)
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
    workdir: Path,
    database_url: str | None = None,
    timeout: float = 300,
    ui: bool = False,
    env: dict | None = None,
):
    """`prefect server start` on a free port (SQLite in its own PREFECT_HOME unless a database
    URL is given; with its UI if ``ui``; ``env`` added to its environment, e.g.
    PREFECT_SERVER_API_AUTH_STRING); yields the API URL.

    A port found free can be taken before the server binds it (by a Dask process of a test
    running alongside): the server then exits, and it is started again on another port."""
    for attempt in range(3):
        port = free_port()
        api = f"http://127.0.0.1:{port}/api"
        extra = {"PREFECT_API_DATABASE_CONNECTION_URL": database_url} if database_url else {}
        if ui:  # the browser's UI calls this API
            extra.update(PREFECT_UI_ENABLED="true", PREFECT_UI_API_URL=api)
        server_env = base_env(workdir / "server-home", **{**extra, **(env or {})})
        log_path = workdir / "server.log"
        log = open(log_path, "w")
        cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        proc = subprocess.Popen(
            cmd, env=server_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            try:
                _wait_http(f"{api}/health", proc, log, log_path, timeout, "prefect server")
            except RuntimeError:
                if attempt < 2 and "already in use" in log_path.read_text():
                    continue  # to the next port (finally: stopped and closed)
                raise
            yield api
            return
        finally:
            stop(proc)
            log.close()


def shared_api(folder: Path, owner: int, timeout: float = 300) -> str:
    """The API URL of one `prefect server start` (SQLite, no UI) that every xdist worker of a
    pytest run shares, for the end-to-end tests whose subject is not the embedded API (the
    store, leases, Slurm, S3, sweeps): their commands then report to a server that is already
    up and warm instead of booting an embedded one each (~8 CPU-s a command). The first
    worker to ask starts it under ``folder``, in a process that stops it once the process
    ``owner`` (the pytest run: xdist's controller) is gone; the others wait for its URL."""
    from filelock import FileLock

    url_file, log_path = folder / "api-url", folder / "keeper.log"
    with FileLock(f"{folder}.lock"):
        folder.mkdir(exist_ok=True)
        if not url_file.exists():
            keeper = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _KEEPER,
                    str(Path(__file__).parent),
                    str(folder),
                    str(owner),
                ],
                stdout=log_path.open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,  # not in a test's process group, which a test may kill
            )
            deadline = time.monotonic() + timeout
            while not url_file.exists():
                if keeper.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "the shared prefect server did not start:\n" + log_path.read_text()[-3000:]
                    )
                time.sleep(0.2)
    return url_file.read_text()


# The keeper of the shared server (shared_api): serves until its owner is gone.
# (ntkflow.lease's liveness check: a zombie owner, killed and not yet reaped, is gone)
_KEEPER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import servers
from ntkflow.lease import _alive
folder, owner = Path(sys.argv[2]), int(sys.argv[3])
with servers.prefect_server(folder) as api:
    (folder / "api-url.tmp").write_text(api)
    (folder / "api-url.tmp").rename(folder / "api-url")
    while _alive(owner):
        time.sleep(1)
"""


def _wait_http(url, proc, log, log_path: Path, timeout: float, name: str, interval=1.0):
    """Wait until ``url`` answers; RuntimeError with the log's tail if ``proc`` dies first or
    ``timeout`` seconds pass. An answer that is not HTTP (another program on the port) is no
    answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except (OSError, http.client.HTTPException):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise RuntimeError(
                    f"{name} did not start:\n" + log_path.read_text()[-3000:]
                ) from None
            time.sleep(interval)


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
        # Its first SIGTERM asks for a graceful stop (SIGINT to itself), which now and then never
        # ends (seen: 60 s, then killed); its process group is killed after 15 s
        stop(proc, timeout=15)
        log.close()


def _auth_header(auth: str | None) -> dict:
    """Prefect's basic auth: ``Authorization: Basic base64(auth)`` for an auth string
    ``user:password`` (PREFECT_API_AUTH_STRING); none without one."""
    if auth is None:
        return {}
    import base64

    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


def api_post(api: str, path: str, body: dict | None = None, auth: str | None = None):
    req = urllib.request.Request(
        f"{api}/{path}",
        data=json.dumps(body or {}).encode(),
        headers={"Content-Type": "application/json", **_auth_header(auth)},
    )
    return json.loads(urllib.request.urlopen(req, timeout=30).read())


def api_get(api: str, path: str, auth: str | None = None):
    req = urllib.request.Request(f"{api}/{path}", headers=_auth_header(auth))
    return json.loads(urllib.request.urlopen(req, timeout=30).read())


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


# `moto_server` as its console script runs it, less two costs of every request that are not
# S3's: a scan of moto's ~150 service folders (os.path.isdir each) to route the request, and a
# log line through werkzeug's logger; together about a third of the server's CPU in
# test_trial_store's S3 cases (py-spy). Routing, responses and conditional PUTs are moto's own.
_MOTO_SERVER = """
import logging, sys
import moto.backends
modules = tuple(moto.backends.list_of_moto_modules())
moto.backends.list_of_moto_modules = lambda: modules
logging.getLogger("werkzeug").setLevel(logging.WARNING)
from moto.server import main
main(sys.argv[1:])
"""


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
        [sys.executable, "-c", _MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"{env['AWS_ENDPOINT_URL']}/moto-api/"
        _wait_http(url, proc, log, workdir / "moto.log", timeout, "moto_server", interval=0.2)
        with environ(env):
            import s3fs

            s3fs.S3FileSystem.clear_instance_cache()
            s3fs.S3FileSystem().mkdir(bucket)
            yield env
            s3fs.S3FileSystem.clear_instance_cache()
    finally:
        stop(proc)
        log.close()


SLURM_DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "scancel", "sinfo")


def slurm_missing() -> str | None:
    """Why a private Slurm cannot start here (None when it can)."""
    missing = [d for d in SLURM_DAEMONS if not shutil.which(d)]
    if missing:
        return f"Slurm not installed ({', '.join(missing)} missing; apt: slurmctld slurmd munge)"
    if os.geteuid() != 0:
        return "a private Slurm runs slurmd as root here; not root"
    return None


def _munged() -> None:
    """A munge daemon (Slurm's authentication) with a key, unless one answers already."""
    if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
        return
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(os.urandom(1024))
    for d in (key.parent, Path("/run/munge"), Path("/var/log/munge"), Path("/var/lib/munge")):
        d.mkdir(parents=True, exist_ok=True)
        shutil.chown(d, "munge", "munge")
    shutil.chown(key, "munge", "munge")
    key.chmod(0o400)
    subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True, capture_output=True)
    for _ in range(50):
        if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("munged did not start")


def slurm_env(conf: Path) -> dict:
    return {"SLURM_CONF": str(conf)}


@contextlib.contextmanager
def slurm(workdir: Path, gpus: int = 2, timeout: float = 60):
    """A private single-node Slurm (slurmctld + slurmd, own ports, state, spool and logs under a
    temporary folder) with ``gpus`` fake GPUs (gres on /dev/tty*) and partitions ``debug``
    (default) and ``gpu``. Yields the environment (``SLURM_CONF``) for its clients; on exit
    every job is cancelled and both daemons are stopped."""
    why = slurm_missing()
    if why:
        raise FileNotFoundError(why)
    _munged()
    base = Path(tempfile.mkdtemp(prefix="ntkflow-slurm-"))
    for d in ("state", "spool", "log"):
        (base / d).mkdir()
    node = socket.gethostname()
    hw = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    hw = hw.splitlines()[0].split(" ", 1)[1]  # CPUs=… Boards=… … RealMemory=…
    conf = base / "slurm.conf"
    conf.write_text(
        f"""ClusterName=ntkflow-test
SlurmctldHost={node}
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/log/slurmctld.log
SlurmdLogFile={base}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MpiDefault=none
ReturnToService=2
MinJobAge=5
KillWait=3
InactiveLimit=0
GresTypes=gpu
NodeName={node} {hw} Gres=gpu:{gpus} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={node} MaxTime=INFINITE State=UP
"""
    )
    devices = f"/dev/tty[0-{gpus - 1}]" if gpus > 1 else "/dev/tty0"
    (base / "gres.conf").write_text(f"Name=gpu File={devices}\n")
    env = {**os.environ, **slurm_env(conf)}
    procs = []
    try:
        for daemon in ("slurmctld", "slurmd"):
            log = open(base / "log" / f"{daemon}.out", "w")
            procs.append(
                subprocess.Popen(
                    [daemon, "-D", "-f", str(conf), *(["-i"] if daemon == "slurmctld" else [])],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + timeout
        while True:
            res = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True)
            if res.stdout.decode().split() and all(
                s.startswith("idle") for s in res.stdout.decode().split()
            ):
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                logs = "".join(
                    (base / "log" / f).read_text()[-2000:]
                    for f in ("slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out")
                    if (base / "log" / f).exists()
                )
                raise RuntimeError(f"Slurm did not come up (sinfo: {res.stdout!r}):\n{logs}")
            time.sleep(0.5)
        yield slurm_env(conf)
    finally:
        subprocess.run(["scancel", "--full", "--user", "root"], env=env, capture_output=True)
        for p in reversed(procs):
            stop(p, timeout=20)
        with contextlib.suppress(OSError):
            shutil.copytree(base / "log", workdir / "slurm-logs", dirs_exist_ok=True)
        shutil.rmtree(base, ignore_errors=True)


def slurm_spec(tmp_path: Path, name="spec", **changes) -> Path:
    """deploy/slurm-gpu.yaml with only site fields changed for the test node: one core and 2 GB
    per job, logs under tmp (``<name>-logs``), and the plain Dask worker command (dask-cuda needs
    CUDA; the job still asks --gres=gpu:1 and the worker still declares GPU=1). ``changes``
    replace further ``kwargs`` keys."""
    import yaml

    spec = yaml.safe_load((ROOT / "deploy/slurm-gpu.yaml").read_text())
    kw = spec["kwargs"]
    kw.update(
        cores=1,
        memory="2GB",
        worker_command="distributed.cli.dask_worker",
        log_directory=str(tmp_path / f"{name}-logs"),
        scheduler_options={"dashboard_address": ":0"},
        job_script_prologue=[*kw["job_script_prologue"], "echo GPU-VISIBLE=$CUDA_VISIBLE_DEVICES"],
    )
    spec["adapt"] = {"minimum": 0, "maximum": 2}
    kw.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path

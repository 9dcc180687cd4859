import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Single-threaded math libraries (OpenBLAS, MKL, OpenMP: torch's CPU kernels) in every test
# process and in what it starts, as on a cluster's workers (ntkflow.cluster.resources.
# worker_env): `make test` runs 4 pytest processes on 2 cores, and a library's threads in one
# of them spin, waiting for CPUs that the others hold. Set before anything imports NumPy or
# torch, which read them once. Measured side by side, `make test-fast`'s pytest: 122 vs 152
# CPU-s (73.5 vs 87.3 s). The tiled Gram's own threads are tested with explicit counts.
MATH_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
for _var in MATH_THREAD_VARS:
    os.environ.setdefault(_var, "1")

# A developer's own Prefect profile never reaches the tests: each Prefect process a test starts
# has a PREFECT_HOME of its own, and reads the profiles file there.
for _var in (
    "PREFECT_PROFILE",
    "PREFECT_PROFILES_PATH",
    "PREFECT_API_KEY",
    "PREFECT_API_AUTH_STRING",
):
    os.environ.pop(_var, None)


def has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.hookimpl(trylast=True)  # after xdist's, which names each grouped test's group
def pytest_collection_modifyitems(config, items):
    if getattr(config.option, "loadgroup", False):  # an xdist worker of `--dist loadgroup`
        lost = [
            i.nodeid for i in items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid
        ]
        if lost:  # pytest 9.2 ignores xdist 3.8's group suffix (pytest-xdist#1386)
            why = (
                f"--dist loadgroup is not grouping {lost[0]} (and {len(lost) - 1} more): the "
                "tests of one xdist_group would each start its session fixtures again; "
                "install the pinned pytest (pip install -e '.[test]')"
            )
            print(f"ERROR: {why}", file=sys.stderr)  # a worker's own error reaches no one
            raise pytest.UsageError(why)
    if has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_lease_left_held():
    """After each test: no lease it took in this process is still held. A held lease renews
    itself in a thread ("lease <path>", ntkflow.lease.Lease) every ttl/4 for as long as the
    process lives (one a test forgot beat its store, S3 included, for the rest of the session)."""
    import threading

    yield
    held = [t.name for t in threading.enumerate() if t.name.startswith("lease ")]
    assert held == [], f"leases the test left held: {held}"


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory) -> Path:
    """A folder of this pytest run that every xdist worker sees: the workers' base temporary
    folders are siblings in the controller's; without xdist the session's own base folder
    (never one shared with other pytest sessions, which may run other code)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def once(shared_dir):
    """``once(name, settings, build) -> folder``: the folder that ``build(folder)`` filled, built
    by the first xdist worker that asks for these settings (under a file lock: the others wait,
    then use it) and kept for the whole session. ``settings`` (JSON-able) name what the folder
    holds; a build that fails leaves nothing, and the next test to ask builds again."""
    from filelock import FileLock

    def get(name: str, settings, build) -> Path:
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        folder = shared_dir / f"{name}-{digest}"
        ready = folder.with_name(folder.name + ".ready")  # beside it: a copy of it never has it
        with FileLock(f"{folder}.lock"):
            if not ready.exists():
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
                build(folder)
                ready.touch()
        return folder

    return get


@pytest.fixture(scope="session")
def prefect_home(tmp_path_factory):
    """One Prefect home (SQLite database, migrated) for every end-to-end test of the session."""
    from servers import seed_home

    return seed_home(tmp_path_factory.mktemp("prefect-home"))


@pytest.fixture(scope="session")
def run_cli(prefect_home):
    """Run the real ``ntkflow`` command in a subprocess (embedded Prefect API unless given)."""

    def run(*args, env=None, timeout=600):
        full = {
            **os.environ,
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            **(env or {}),
        }
        if not (env or {}).get("PREFECT_API_URL"):
            full.pop("PREFECT_API_URL", None)
        exe = shutil.which("ntkflow", path=str(Path(sys.executable).parent))
        cmd = [exe] if exe else [sys.executable, "-m", "flows.cli"]
        return subprocess.run(
            cmd + list(args), cwd=ROOT, env=full, capture_output=True, text=True, timeout=timeout
        )

    return run


@pytest.fixture(scope="session")
def ui_server(tmp_path_factory):
    """``prefect server start`` with its UI, on a free port, in a fresh PREFECT_HOME: the base
    URL (the API is ``<base>/api``). One per xdist worker; the tests that share it are in one
    ``xdist_group("smoke-story")``."""
    from servers import prefect_server

    with prefect_server(tmp_path_factory.mktemp("prefect-server"), ui=True) as api:
        yield api.removesuffix("/api")


@pytest.fixture(scope="session")
def shared_api(shared_dir):
    """The API URL of the pytest run's one shared `prefect server` (SQLite, no UI), for the
    end-to-end tests whose subject is not the embedded API (``servers.shared_api``): started
    by the first xdist worker that asks, stopped once the pytest run is gone."""
    from servers import shared_api

    owner = os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid()
    return shared_api(shared_dir / "shared-api", owner)


SMOKE_STORY = ["--preset", "smoke", "--set", "compute.n_workers=2"]
SMOKE_FAULT = ["--set", "faults.fail_trials=[1]", "--set", "faults.fail_once=true"]


@pytest.fixture(scope="session")
def faulted_smoke(tmp_path_factory, ui_server, run_cli):
    """One smoke run (networks on) with an injected fault in trial 1, against ``ui_server``:
    the run that tests/test_browser.py looks at in the UI and tests/test_flow.py reruns. Its
    ``args`` (``run … --out``), ``out``, its CompletedProcess ``first`` and the ids of its flow
    runs (``flow_runs``), taken before any rerun."""
    from types import SimpleNamespace

    from servers import api_post

    out = tmp_path_factory.mktemp("smoke-story") / "runs"
    args = ["run", *SMOKE_STORY, "--out", str(out), *SMOKE_FAULT]
    first = run_cli(*args, env={"PREFECT_API_URL": f"{ui_server}/api"})
    flow_runs = {f["id"] for f in api_post(f"{ui_server}/api", "flow_runs/filter", {})}
    return SimpleNamespace(args=args, out=out, first=first, flow_runs=flow_runs)


@pytest.fixture(scope="session")
def s3_env(tmp_path_factory):
    """A real S3 API (moto_server) for this test session: the environment (endpoint, dummy
    credentials) is exported here and passed to subprocesses and Dask workers by the tests."""
    from servers import s3_server

    try:
        import s3fs  # noqa: F401
    except ImportError:
        pytest.skip("s3fs is not installed (pip install -e '.[test]')")
    with s3_server(tmp_path_factory.mktemp("s3")) as env:
        yield env


@pytest.fixture
def s3_root(s3_env):
    """A fresh prefix of the test bucket: ``s3://ntkflow/<random>``."""
    import uuid

    return f"s3://ntkflow/{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def slurm_env(tmp_path_factory):
    """A private single-node Slurm for this pytest process (tests/test_slurm.py runs in one xdist
    worker, ``xdist_group("slurm")``; another worker using it starts its own, on other ports);
    SLURM_CONF exported for the commands tests start."""
    from servers import slurm, slurm_missing

    why = slurm_missing()
    if why:
        pytest.skip(why)
    with slurm(tmp_path_factory.mktemp("slurm")) as env:
        os.environ.update(env)
        try:
            yield env
        finally:
            os.environ.pop("SLURM_CONF", None)


def _needs_prefect(item) -> bool:
    """Whether a test starts a Prefect server or a command with a Prefect home of its own
    (through the fixtures or the helpers of tests/servers.py and tests/launch.py)."""
    if {"prefect_home", "run_cli", "ui_server", "shared_api"} & set(item.fixturenames):
        return True
    names = ("servers", "launch")
    return any(
        getattr(v, "__name__", None) in names or getattr(v, "__module__", None) in names
        for v in vars(item.module).values()
    )


def pytest_collection_finish(session):
    """As the session starts, the migrated Prefect database (servers.template_db) is made in the
    background when a collected test needs it: ready by the time the first such test asks, not
    made then while the test waits (20.9 s of a 96 s test-fast here). Its file lock lets one
    process make it; a failure here is the asking test's to report (it makes it again)."""
    import threading

    if not any(_needs_prefect(item) for item in session.items):
        return

    def make():
        from servers import template_db

        with contextlib.suppress(BaseException):
            template_db()

    threading.Thread(target=make, name="template-db", daemon=True).start()

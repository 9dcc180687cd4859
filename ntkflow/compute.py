"""Backend choice: array namespace, torch device, and the Dask cluster behind a run.

``--cluster`` (or the deployment parameter ``cluster``) names the Dask cluster:

- ``local`` (default): a ``distributed.LocalCluster`` of worker processes, one per CPU this
  process may run on (its affinity, which Slurm and cgroups restrict), on the CPU only: the
  workers see no GPU, because several workers of one machine would otherwise all train on
  ``cuda:0``;
- ``cuda``: a ``dask_cuda.LocalCUDACluster``, one worker per GPU, each declaring ``GPU=1``;
- a cluster spec file (``deploy/*.yaml``): a cluster class with its arguments (dask-cuda,
  dask-jobqueue's ``SLURMCluster``, the dask-kubernetes operator's ``KubeCluster``), adaptive
  bounds and the Dask resources a training task needs (see :func:`load_spec`);
- anything else with ``://`` or ``host:port``: the address of an existing scheduler.

GPU placement goes through declared Dask resources only: a training task runs on a GPU when it
is annotated ``GPU=1`` and a worker declares that resource. A run whose trainings need a
resource no connected worker declares fails at once (:func:`check_resources`) instead of
waiting forever, which is what Dask does with unsatisfiable resource restrictions.

Cluster classes come from optional extras and are imported only here, with the extra to
install named in the error. No Prefect import here.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ntkflow.config import ComputeConfig, ConfigError

# Single-threaded math libraries in each worker process: parallelism comes from the workers.
_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NTKFLOW_KERNEL_THREADS",
)
# The optional extra that provides each cluster module (pyproject.toml).
EXTRAS = {"dask_cuda": "gpu", "dask_jobqueue": "slurm", "dask_kubernetes": "k8s"}
ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)
SPEC_KEYS = {"class", "kwargs", "adapt", "train_resources", "kubernetes"}


class ClusterError(ConfigError):
    """A cluster that cannot be used: unknown name or spec, missing extra, missing resources."""

    def __init__(self, message: str):
        super().__init__([("cluster", message)])

    def __reduce__(self):
        return (ClusterError, (self.errors[0][1],))


def _require(module: str, why: str = ""):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        extra = EXTRAS.get(top)
        hint = f"`pip install 'ntkflow[{extra}]'`" if extra else f"install {top}"
        raise ClusterError(f"{why}{top} is not installed: {hint} ({e})") from e


def worker_env(threads_per_worker: int) -> dict[str, str]:
    return {v: str(threads_per_worker) for v in _THREAD_VARS}


# A worker's allocator (glibc): blocks up to 32 MiB (every Gram tile and temporary of a paper
# trial) come from the heap and are reused once freed; the heap is trimmed back to the system
# when 64 MiB at its top are free. These are the values glibc's own adaptive thresholds reach.
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 64 * 2**20


def reuse_freed_memory() -> bool:
    """Set this process's malloc thresholds (glibc only; False elsewhere, changing nothing).

    Dask's nanny exports ``MALLOC_TRIM_THRESHOLD_=65536`` to every worker it spawns
    (``distributed.nanny.pre-spawn-environ``). Setting any threshold turns off glibc's adaptive
    mmap threshold, so every NumPy temporary over 128 KiB is a fresh ``mmap``, faulted in page
    by page and unmapped when freed: a paper trial in a plain process with only that variable
    set took 1.8x its CPU (1.21 s vs 0.67 s; README, Benchmarks). Fixed thresholds at the
    adaptive ones' ceiling restore
    the reuse, on workers of any cluster (they may be started by ``dask worker`` elsewhere).
    """
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(
        mallopt(m_mmap_threshold, MMAP_THRESHOLD) and mallopt(m_trim_threshold, TRIM_THRESHOLD)
    )


def exit_without_collecting() -> None:
    """Let this process end without the interpreter's last garbage collections: ``gc.freeze()``
    at exit, after every other exit handler (registered as the process starts, it runs last).

    A process that imported Prefect spends about a fifth of its import CPU (~1 s on 2 cores)
    walking, as it exits, objects that vanish with it anyway; ``ntkflow run`` waits for its
    own exit, its workers' and the embedded server's. Exit handlers (Prefect's log and event
    queues) have run by then; objects freed by reference counting are still finalized as
    usual, only unreachable cycles are left to the operating system.
    """
    import atexit
    import gc

    atexit.register(gc.freeze)


def end_resource_tracker_at_exit(timeout: float = 2.0) -> None:
    """At exit, end multiprocessing's resource tracker (started with the local cluster's
    worker processes) and reap it, waiting at most ``timeout`` seconds. Left alone it ends
    only once it reads the end of its pipe, a moment after this process is gone: a process
    of the command that outlives it. Registered after :func:`exit_without_collecting`, it
    runs before it."""
    import atexit

    def end() -> None:
        from multiprocessing import resource_tracker

        tracker = resource_tracker._resource_tracker
        fd, pid = getattr(tracker, "_fd", None), getattr(tracker, "_pid", None)
        if fd is None or pid is None:
            return
        with contextlib.suppress(OSError):
            os.close(fd)  # its end of the pipe: the tracker reads EOF and exits
            tracker._fd = None
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:  # never blocks: a worker may still hold it
                if os.waitpid(pid, os.WNOHANG)[0]:
                    tracker._pid = None
                    return
                time.sleep(0.005)

    atexit.register(end)


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask (Slurm, cgroups, taskset), not the host's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def default_workers(threads_per_worker: int = 1) -> int:
    return max(1, available_cpus() // max(1, threads_per_worker))


@dataclass(frozen=True)
class ClusterPlan:
    """How to get the cluster of a run, before starting anything.

    ``cluster_class`` + ``kwargs`` (+ ``adapt``) start a cluster; ``address`` joins one.
    ``train_resources`` are the Dask resources every training task is annotated with; None
    means "GPU=1 if the connected workers declare GPUs, else none" (an existing scheduler).
    """

    name: str
    cluster_class: str | None = None
    kwargs: dict = field(default_factory=dict)
    adapt: dict | None = None
    address: str | None = None
    train_resources: dict | None = field(default_factory=dict)

    def describe(self) -> str:
        if self.address:
            return f"existing scheduler {self.address}"
        bounds = f", adaptive {self.adapt}" if self.adapt else ""
        return f"{self.cluster_class} ({self.name}{bounds})"


def resolve_cluster(name: str, compute: ComputeConfig | None = None) -> ClusterPlan:
    """The plan for ``local``, ``cuda``, a spec file or a scheduler address; ClusterError if none.

    Every check that needs no running cluster happens here: unknown names, unreadable or
    invalid spec files, missing optional extras.
    """
    compute = compute or ComputeConfig()
    threads = compute.threads_per_worker or 1
    env = worker_env(threads)
    if name == "local":
        return ClusterPlan(
            name,
            "distributed.LocalCluster",
            {
                "n_workers": compute.n_workers or default_workers(threads),
                "threads_per_worker": threads,
                "processes": True,
                "dashboard_address": ":0",
                # CPU only: GPUs are used through declared resources (--cluster cuda), never by
                # several workers landing on cuda:0 together.
                "env": {**env, "CUDA_VISIBLE_DEVICES": ""},
            },
        )
    if name == "cuda":
        _require("dask_cuda", "--cluster cuda: ")
        kwargs = {
            "threads_per_worker": threads,
            "resources": {"GPU": 1},
            "dashboard_address": ":0",
            "env": env,
        }
        if compute.n_workers:
            kwargs["n_workers"] = compute.n_workers
        return ClusterPlan(name, "dask_cuda.LocalCUDACluster", kwargs, None, None, {"GPU": 1})
    if re.fullmatch(r"[a-z]+://.+|[\w.-]+:\d+", name) and not name.endswith((".yaml", ".yml")):
        return ClusterPlan(name, address=name, train_resources=None)
    return load_spec(name, compute)


def _find_spec(name: str) -> Path:
    p = Path(name).expanduser()
    for cand in (p, ROOT / p, ROOT / "deploy" / p, ROOT / "deploy" / f"{name}.yaml"):
        if cand.is_file():
            return cand
    specs = sorted(str(s.relative_to(ROOT)) for s in (ROOT / "deploy").glob("*.yaml"))
    specs = [s for s in specs if not s.endswith("prefect.yaml")]
    raise ClusterError(
        f"unknown cluster {name!r}: expected local, cuda, a scheduler address "
        f"(tcp://host:8786) or a cluster spec file ({', '.join(specs) or 'deploy/*.yaml'}); "
        f"no file {name!r} found"
    )


def load_spec(name: str, compute: ComputeConfig | None = None) -> ClusterPlan:
    """A cluster spec file::

        class: dask_jobqueue.SLURMCluster      # dotted path of a Dask cluster class
        kwargs: {...}                          # its keyword arguments
        adapt: {minimum: 0, maximum: 8}        # optional: cluster.adapt(**adapt)
        train_resources: {GPU: 1}              # Dask resources each training task needs
        kubernetes: {...}                      # KubeCluster only: make_cluster_spec arguments
                                               #   plus worker_gpus (GPU limit, workers only)

    The class is imported here, so a missing extra is reported before anything starts.
    """
    compute = compute or ComputeConfig()
    path = _find_spec(name)
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ClusterError(f"cannot read cluster spec {str(path)!r}: {e}") from e
    if not isinstance(spec, dict) or not isinstance(spec.get("class"), str):
        raise ClusterError(f"{str(path)!r}: a cluster spec is a mapping with a 'class' key")
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise ClusterError(f"{str(path)!r}: unknown key(s) {unknown}; valid: {sorted(SPEC_KEYS)}")
    cls = spec["class"]
    module, _, attr = cls.rpartition(".")
    if not hasattr(_require(module, f"{path.name}: "), attr):
        raise ClusterError(f"{str(path)!r}: {module} has no cluster class {attr!r}")
    kwargs = dict(spec.get("kwargs") or {})
    if "kubernetes" in spec:
        kwargs["custom_cluster_spec"] = kube_cluster_spec(**spec["kubernetes"])
    adapt = spec.get("adapt")
    if adapt is not None and (not isinstance(adapt, dict) or set(adapt) - {"minimum", "maximum"}):
        raise ClusterError(f"{str(path)!r}: adapt takes {{minimum, maximum}}, got {adapt!r}")
    resources = spec.get("train_resources") or {}
    if not isinstance(resources, dict):
        raise ClusterError(f"{str(path)!r}: train_resources must be a mapping like {{GPU: 1}}")
    if compute.threads_per_worker:
        kwargs = _with_threads(cls, kwargs, compute.threads_per_worker)
    return ClusterPlan(str(path), cls, kwargs, adapt, None, resources)


def _with_threads(cls: str, kwargs: dict, threads: int) -> dict:
    """``compute.threads_per_worker`` applied to a spec's workers: their Dask threads and their
    math libraries' (after the spec's own prologue, so it wins)."""
    kwargs = dict(kwargs)
    if cls.startswith("dask_jobqueue."):
        args, prologue = kwargs.get("worker_extra_args", []), kwargs.get("job_script_prologue", [])
        exports = " ".join(f"{k}={v}" for k, v in worker_env(threads).items())
        kwargs["worker_extra_args"] = [*args, "--nthreads", str(threads)]
        kwargs["job_script_prologue"] = [*prologue, f"export {exports}"]
    elif cls.startswith("dask_kubernetes."):
        log.warning("compute.threads_per_worker is not applied to %s: set it in the pod spec", cls)
    else:  # LocalCluster, LocalCUDACluster
        kwargs["threads_per_worker"] = threads
        kwargs["env"] = {**kwargs.get("env", {}), **worker_env(threads)}
    return kwargs


def kube_cluster_spec(worker_gpus: int = 0, **make_args) -> dict:
    """A DaskCluster resource from dask-kubernetes' ``make_cluster_spec`` whose *worker* pods
    (only) request ``worker_gpus`` NVIDIA GPUs and declare the Dask resource ``GPU`` to match;
    the scheduler pod gets no GPU."""
    make_cluster_spec = _require("dask_kubernetes.operator").make_cluster_spec
    spec = make_cluster_spec(**make_args)
    if worker_gpus:
        (worker,) = spec["spec"]["worker"]["spec"]["containers"]
        limits = worker.setdefault("resources", {}).setdefault("limits", {})
        limits["nvidia.com/gpu"] = str(worker_gpus)  # the CRD schema types quantities as strings
        worker["args"] += ["--resources", f"GPU={worker_gpus}"]
        (sched,) = spec["spec"]["scheduler"]["spec"]["containers"]
        if sched.get("resources") is worker.get("resources"):  # make_cluster_spec shares it
            sched["resources"] = {k: dict(v) for k, v in worker["resources"].items()}
        for section in sched.get("resources", {}).values():
            section.pop("nvidia.com/gpu", None)
    return spec


def job_name(pid: int | None = None) -> str:
    """The name of every batch job a run submits: unique to the launching process, so its jobs
    can be cancelled by name (also by :mod:`flows.watchdog` once that process is gone)."""
    return f"ntkflow-{socket.gethostname()}-{pid or os.getpid()}"


def _user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def cancel_jobs(pid: int | None = None) -> None:
    """Cancel the batch jobs of the run launched by ``pid`` (this process), pending or running.
    Best effort, bounded: a no-op where Slurm is not installed."""
    if not shutil.which("scancel"):
        return
    cmd = ["scancel", "--name", job_name(pid), "--user", _user()]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        print(f"ntkflow: {' '.join(cmd)}: {e}", file=sys.stderr, flush=True)
        return
    if res.returncode:  # no such jobs is not an error for scancel; anything else is said
        print(f"ntkflow: {' '.join(cmd)}: {res.stderr.strip()}", file=sys.stderr, flush=True)


def queued_jobs(pid: int | None = None, fmt: str = "%i %T") -> list[str] | None:
    """squeue's lines (format ``fmt``) for the batch jobs of the run launched by ``pid`` (this
    process) that are still queued, running or completing; None where Slurm cannot be asked."""
    if not shutil.which("squeue"):
        return None
    cmd = ["squeue", "-h", "--name", job_name(pid), "--user", _user(), "-o", fmt]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.splitlines() if res.returncode == 0 else None


def cancel_jobs_until_gone(
    pid: int, settle: float = 5.0, timeout: float = 20.0, interval: float = 0.5
) -> list[str]:
    """Cancel the batch jobs of the run launched by ``pid``, which has ended, until squeue has
    shown none for ``settle`` seconds, for at most ``timeout`` seconds; returns those left.

    One scancel is not enough: dask-jobqueue submits from the run's event loop thread, which
    goes on while a signal handler cancels, and an ``sbatch`` started just before the process
    ended submits after it."""
    cancel_jobs(pid)
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    while (jobs := queued_jobs(pid)) is not None and time.monotonic() < deadline:
        if jobs:
            cancel_jobs(pid)
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= settle:
            return []
        time.sleep(interval)
    return jobs or []


# Local workers (their nannies take this config at start): no statistical profiler sampling
# every worker thread every 10 ms, a CPU tax of a few percent on a laptop's cores for the
# dashboard's profile page only.
# Their system monitors (and the scheduler's, in this process) sample every 2 s, not 0.5 s,
# and without the disks' counters: CPU and memory plots for the dashboard, nothing else
# (a worker's memory limits have a monitor of their own).
_LOCAL_WORKER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.admin.system-monitor.disk": False,
}


def _is_slurm(plan: ClusterPlan) -> bool:
    return (plan.cluster_class or "").endswith("SLURMCluster")


def _test_submission(cluster) -> None:
    """``sbatch --test-only`` of the worker job: a job Slurm refuses (unknown gres, partition or
    account, a size no node has) is a ClusterError with sbatch's own message, before any job."""
    if not shutil.which("sbatch"):
        raise ClusterError("sbatch not found: this spec submits Slurm jobs (use a login node)")
    with tempfile.NamedTemporaryFile("w", suffix=".sh") as f:
        f.write(cluster.job_script())
        f.flush()
        res = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True, text=True)
    if res.returncode:
        message = " ".join((res.stderr or res.stdout).split())
        raise ClusterError(f"Slurm refuses the worker job: {message}")


def _pending_reason(plan: ClusterPlan) -> str:
    """What the run's batch jobs are waiting for, from squeue (empty when it cannot say)."""
    jobs = queued_jobs(fmt="job %i %T (%r)") if _is_slurm(plan) else None
    if jobs is None:
        return ""
    return f": {'; '.join(jobs[:3])}" if jobs else ": no job queued"


def _wait_for_first_worker(cluster, plan: ClusterPlan, timeout: float) -> None:
    """Wait until a worker of a started cluster has joined; ClusterError after ``timeout``
    seconds, naming what its jobs wait for."""
    deadline = time.monotonic() + timeout
    while not cluster.scheduler_info.get("workers"):
        if time.monotonic() > deadline:
            raise ClusterError(
                f"no worker of {plan.describe()} started within {timeout:g} s "
                f"(compute.start_timeout){_pending_reason(plan)}; its jobs are cancelled"
            )
        time.sleep(0.2)


@contextlib.contextmanager
def start_cluster(plan: ClusterPlan, start_timeout: float = 600.0):
    """Start (or join) the plan's cluster; yields its scheduler address, stops what it started.

    A cluster that cannot start (no GPU for LocalCUDACluster, no ``sbatch``, a worker job Slurm
    refuses, no worker within ``start_timeout`` seconds, no Kubernetes access) is a ClusterError
    naming the plan, not a traceback or a wait without end. An adaptive cluster keeps at least
    one worker while the run lasts: a started run has work, and a worker released while tasks
    are being submitted is churn. Batch jobs carry :func:`job_name`; they are cancelled when the
    run ends, however it ends (``flows.runtime`` on signals, ``flows.watchdog`` on SIGKILL)."""
    if plan.address:
        yield plan.address
        return
    import dask

    module, _, attr = plan.cluster_class.rpartition(".")
    cls = getattr(_require(module), attr)
    kwargs = dict(plan.kwargs)
    if plan.cluster_class.startswith("dask_jobqueue."):
        kwargs["job_name"] = job_name()
    try:
        with dask.config.set(_LOCAL_WORKER_CONFIG if plan.name in ("local", "cuda") else {}):
            cluster = cls(**kwargs)
    except Exception as e:  # noqa: BLE001 - any failure to start is reported the same way
        raise ClusterError(f"cannot start {plan.describe()}: {type(e).__name__}: {e}") from e
    try:
        try:
            if _is_slurm(plan):
                _test_submission(cluster)
            if plan.adapt:
                adapt = {**plan.adapt, "minimum": max(1, plan.adapt.get("minimum", 0))}
                cluster.adapt(**adapt)
            _wait_for_first_worker(cluster, plan, start_timeout)
        except ClusterError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ClusterError(f"cannot start {plan.describe()}: {type(e).__name__}: {e}") from e
        yield cluster.scheduler_address
    finally:
        # A slow shutdown (workers busy exiting on a loaded machine) must not fail a run whose
        # results are all written: log it and go on.
        try:
            cluster.close()
        except Exception as e:  # noqa: BLE001
            log.warning("closing %s: %s: %s", plan.describe(), type(e).__name__, e)
        if _is_slurm(plan):
            cancel_jobs()


@contextlib.contextmanager
def connect(address: str, timeout: str = "60s"):
    """A Dask client of the scheduler at ``address``; ClusterError when it cannot be reached."""
    from distributed import Client

    try:
        client = Client(address, timeout=timeout)
    except (OSError, TimeoutError) as e:
        raise ClusterError(f"cannot connect to the Dask scheduler {address}: {e}") from e
    with client:
        yield client


def worker_resources(client) -> dict[str, dict]:
    """The declared resources of every worker connected now, by worker address."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return {addr: dict(w.get("resources") or {}) for addr, w in workers.items()}


def cluster_has_gpus(client) -> bool:
    """Whether any worker of the connected cluster declares the GPU resource."""
    return any("GPU" in r for r in worker_resources(client).values())


def check_resources(client, required: dict) -> None:
    """Fail fast when no connected worker declares every resource in ``required``.

    A Dask task restricted to resources no worker has waits forever; checking the scheduler's
    workers first turns that hang into an error. With no worker connected yet (an adaptive
    cluster scaling up from zero) there is nothing to check: the cluster's own workers, started
    from the same spec, declare what the spec says.
    """
    if not required:
        return
    workers = worker_resources(client)
    if not workers:
        return
    ok = [a for a, r in workers.items() if all(r.get(k, 0) >= v for k, v in required.items())]
    if not ok:
        declared = sorted({f"{k}={v}" for r in workers.values() for k, v in r.items()})
        raise ClusterError(
            f"training tasks need Dask resources {required} but none of the {len(workers)} "
            f"connected worker(s) declares them (declared: {declared or 'none'}); start GPU "
            f"workers with `dask cuda worker ... --resources GPU=1` or use a CPU cluster "
            f"(--cluster local)"
        )


def torch_device() -> str:
    """``cuda:0`` where a GPU is visible (dask-cuda pins one per worker), else ``cpu``."""
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def to_device(x):
    """``x`` as a CuPy array on a GPU worker (cupy importable and a device visible), else as is.

    Gram blocks are then computed on the GPU; :func:`ntkflow.gram.write_gram` copies each block
    to the host only to write it."""
    try:
        import cupy
    except ImportError:
        return x
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return x
    except cupy.cuda.runtime.CUDARuntimeError:
        return x
    return cupy.asarray(x)

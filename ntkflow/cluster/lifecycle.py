"""The cluster of a run: started (or joined) from its plan, waited for, connected to, and
stopped with every job it submitted, however the run ends. No Prefect import here."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from typing import TYPE_CHECKING

from ntkflow.cluster import slurm
from ntkflow.cluster.errors import ClusterError, require
from ntkflow.cluster.processes import environ

if TYPE_CHECKING:
    from ntkflow.cluster.plans import ClusterPlan

log = logging.getLogger(__name__)

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


def _wait_for_first_worker(cluster, plan: ClusterPlan, timeout: float) -> None:
    """Wait until a worker of a started cluster has joined; ClusterError after ``timeout``
    seconds, naming what its jobs wait for."""
    deadline = time.monotonic() + timeout
    while not cluster.scheduler_info.get("workers"):
        if time.monotonic() > deadline:
            reason = slurm.pending_reason() if slurm.is_slurm(plan.cluster_class) else ""
            raise ClusterError(
                f"no worker of {plan.describe()} started within {timeout:g} s "
                f"(compute.start_timeout){reason}; its jobs are cancelled"
            )
        time.sleep(0.2)


_forkserver_users = 0  # local clusters of this process using the forkserver now


@contextlib.contextmanager
def _forked_workers(preload: tuple[str, ...], env: dict[str, str]):
    """While a local cluster lives, its worker processes are forked from one forkserver that has
    imported ``preload`` (what the workers run: Prefect, Dask, NumPy, Zarr, ~3 CPU-s in each
    fresh interpreter, ``python -X importtime -c 'import flows.tasks'``) instead of each being
    spawned and importing it again, restarted workers included; the server stops with the last
    cluster of the process that uses it. It starts here, in the calling thread (SIGINT blocked:
    :func:`_sigint_blocked`, a mask its children inherit), with what the nannies give a spawned
    worker before its first import (``env``, Dask's ``distributed.nanny.pre-spawn-environ``,
    the nanny's hash seed): the math libraries read their thread counts as they load."""
    global _forkserver_users
    from multiprocessing import forkserver

    import dask
    import distributed.utils
    from distributed.versions import required_packages

    server = forkserver._forkserver
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        if not _forkserver_users:
            # Dask's own preload (distributed.utils.get_mp_context, which a nanny calls) adds
            # every optional package it finds, pandas among them (~0.4 CPU-s in the server,
            # used by no task of ntkflow): set here instead, and marked as set (a private flag
            # of the pinned distributed) so that a nanny does not replace it
            modules = ["distributed", *required_packages, "numpy", *preload]
            server.set_forkserver_preload(list(dict.fromkeys(modules)))
            distributed.utils._forkserver_preload_set = True
            spawn_env = dask.config.get("distributed.nanny.pre-spawn-environ")
            # as distributed.nanny reads them: a variable already set keeps its value
            wanted = {k: os.environ.get(k, str(v)) for k, v in spawn_env.items() if v is not None}
            if os.environ.get("PYTHONHASHSEED") in (None, "0"):
                wanted["PYTHONHASHSEED"] = "6640"  # as distributed.nanny.Nanny sets it
            wanted.update(env)
            server._stop()  # one started otherwise (lazily, by a Process) has another env
            with environ(wanted):
                server.ensure_running()
        _forkserver_users += 1
        try:
            yield
        finally:
            _forkserver_users -= 1
            if not _forkserver_users:
                server._stop()


@contextlib.contextmanager
def _sigint_blocked(block: bool):
    """While a local cluster is created, SIGINT blocked in this thread: the cluster's event loop
    thread, started now, inherits the mask, and so do the threads it starts the worker processes
    from and the processes themselves (a mask survives fork and exec), restarted and added ones
    included. A Ctrl-C reaches the whole foreground process group: the workers must not take it
    (each would print a traceback and be restarted by its nanny); the command's own handler
    stops them (``flows.signals``). A Ctrl-C meanwhile is handled once the cluster is up."""
    if not block or threading.current_thread() is not threading.main_thread():
        yield
        return
    from multiprocessing import resource_tracker

    # started here first: started by the event loop thread (for the nannies' queues), it would
    # unblock SIGINT in that thread as it spawns (blocked around the spawn, then unblocked)
    resource_tracker.ensure_running()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def start_cluster(plan: ClusterPlan, start_timeout: float = 600.0, preload: tuple[str, ...] = ()):
    """Start (or join) the plan's cluster; yields its scheduler address, stops what it started.

    A cluster that cannot start (no GPU for LocalCUDACluster, no ``sbatch``, a worker job Slurm
    refuses, no worker within ``start_timeout`` seconds, no Kubernetes access) is a ClusterError
    naming the plan, not a traceback or a wait without end. An adaptive cluster keeps at least
    one worker while the run lasts: a started run has work, and a worker released while tasks
    are being submitted is churn. Batch jobs carry :func:`ntkflow.cluster.slurm.job_name`; they
    are cancelled when the run ends, however it ends (``flows.signals`` on signals,
    ``flows.watchdog`` on SIGKILL)."""
    if plan.address:
        yield plan.address
        return
    import dask

    module, _, attr = plan.cluster_class.rpartition(".")
    cls = getattr(require(module), attr)
    kwargs = dict(plan.kwargs)
    if plan.cluster_class.startswith("dask_jobqueue."):
        kwargs["job_name"] = slurm.job_name()
    on_slurm = slurm.is_slurm(plan.cluster_class)
    if on_slurm:
        slurm.note_submission()  # before the first sbatch: from now on the run's jobs are cancelled
    local = plan.name in ("local", "cuda")
    # dask-cuda's workers (CUDA contexts) are spawned, as Dask spawns them
    forked = plan.name == "local" and "forkserver" in multiprocessing.get_all_start_methods()
    with contextlib.ExitStack() as stack:  # the forkserver stops after the cluster
        try:
            with dask.config.set(_LOCAL_WORKER_CONFIG if local else {}), _sigint_blocked(local):
                if forked:
                    stack.enter_context(_forked_workers(preload, kwargs.get("env", {})))
                cluster = cls(**kwargs)
        except Exception as e:  # noqa: BLE001 - any failure to start is reported the same way
            raise ClusterError(f"cannot start {plan.describe()}: {type(e).__name__}: {e}") from e
        yield from _serve(cluster, plan, on_slurm, start_timeout)


def _serve(cluster, plan: ClusterPlan, on_slurm: bool, start_timeout: float):
    """Yield a started cluster's scheduler address once a worker has joined; close it (and
    cancel its batch jobs) however the run ends."""
    try:
        try:
            if on_slurm:
                slurm.check_submission(cluster)
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
        if on_slurm:
            slurm.cancel_jobs()


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

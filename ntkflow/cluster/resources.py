"""What the workers of a cluster have: CPUs and threads, declared Dask resources, devices.

GPU placement goes through declared Dask resources only: a training task runs on a GPU when it
is annotated ``GPU=1`` and a worker declares that resource. A run whose trainings need a
resource no connected worker declares fails at once (:func:`check_resources`) instead of
waiting forever, which is what Dask does with unsatisfiable resource restrictions.
"""

from __future__ import annotations

import os

from ntkflow.cluster.errors import ClusterError

# Single-threaded math libraries in each worker process: parallelism comes from the workers.
_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NTKFLOW_KERNEL_THREADS",
)


def worker_env(threads_per_worker: int) -> dict[str, str]:
    return {v: str(threads_per_worker) for v in _THREAD_VARS}


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask (Slurm, cgroups, taskset), not the host's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def default_workers(threads_per_worker: int = 1) -> int:
    return max(1, available_cpus() // max(1, threads_per_worker))


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

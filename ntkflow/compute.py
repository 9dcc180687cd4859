"""Backend choice: array namespace, torch device, and the Dask cluster behind a run.

``--cluster local`` (default) starts a ``distributed.LocalCluster`` of worker processes;
``--cluster cuda`` a ``dask_cuda.LocalCUDACluster`` with one worker per GPU, each declaring the
resource ``GPU=1``; anything else is the address of an existing scheduler. CuPy and dask-cuda
are imported only on those paths, with a clear message when missing.
"""

from __future__ import annotations

import os

from ntkflow.config import ComputeConfig

# Single-threaded math libraries in each worker process: parallelism comes from the workers.
_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NTKFLOW_KERNEL_THREADS",
)


class MissingGPUStack(RuntimeError):
    pass


def _require(module: str, extra: str = "gpu"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingGPUStack(
            f"{module} is not installed: `pip install 'ntkflow[{extra}]'` on a machine with "
            f"NVIDIA GPUs ({e})"
        ) from e


def worker_env(threads_per_worker: int) -> dict[str, str]:
    return {v: str(threads_per_worker) for v in _THREAD_VARS}


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def cluster_spec(compute: ComputeConfig) -> dict:
    """Keyword arguments for prefect_dask.DaskTaskRunner (address or cluster class + kwargs)."""
    c = compute.cluster
    env = worker_env(compute.threads_per_worker)
    if c == "local":
        return {
            "cluster_class": "distributed.LocalCluster",
            "cluster_kwargs": {
                "n_workers": compute.n_workers or default_workers(),
                "threads_per_worker": compute.threads_per_worker,
                "processes": True,
                "dashboard_address": ":0",
                "env": env,
            },
        }
    if c == "cuda":
        _require("dask_cuda")
        kwargs = {
            "threads_per_worker": compute.threads_per_worker,
            "resources": {"GPU": 1},
            "dashboard_address": ":0",
            "env": env,
        }
        if compute.n_workers:
            kwargs["n_workers"] = compute.n_workers
        return {"cluster_class": "dask_cuda.LocalCUDACluster", "cluster_kwargs": kwargs}
    return {"address": c}


def cluster_has_gpus(client) -> bool:
    """Whether any worker of the connected cluster declares the GPU resource."""
    info = client.scheduler_info()
    return any("GPU" in w.get("resources", {}) for w in info.get("workers", {}).values())


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

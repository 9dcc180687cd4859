"""Cluster plans: what ``--cluster`` (or the deployment parameter ``cluster``) names, decided
before anything starts.

- ``local`` (default): a ``distributed.LocalCluster`` of worker processes, one per CPU this
  process may run on (its affinity, which Slurm and cgroups restrict), on the CPU only: the
  workers see no GPU, because several workers of one machine would otherwise all train on
  ``cuda:0``;
- ``cuda``: a ``dask_cuda.LocalCUDACluster``, one worker per GPU, each declaring ``GPU=1``;
- a scheduler address (``tcp://host:8786``, ``host:8786``, ``[::1]:8786``; read by
  :func:`ntkflow.cluster.address.parse_address`): an existing scheduler;
- a cluster spec file (``deploy/*.yaml``): a cluster class with its arguments (dask-cuda,
  dask-jobqueue's ``SLURMCluster``, the dask-kubernetes operator's ``KubeCluster``), adaptive
  bounds and the Dask resources a training task needs (see :func:`load_spec`).

Cluster classes come from optional extras, imported when a plan names them, with the extra to
install named in the error. No Prefect import here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ntkflow.cluster.address import parse_address
from ntkflow.cluster.errors import ClusterError, require
from ntkflow.cluster.kubernetes import kube_cluster_spec
from ntkflow.cluster.resources import default_workers, worker_env
from ntkflow.config import ComputeConfig

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)
SPEC_KEYS = {"class", "kwargs", "adapt", "train_resources", "kubernetes"}


@dataclass(frozen=True)
class ClusterPlan:
    """How to get the cluster of a run, before starting anything.

    ``cluster_class`` + ``kwargs`` (+ ``adapt``) start a cluster; ``address`` joins one (as
    ``scheme://host:port``, whatever form ``--cluster`` gave it in).
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
    invalid spec files, missing optional extras, addresses with an unknown scheme or port.
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
        require("dask_cuda", "--cluster cuda: ")
        kwargs = {
            "threads_per_worker": threads,
            "resources": {"GPU": 1},
            "dashboard_address": ":0",
            "env": env,
        }
        if compute.n_workers:
            kwargs["n_workers"] = compute.n_workers
        return ClusterPlan(name, "dask_cuda.LocalCUDACluster", kwargs, None, None, {"GPU": 1})
    try:
        address = parse_address(name)
    except ValueError as e:
        raise ClusterError(str(e)) from e
    if address is not None:
        return ClusterPlan(name, address=address, train_resources=None)
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
    if not hasattr(require(module, f"{path.name}: "), attr):
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

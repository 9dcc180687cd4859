"""Kubernetes: the DaskCluster resource of a spec file's ``kubernetes:`` section."""

from __future__ import annotations

from ntkflow.cluster.errors import require


def kube_cluster_spec(worker_gpus: int = 0, **make_args) -> dict:
    """A DaskCluster resource from dask-kubernetes' ``make_cluster_spec`` whose *worker* pods
    (only) request ``worker_gpus`` NVIDIA GPUs and declare the Dask resource ``GPU`` to match;
    the scheduler pod gets no GPU."""
    make_cluster_spec = require("dask_kubernetes.operator").make_cluster_spec
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

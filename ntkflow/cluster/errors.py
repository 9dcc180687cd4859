"""The error of a cluster that cannot be used, and the optional extras the cluster classes
come from (imported only when a plan needs them, with the extra to install named)."""

from __future__ import annotations

import importlib

from ntkflow.config import ConfigError

# The optional extra that provides each cluster module (pyproject.toml).
EXTRAS = {"dask_cuda": "gpu", "dask_jobqueue": "slurm", "dask_kubernetes": "k8s"}


class ClusterError(ConfigError):
    """A cluster that cannot be used: unknown name or spec, missing extra, missing resources."""

    def __init__(self, message: str):
        super().__init__([("cluster", message)])

    def __reduce__(self):
        return (ClusterError, (self.errors[0][1],))


def require(module: str, why: str = ""):
    """``module`` imported; a ClusterError naming the extra to install when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        extra = EXTRAS.get(top)
        hint = f"`pip install 'ntkflow[{extra}]'`" if extra else f"install {top}"
        raise ClusterError(f"{why}{top} is not installed: {hint} ({e})") from e

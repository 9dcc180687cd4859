"""Dask clusters: plans (``local``, ``cuda``, an address, a spec file), Slurm job control,
Kubernetes specs, worker resources and the lifecycle of a cluster a run starts.

Kept empty on purpose: :mod:`ntkflow.cluster.address` is imported by the config, which the other
modules of this package import in turn.
"""

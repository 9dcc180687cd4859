"""Dask clusters, one reason to change per module:

    address.py     the one reading of a scheduler address (``[::1]:8786`` → ``tcp://[::1]:8786``)
    plans.py       what ``--cluster`` names (local, cuda, an address, a spec file), decided
                   before anything starts
    errors.py      ClusterError, and the optional extras the cluster classes come from
    resources.py   the workers' CPUs and threads, declared Dask resources (GPUs), devices
    lifecycle.py   start or join a plan's cluster, connect, stop it with its jobs
    slurm.py       batch job names, cancelling them, what Slurm says of them
    kubernetes.py  the DaskCluster resource of a spec's ``kubernetes:`` section
    processes.py   a worker's allocator, and how the command's processes exit

Kept empty on purpose: :mod:`ntkflow.cluster.address` is imported by the config, which the other
modules of this package import in turn.
"""

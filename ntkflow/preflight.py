"""Checks of the places a run needs, before any work and before its run folder exists.

Each failure is a :class:`PlaceError` whose message names the flag, the value and what to do;
the CLI prints it in one or two lines and exits with status 2 (no traceback). The check that
the *workers* can write the store, and that this process reads back what they wrote, needs the
cluster and therefore runs as the first step of the flow (:func:`probe_write` on a worker,
:func:`probe_read` in the flow).
"""

from __future__ import annotations

import contextlib
import os
import uuid

from ntkflow.store import Store


class PlaceError(Exception):
    """A bad ``--out`` or ``--cluster`` (a usage error: exit status 2)."""


def open_store(out: str) -> Store:
    """The store at ``out``; ConfigError (field ``out``) when it cannot be opened."""
    from ntkflow.config import ConfigError

    try:
        return Store(out)
    except (ImportError, ValueError, OSError) as e:
        raise ConfigError([("out", f"cannot open the store {out!r}: {e}")]) from e


def check_out(url: str) -> None:
    """``url`` is a folder or fsspec URL this process can create files in, read and delete."""
    if not str(url).strip():
        raise PlaceError("--out is empty: give a folder or fsspec URL (default runs/)")
    try:
        store = Store(url)
    except Exception as e:  # noqa: BLE001 - unknown protocol, missing fsspec backend, ...
        raise PlaceError(f"--out {url!r}: not a folder or URL that can be opened ({e})") from e
    if store.local and os.path.exists(store.root) and not os.path.isdir(store.root):
        raise PlaceError(f"--out {url!r} is a file, not a folder: give a folder for the runs")
    probe = f".ntkflow-write-test-{uuid.uuid4().hex}"
    try:
        store.write_text(probe, probe)
        if store.read_bytes(probe).decode() != probe:
            raise OSError("a file written there reads back different")
        store.remove(probe)
    except Exception as e:  # noqa: BLE001 - any failure means the place is unusable
        raise PlaceError(
            f"--out {url!r}: cannot write there ({type(e).__name__}: {e}); "
            "give a writable folder or URL"
        ) from e


def check_cluster(cluster: str, connect_timeout: float, compute=None) -> None:
    """``--cluster``: dask-cuda and a GPU for ``cuda``; a scheduler answering at an address; a
    readable spec file whose extra is installed (the flow starts its cluster)."""
    if cluster == "cuda":
        check_cuda()
        return
    from ntkflow.cluster.plans import resolve_cluster

    # the plan decides what the name is (an address by ntkflow.cluster.address.parse_address);
    # a bad spec file or address is a ClusterError (a ConfigError): exit status 2
    address = resolve_cluster(cluster, compute).address
    if address is None:  # local, or a spec file: the flow starts that cluster
        return
    from distributed import Client

    try:
        with Client(address, timeout=f"{connect_timeout}s"):
            pass
    except (OSError, TimeoutError, ValueError) as e:
        at = f" ({address})" if address != cluster else ""
        raise PlaceError(
            f"--cluster {cluster}{at}: no Dask scheduler answered within {connect_timeout:g} s "
            f"({type(e).__name__}: {e}).\n  Start one (`dask scheduler`) or fix the address; "
            "the wait is --set compute.connect_timeout=SECONDS."
        ) from e


def check_cuda() -> None:
    import importlib.util

    if importlib.util.find_spec("dask_cuda") is None:
        raise PlaceError(
            "--cluster cuda needs dask-cuda, which is not installed: "
            "`pip install 'ntkflow[gpu]'` on a machine with NVIDIA GPUs, or use --cluster local"
        )
    import torch

    if torch.cuda.device_count() < 1:
        raise PlaceError(
            "--cluster cuda: no CUDA GPU is visible on this machine "
            "(torch.cuda.device_count() is 0); run on a GPU machine or use --cluster local"
        )


PROBE_DIR = ".ntkflow-probe"


def probe_write(url: str, token: str) -> str:
    """Run on a worker: write ``token`` into the store. Returns the worker's host name."""
    import platform

    Store(url).write_text(f"{PROBE_DIR}/{token}", token)
    return platform.node()


def probe_read(url: str, token: str, host: str) -> None:
    """Run in the flow: read back what a worker on ``host`` wrote, then remove it."""
    store = Store(url)
    rel = f"{PROBE_DIR}/{token}"
    try:
        seen = store.read_bytes(rel).decode()
    except Exception as e:  # noqa: BLE001 - FileNotFoundError, permissions, ...
        seen = f"{type(e).__name__}: {e}"
    if seen != token:
        raise PlaceError(
            f"--out {url}: the Dask workers cannot share this store with the flow: a file a "
            f"worker (on {host}) wrote there cannot be read back here ({seen}).\n  Use a folder "
            "or URL every worker and this machine see (a shared filesystem or object storage; "
            "memory:// exists only inside one process)."
        )
    # only this command's probe: a launch of the same run at the same moment may not have read
    # its own yet; the folder goes once empty (object stores have none)
    store.remove(rel)
    if store.local:
        with contextlib.suppress(OSError):  # another launch's probe is still there, or gone
            os.rmdir(store.path(PROBE_DIR))


def worker_cannot_write(url: str, exc: BaseException) -> PlaceError:
    return PlaceError(
        f"--out {url}: a Dask worker cannot write the store ({type(exc).__name__}: {exc}); "
        "give a folder or URL every worker can write"
    )

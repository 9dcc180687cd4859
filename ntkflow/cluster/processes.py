"""How the processes of a run use memory and end: a worker's allocator, the command's exit (no
last garbage collections, no resource tracker left behind), and the environment a process it
starts inherits."""

from __future__ import annotations

import contextlib
import os
import sys
import time

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


@contextlib.contextmanager
def environ(extra: dict[str, str]):
    """``extra`` in this process's environment while the block runs (what the processes started
    in it inherit); each variable then has its former value again, or none."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

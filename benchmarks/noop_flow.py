"""A flow of Prefect tasks that do nothing, for benchmarks/prefect_floor.py (a module of its
own: the workers import its tasks by name, and Prefect is imported only once the benchmark has
set the run's API URL)."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, task


@task(task_run_name="noop-{k:03d}")
def noop_task(cfg, out: str, k: int) -> dict:
    get_run_logger().info("task %d", k)  # a trial task logs a line or two
    return {"trial": k}


@flow(name="noop")
def noop_flow(cfg, out: str, n: int, lean: bool = False) -> tuple[float, list[float]]:
    """Submits n no-op tasks; returns the seconds the submissions took, and the seconds from the
    first submission to each task's end, in the order they were seen ending (from the moment
    all are submitted). ``lean``: submitted as the trials flow submits
    (flows.internals.lean_tasks: the settings shipped as they are, the task runs untagged)."""
    import contextlib

    from prefect.futures import as_completed

    from flows.internals import lean_tasks

    t0 = time.perf_counter()
    with lean_tasks() if lean else contextlib.nullcontext():
        futures = [noop_task.submit(cfg, out, k) for k in range(n)]
    submitted, ends = time.perf_counter() - t0, []
    for f in as_completed(futures):
        f.result()
        ends.append(time.perf_counter() - t0)
    return submitted, ends


def nothing(k: int) -> int:
    return k


def import_here() -> None:
    """Run in each worker: Prefect, prefect-dask and this module imported before timing."""

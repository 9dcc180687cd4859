"""The orchestration floor: what Prefect and Dask cost per task when the task does nothing.

    python benchmarks/prefect_floor.py [--tasks 50] [--workers 2] [--json PATH]

On the embedded Prefect API and a local Dask cluster started as ``ntkflow run`` starts them
(flows.server, flows.workers, flows.internals, ntkflow.cluster), in one run:
  dask only     N calls of a function that does nothing, submitted to the cluster's workers
  prefect       a flow of N Prefect tasks that do nothing (a Config, a path and an index as
                parameters, like a trial task), on the same cluster through DaskTaskRunner
Each flow runs ``--rounds`` times (best kept), tagged as ``ntkflow run`` tags its flow runs, in
turn with the same flow submitting as the trials flow does (flows.internals.lean_tasks: the
settings shipped as they are, the task runs untagged).
The difference per task and worker (also split: the first task, which pays each worker's first
Prefect task run, and the steady rate after it) is the least a trial pays for being a Prefect
task run (its state changes and logs in the API), whatever the trial does; compare it with a
trial's science in benchmarks/overhead.py. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from bench_io import print_and_save

HERE = Path(__file__).resolve().parent


def _steady(ends: list[float], workers: int) -> float:
    """Seconds per task and worker after the first task seen ending."""
    return (ends[-1] - ends[0]) * workers / (len(ends) - 1) if len(ends) > 1 else 0.0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=50)
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", default=str(HERE / "results" / "prefect_floor.json"))
    a = p.parse_args()

    from flows import workers
    from flows.server import prefect_api
    from ntkflow.cluster import lifecycle, plans
    from ntkflow.config.presets import load_config

    cfg = load_config("paper", overrides=["networks.enabled=false", f"trials={a.tasks}"])
    plan = plans.resolve_cluster("local", cfg.compute.model_copy(update={"n_workers": a.workers}))
    t_start = time.perf_counter()
    with prefect_api() as (api, server):  # before Prefect is imported, as ntkflow run
        import noop_flow as me  # by name in the workers, not pickled by value as __main__'s
        from prefect import tags

        from flows.experiment import run_tags

        if server is not None:
            server.wait()
        t_api = time.perf_counter()
        with lifecycle.start_cluster(plan) as address, lifecycle.connect(address) as client:
            workers.prepare_workers(client, {"PREFECT_API_URL": api})
            t_cluster = time.perf_counter()
            t0 = time.perf_counter()
            client.run(me.import_here)  # each worker's imports, apart from the tasks
            imports_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            client.gather(client.map(me.nothing, range(a.tasks), pure=False))
            dask_s = time.perf_counter() - t0
            on_cluster = me.noop_flow.with_options(task_runner=workers.task_runner_at(address))
            runs: dict = {False: [], True: []}  # Prefect's default shipping / lean_tasks
            for _ in range(a.rounds):  # in turn, so drift in the machine's load hits both
                for lean in (False, True):
                    t0 = time.perf_counter()
                    with tags(*run_tags(cfg, "paper")):
                        submitted, ends = on_cluster(cfg, "/tmp/unused", a.tasks, lean)
                    runs[lean].append((time.perf_counter() - t0, submitted, ends))
    flow_s, submitted, ends = min(runs[False], key=lambda r: r[0])
    lean_flow_s, lean_submitted, lean_ends = min(runs[True], key=lambda r: r[0])
    tasks_s = ends[-1]
    steady, lean_steady = _steady(ends, a.workers), _steady(lean_ends, a.workers)
    out = {
        "tasks": a.tasks,
        "workers": a.workers,
        "api_start_s": t_api - t_start,
        "cluster_start_s": t_cluster - t_api,
        "worker_imports_s": imports_s,
        "dask_only_s": dask_s,
        "prefect_tasks_s": tasks_s,
        "prefect_flow_s": flow_s,
        "per_task_and_worker_s": (tasks_s - dask_s) * a.workers / a.tasks,
        "submit_s": submitted,
        "first_task_s": ends[0],
        "steady_per_task_and_worker_s": steady,
        "lean_tasks": {
            "prefect_flow_s": lean_flow_s,
            "submit_s": lean_submitted,
            "steady_per_task_and_worker_s": lean_steady,
        },
        "rounds": a.rounds,
    }
    rows = [
        ("embedded API start", f"{out['api_start_s']:.1f} s"),
        ("local cluster start", f"{out['cluster_start_s']:.1f} s"),
        ("imports in the workers (Prefect, prefect-dask)", f"{imports_s:.2f} s"),
        (f"{a.tasks} no-op calls, Dask only", f"{dask_s:.2f} s"),
        (f"{a.tasks} no-op Prefect tasks (their part of the flow)", f"{tasks_s:.2f} s"),
        ("the whole no-op flow", f"{flow_s:.2f} s"),
        ("Prefect per task and worker", f"{out['per_task_and_worker_s']:.3f} s"),
        (f"  submitting the {a.tasks} tasks (the flow's process)", f"{submitted:.2f} s"),
        ("  the first task seen ended, from the first submission", f"{ends[0]:.2f} s"),
        ("  after it: per task and worker", f"{steady:.3f} s"),
        ("lean tasks (as the trials flow submits):", ""),
        ("  the whole no-op flow", f"{lean_flow_s:.2f} s"),
        (f"  submitting the {a.tasks} tasks", f"{lean_submitted:.2f} s"),
        ("  after the first: per task and worker", f"{lean_steady:.3f} s"),
    ]
    print_and_save(
        f"{a.tasks} tasks, {a.workers} workers, {os.cpu_count()} cores",
        rows,
        out,
        a.json,
    )


if __name__ == "__main__":
    main()

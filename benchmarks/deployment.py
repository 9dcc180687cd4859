"""Deployment latency and Prefect server backends under 50 concurrent trial tasks.

    python benchmarks/deployment.py [--trials 50] [--workers 4] [--repeats 2] [--json PATH]

1. Latency: PostgreSQL → `prefect server` → process pool → `prefect deploy` of
   deploy/prefect.yaml → `prefect worker start` (default poll interval, 10 s unless
   PREFECT_WORKER_QUERY_SECONDS is set) → `prefect deployment run` (smoke, kernels only): the
   time from the `deployment run` command to the flow run starting on the worker and to the
   first trial task running (task start_time in the API).
2. Backends: `ntkflow run --kernels-only --set trials=N` with tiny data (n_obs 40, one kernel)
   and `--workers W` Dask worker processes reporting to a `prefect server` on SQLite, then on
   PostgreSQL: wall time, task runs recorded vs expected, their states, API errors and
   timeouts in the output.

Real servers on 127.0.0.1 (tests/servers.py), nothing mocked. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
import servers as S  # noqa: E402

ERRORS = re.compile(r"Timeout|timed out|database is locked|Crashed|HTTPStatusError|5\d\d Server")


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def latency(work: Path) -> dict:
    with S.postgres(work) as db, S.prefect_server(work, db) as api:
        env = S.base_env(
            work / "client",
            PREFECT_API_URL=api,
            NTKFLOW_ROOT=str(S.ROOT),
            NTKFLOW_STORE=str(work / "runs"),
        )
        S.cli(["work-pool", "create", "ntkflow-process", "--type", "process"], env)
        S.cli(
            [
                "deploy",
                "--prefect-file",
                "deploy/prefect.yaml",
                "--name",
                "ntkflow-process",
                "--no-prompt",
            ],
            env,
        )
        with S.prefect_worker(work, env, "ntkflow-process"):
            time.sleep(5)  # the worker is up and polling, as on a real site
            params = {"preset": "smoke", "kernels_only": True}
            t0 = time.time()
            res = S.cli(
                ["deployment", "run", "experiment/ntkflow-process", "--params", json.dumps(params)],
                env,
            )
            run_id = res.stdout.split("UUID: ")[1].split()[0]
            run = S.wait_flow_run(api, run_id, timeout=600)
            subs = S.api_post(
                api, "flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}}
            )
            tasks = S.api_post(
                api, "task_runs/filter", {"flow_runs": {"id": {"any_": [s["id"] for s in subs]}}}
            )
            first = min(_ts(t["start_time"]) for t in tasks if t["name"].startswith("trial-"))
            return {
                "state": run["state"]["type"],
                "message": run["state"]["message"],
                "worker_poll_s": float(env.get("PREFECT_WORKER_QUERY_SECONDS", 10)),
                "to_flow_run_start_s": _ts(run["start_time"]) - t0,
                "to_first_trial_task_s": first - t0,
                "flow_run_total_s": _ts(run["end_time"]) - t0,
            }


def backend(work: Path, name: str, trials: int, workers: int) -> dict:
    def one(api: str, i: int) -> dict:
        env = S.base_env(work / f"client-{name}-{i}", PREFECT_API_URL=api)
        cmd = [
            sys.executable,
            "-m",
            "flows.cli",
            "run",
            "--preset",
            "smoke",
            "--kernels-only",
            "--set",
            f"trials={trials}",
            "--set",
            "data.n_obs=40",
            "--set",
            "kernels=[NTKB1]",
            "--set",
            f"seed={i}",
            "--workers",
            str(workers),
            "--out",
            str(work / f"runs-{name}-{i}"),
        ]
        before = {f["id"] for f in S.api_post(api, "flow_runs/filter", {"limit": 200})}
        t0 = time.perf_counter()
        res = subprocess.run(cmd, env=env, cwd=S.ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        # this command's flow runs (experiment + trials): the ones that were not there before
        ids = [f["id"] for f in S.api_post(api, "flow_runs/filter", {"limit": 200})]
        ids = [i for i in ids if i not in before]
        tasks = S.api_post(
            api, "task_runs/filter", {"flow_runs": {"id": {"any_": ids}}, "limit": 200}
        )
        trial_tasks = [t for t in tasks if t["name"].startswith("trial-")]
        states = {}
        for t in trial_tasks:
            states[t["state_type"]] = states.get(t["state_type"], 0) + 1
        return {
            "flow_runs": len(ids),
            "rc": res.returncode,
            "wall_s": wall,
            "trial_task_runs": len(trial_tasks),
            "expected": trials,
            "states": states,
            "error_lines": [
                ln for ln in (res.stdout + res.stderr).splitlines() if ERRORS.search(ln)
            ][:5],
        }

    if name == "postgres":
        with S.postgres(work) as db, S.prefect_server(work / "pg", db) as api:
            return {"runs": [one(api, i) for i in range(REPEATS)]}
    with S.prefect_server(work / "sqlite") as api:
        return {"runs": [one(api, i) for i in range(REPEATS)]}


REPEATS = 2


def main() -> None:
    global REPEATS
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--json", default=str(HERE / "results" / "deployment.json"))
    a = p.parse_args()
    REPEATS = a.repeats
    out = {"trials": a.trials, "workers": a.workers}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for sub in ("pg", "sqlite", "lat"):
            (work / sub).mkdir()
        if not a.skip_latency:
            out["latency"] = latency(work / "lat")
        for name in ("sqlite", "postgres"):
            out[name] = backend(work, name, a.trials, a.workers)

    if "latency" in out:
        lat = out["latency"]
        print(
            f"deployment run → flow run started: {lat['to_flow_run_start_s']:.1f} s, "
            f"→ first trial task running: {lat['to_first_trial_task_s']:.1f} s "
            f"(worker poll {lat['worker_poll_s']:.0f} s; state {lat['state']})"
        )
    print(f"\n{a.trials} trial tasks on {a.workers} Dask workers, per server backend:")
    print(
        f"{'server':<10} {'run':>3} {'rc':>3} {'wall s':>8} {'task runs':>10} {'states':<24} errors"
    )
    for name in ("sqlite", "postgres"):
        for i, r in enumerate(out[name]["runs"]):
            print(
                f"{name:<10} {i:>3} {r['rc']:>3} {r['wall_s']:>8.1f} "
                f"{r['trial_task_runs']:>4}/{r['expected']:<5} {json.dumps(r['states']):<24} "
                f"{len(r['error_lines'])}"
            )
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=1))
    print(f"\nwrote {a.json}")


if __name__ == "__main__":
    main()

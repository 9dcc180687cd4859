"""The cluster paths side by side, in one run: the store on S3 (moto_server on 127.0.0.1) vs a
local folder, a fresh run and a no-op rerun each; and on a private single-node Slurm, the time
from launch to the first job submitted and to the first trial task running.

    python benchmarks/cluster_paths.py [--trials 4] [--json PATH]

Whole `ntkflow run` commands (embedded Prefect API, LocalCluster of 2 workers, smoke preset,
kernels only). The Slurm part needs root and Debian's slurmctld/slurmd/munge (skipped without).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
import servers as S  # noqa: E402


def _args(trials: int) -> list[str]:
    sets = [f"trials={trials}", "data.n_obs=240", "compute.n_workers=2"]
    return ["run", "--preset", "smoke", "--kernels-only", *[a for s in sets for a in ("--set", s)]]


def _timed(args: list[str], env: dict, log: Path) -> float:
    t0 = time.monotonic()
    with log.open("w") as f:
        res = subprocess.run(
            [sys.executable, "-m", "flows.cli", *args], env=env, stdout=f, stderr=subprocess.STDOUT
        )
    if res.returncode:
        raise SystemExit(f"failed: {' '.join(args)}\n{log.read_text()[-3000:]}")
    return time.monotonic() - t0


def stores(trials: int, work: Path) -> dict:
    env = S.base_env(work / "home")
    out = {}
    with S.s3_server(work) as s3:
        for name, root, extra in (
            ("local", str(work / "runs"), {}),
            ("s3", "s3://ntkflow/bench", s3),
        ):
            e = {**env, **extra}
            fresh = _timed([*_args(trials), "--out", root], e, work / f"{name}-fresh.log")
            noop = _timed([*_args(trials), "--out", root], e, work / f"{name}-noop.log")
            out[name] = {"fresh_s": round(fresh, 1), "noop_s": round(noop, 1)}
    return out


def slurm_start(trials: int, work: Path) -> dict | None:
    if S.slurm_missing():
        print(f"Slurm part skipped: {S.slurm_missing()}")
        return None
    import yaml

    spec = yaml.safe_load((HERE.parent / "deploy/slurm-gpu.yaml").read_text())
    spec["kwargs"].update(
        cores=1,
        memory="2GB",
        worker_command="distributed.cli.dask_worker",
        log_directory=str(work / "slurm-logs"),
        scheduler_options={"dashboard_address": ":0"},
    )
    spec["adapt"] = {"minimum": 0, "maximum": 2}
    (work / "spec.yaml").write_text(yaml.safe_dump(spec))
    with S.slurm(work) as senv:
        env = {**S.base_env(work / "home"), **senv}
        args = [*_args(trials), "--cluster", str(work / "spec.yaml"), "--out", str(work / "sr")]
        log = (work / "slurm.log").open("w")
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        first_job = first_task = None
        while proc.poll() is None:
            now = time.monotonic() - t0
            if first_job is None:
                q = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True)
                if q.stdout.strip():
                    first_job = now
            if first_task is None and list((work / "sr").glob("*/trials/*/lease/trial/*.json")):
                first_task = now
            time.sleep(0.1)
        total = time.monotonic() - t0
        if proc.returncode:
            raise SystemExit((work / "slurm.log").read_text()[-3000:])
    return {
        "first_job_s": round(first_job, 1) if first_job else None,
        "first_trial_task_s": round(first_task, 1) if first_task else None,
        "whole_run_s": round(total, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--json", default=str(HERE / "results" / "cluster_paths.json"))
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ntkflow-bench-") as tmp:
        work = Path(tmp)
        result = {"trials": a.trials, "stores": stores(a.trials, work)}
        result["slurm"] = slurm_start(a.trials, work)
    print(f"\nsmoke preset, kernels only, {a.trials} trials, whole commands (seconds)")
    print(f"{'store':<8}{'fresh run':>12}{'no-op rerun':>14}")
    for name, r in result["stores"].items():
        print(f"{name:<8}{r['fresh_s']:>12}{r['noop_s']:>14}")
    loc, s3 = result["stores"]["local"], result["stores"]["s3"]
    print(
        f"S3 / local: fresh {s3['fresh_s'] / loc['fresh_s']:.2f}x, no-op "
        f"{s3['noop_s'] / loc['noop_s']:.2f}x"
    )
    if result["slurm"]:
        r = result["slurm"]
        print(
            f"Slurm: first job submitted {r['first_job_s']} s after launch, first trial task "
            f"running {r['first_trial_task_s']} s, whole run {r['whole_run_s']} s"
        )
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=1))
    print(f"wrote {a.json}")


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    main()

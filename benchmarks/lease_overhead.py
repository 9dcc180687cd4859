"""Cost of the per-trial leases: the lease operations themselves, and whole runs side by side.

    python benchmarks/lease_overhead.py [--preset paper] [--rounds 1] [--ops 300] [--no-runs]

1. Lease operations on a local store, as a trial does them: take the lease (list, read,
   create-if-absent, remove the superseded generation), one heartbeat, release. Mean over
   ``--ops`` trials, compared with the mean time of one trial in the timed runs.
2. ``ntkflow run --preset PRESET --kernels-only`` with leases and with ``NTKFLOW_LEASES=0``
   (a switch that exists only for this measurement), interleaved ``--rounds`` times, each into a
   fresh folder. The machine is shared, so the difference of two runs is noisy; (1) is the
   precise figure. Prints a table and writes JSON.
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
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def lease_ops(n: int) -> dict:
    from ntkflow import lease
    from ntkflow.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        take, beat, release = [], [], []
        for k in range(n):
            rel = f"trials/{k:03d}/lease/trial"
            for again in range(2):  # a fresh trial, then a rerun over a released lease
                t0 = time.perf_counter()
                held, _ = lease.try_acquire(store, rel, ttl=60)
                t1 = time.perf_counter()
                held._write(heartbeat=t1, expires=t1 + 60)
                t2 = time.perf_counter()
                held.release()
                t3 = time.perf_counter()
                if again:
                    take.append(t1 - t0)
                    beat.append(t2 - t1)
                    release.append(t3 - t2)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "acquire_s": mean(take),
        "heartbeat_s": mean(beat),
        "release_s": mean(release),
        "per_trial_s": mean(take) + mean(release),
    }


def run(preset: str, leases: bool, tmp: str) -> float:
    env = {**os.environ, "PREFECT_HOME": f"{tmp}/home", "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_API_URL", None)
    env["NTKFLOW_LEASES"] = "1" if leases else "0"
    out = f"{tmp}/runs-{'on' if leases else 'off'}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "flows.cli", "run", "--preset", preset, "--kernels-only"]
    t0 = time.perf_counter()
    res = subprocess.run([*cmd, "--out", out], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"run failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return wall


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="paper")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--ops", type=int, default=300)
    p.add_argument("--no-runs", action="store_true")
    p.add_argument("--json", default=str(HERE / "results" / "lease_overhead.json"))
    a = p.parse_args()
    from ntkflow.config.presets import load_config

    trials = load_config(a.preset).trials
    ops = lease_ops(a.ops)
    out = {"preset": a.preset, "trials": trials, "lease_ops": ops, "runs": []}
    if not a.no_runs:
        with tempfile.TemporaryDirectory() as tmp:
            run("smoke", True, tmp)  # warm-up: Prefect database migrations, imports
            for _ in range(a.rounds):
                for leases in (True, False):
                    out["runs"].append({"leases": leases, "wall_s": run(a.preset, leases, tmp)})
    print(f"lease operations per trial (local store, mean of {a.ops}):")
    for name in ("acquire_s", "heartbeat_s", "release_s", "per_trial_s"):
        print(f"  {name:12s} {1e3 * ops[name]:8.3f} ms")
    if out["runs"]:
        on = [r["wall_s"] for r in out["runs"] if r["leases"]]
        off = [r["wall_s"] for r in out["runs"] if not r["leases"]]
        mean_on, mean_off = sum(on) / len(on), sum(off) / len(off)
        per_trial = mean_on / trials  # wall time of the run per trial (2 workers in parallel)
        out |= {
            "wall_with_leases_s": mean_on,
            "wall_without_leases_s": mean_off,
            "difference_percent": 100 * (mean_on - mean_off) / mean_off,
            "lease_ops_percent_of_run": 100 * ops["per_trial_s"] * trials / mean_on,
            "run_seconds_per_trial": per_trial,
        }
        print(f"ntkflow run --preset {a.preset} --kernels-only ({trials} trials):")
        print(f"  with leases    {mean_on:8.1f} s   (runs: {[round(x, 1) for x in on]})")
        print(f"  without leases {mean_off:8.1f} s   (runs: {[round(x, 1) for x in off]})")
        print(f"  difference     {out['difference_percent']:+8.1f} % (noisy: shared machine)")
        print(
            f"  lease operations: {1e3 * ops['per_trial_s'] * trials:.1f} ms in all = "
            f"{out['lease_ops_percent_of_run']:.3f} % of the run"
        )
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

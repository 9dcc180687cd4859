"""Wall time of a whole `ntkflow run --kernels-only` (default: the paper preset, 50 trials).

    python benchmarks/kernels_only_run.py [--preset paper] [--json PATH] [-- extra ntkflow args]

Runs the real command (embedded Prefect API, LocalCluster) into a fresh temporary folder, so
no trial is reused, and reports the wall time, trials per minute and the per-trial step times
recorded in result.json. Prints a table and writes JSON.
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

import pandas as pd

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="paper")
    p.add_argument("--json", default=str(HERE / "results" / "kernels_only_run.json"))
    p.add_argument("extra", nargs="*")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PREFECT_HOME": os.environ.get("PREFECT_HOME", f"{tmp}/home")}
        env.pop("PREFECT_API_URL", None)
        cmd = [
            sys.executable,
            "-m",
            "flows.cli",
            "run",
            "--preset",
            a.preset,
            "--kernels-only",
            "--out",
            f"{tmp}/runs",
            *a.extra,
        ]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            sys.exit(f"run failed ({res.returncode}):\n{res.stderr[-3000:]}")
        (run_dir,) = Path(f"{tmp}/runs").iterdir()
        df = pd.read_parquet(run_dir / "results.parquet")
        summary = json.loads((run_dir / "summary.json").read_text())
    trials = summary["run"]["trials"]
    per = df.groupby("method")[["seconds_gram", "seconds_solve"]].mean()
    out = {
        "preset": a.preset,
        "trials": trials,
        "wall_seconds": wall,
        "trials_per_minute": 60 * trials / wall,
        "mean_seconds_per_kernel": per.to_dict(orient="index"),
        "cpu_count": os.cpu_count(),
    }
    print(
        f"ntkflow run --preset {a.preset} --kernels-only: {trials} trials in {wall:.1f} s "
        f"({out['trials_per_minute']:.1f} trials/min, {os.cpu_count()} cores)"
    )
    print(per.to_string(float_format=lambda v: f"{v:.4f}"))
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

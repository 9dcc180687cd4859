"""Prefect releases and server settings side by side: the same `ntkflow run --kernels-only`.

    python benchmarks/prefect_versions.py [--preset quick] [--trials 8] [--repeats 3]
        [--python /path/to/other/venv/bin/python] [--batch 50] [--json PATH]

Each configuration runs the real command (embedded Prefect API, LocalCluster) into a fresh
folder with a fresh Prefect home (its database migrated first, untimed), round-robin, so a
noisy machine slows every configuration alike. Configurations:

  this venv, batch 1        the installed Prefect (3.8.8), its embedded server's task-run
                            recorder writing one task-run event per transaction (Prefect's
                            default; PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE and
                            _READ_BATCH_SIZE)
  this venv, batch N        the same with N events per transaction (not adopted: task runs
                            open at a SIGINT were not yet recorded when marked Crashed)
  other venv, batch 1       ``--python``: another virtualenv with this checkout installed
                            (e.g. prefect 3.9.1: ``pip install -e . && pip install prefect==3.9.1``)

Reported per configuration: median wall seconds and median CPU seconds of the whole process
tree (user + system of the command and every process it waited for: the embedded server, the
Dask nannies and workers), and each median's ratio to this venv's. Prints a table and writes
JSON (benchmarks/results/prefect_versions.json).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_io import commit, print_and_save

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

_MEASURE = """
import os, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
wall = time.perf_counter() - t
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(rc, wall, r.ru_utime + r.ru_stime)
"""


def _migrate(python: str, home: Path) -> None:
    start = "from prefect.server.api.server import SubprocessASGIServer as S; "
    start += "s = S(); s.start(timeout=600); s.stop()"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    subprocess.run([python, "-c", start], env=env, check=True, timeout=900)


def _once(python: str, env_extra: dict, preset: str, trials: int, tmp: Path, i: int):
    home, out = tmp / f"home-{i}", tmp / f"runs-{i}"
    _migrate(python, home)
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONPATH": str(ROOT),
        **env_extra,
    }
    env.pop("PREFECT_API_URL", None)
    cmd = [python, "-m", "flows.cli", "run", "--preset", preset, "--kernels-only"]
    cmd += ["--set", f"trials={trials}", "--out", str(out)]
    res = subprocess.run(
        [sys.executable, "-c", _MEASURE, *cmd], env=env, capture_output=True, text=True, cwd=ROOT
    )
    rc, wall, cpu = res.stdout.split()
    if rc != "0":
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}")
    return float(wall), float(cpu)


def _version(python: str) -> str:
    code = "import prefect; print(prefect.__version__)"
    return subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="quick")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--python", help="another venv's python, this checkout installed there")
    p.add_argument("--batch", type=int, default=50, help="task-run recorder batch (0: skip)")
    p.add_argument("--json", default=str(HERE / "results" / "prefect_versions.json"))
    a = p.parse_args()

    here = sys.executable

    def batch(n: int) -> dict:
        return {
            "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": str(n),
            "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": str(n),
        }

    configs = {f"prefect {_version(here)}, recorder batch 1": (here, batch(1))}
    if a.batch:
        configs[f"prefect {_version(here)}, recorder batch {a.batch}"] = (here, batch(a.batch))
    if a.python:
        configs[f"prefect {_version(a.python)}, recorder batch 1"] = (a.python, batch(1))
    times: dict[str, list[tuple[float, float]]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        i = 0
        for rep in range(a.repeats):
            for name, (python, extra) in configs.items():
                i += 1
                t0 = time.perf_counter()
                times[name].append(_once(python, extra, a.preset, a.trials, Path(tmp), i))
                w, cpu = times[name][-1]
                took = time.perf_counter() - t0
                print(f"  repeat {rep + 1}, {name}: wall {w:.1f} s, CPU {cpu:.1f} s ({took:.0f} s)")
    base = next(iter(configs))
    med = {c: [statistics.median(x) for x in zip(*v, strict=True)] for c, v in times.items()}
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit(),
        "preset": a.preset,
        "trials": a.trials,
        "kernels_only": True,
        "repeats": a.repeats,
        "configurations": [
            {
                "configuration": c,
                "wall_s": w,
                "cpu_s": cpu,
                "wall_ratio": w / med[base][0],
                "cpu_ratio": cpu / med[base][1],
            }
            for c, (w, cpu) in med.items()
        ],
        "raw": times,
    }
    rows = [
        (
            e["configuration"],
            f"wall {e['wall_s']:6.1f} s ({e['wall_ratio']:.2f}x)   CPU {e['cpu_s']:6.1f} s "
            f"({e['cpu_ratio']:.2f}x)",
        )
        for e in out["configurations"]
    ]
    title = f"ntkflow run --preset {a.preset} --kernels-only, {a.trials} trials"
    title += f", median of {a.repeats}"
    print_and_save(title, rows, out, a.json)


if __name__ == "__main__":
    main()

"""Storage and orchestration overhead against the science, side by side in one run.

    python benchmarks/overhead.py [--preset paper] [--trials 50] [--workers 2] [--json PATH]

Measures, on the kernels-only part of a preset (the paper's: 9 kernels, n_obs = 1000):

  floor        the science alone: every kernel's Gram evaluated in memory and its kernel
               regression solved, summed over all trials, divided by the workers
  plain pool   ``run_trial`` for every trial in a plain process pool (no Prefect, no Dask
               cluster), into a fresh store
  flow         the whole command ``ntkflow run --kernels-only`` into a fresh folder, with a
               Prefect home that exists (its database made first, timed on its own: once per
               machine)
  no-op rerun  the same command again, with nothing to compute
  storage floor  one trial's Grams written as plain files and hashed, no Zarr: the least any
               store of them costs
  split        one trial in one process, profiled: science (kernel evaluation, solves, data
               simulation), storage (Zarr, the store, hashing, JSON) and the rest of the trial
               (items, leases, records); orchestration per trial is the flow's wall time per
               trial and worker less what one trial takes in one process.

Prints a table and writes JSON (benchmarks/results/overhead.json).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench_io import print_and_save

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLI = [sys.executable, "-m", "flows.cli"]


def _config(preset: str, trials: int):
    from ntkflow.config.presets import load_config

    return load_config(preset, overrides=["networks.enabled=false", f"trials={trials}"])


def _floor_one(args) -> tuple[float, float]:
    """Seconds of the science of one trial: its Grams evaluated in memory and their solves;
    and the simulation of its data."""
    preset, trials, k = args
    from ntkflow import krr
    from ntkflow.data import simulate
    from ntkflow.kernels import kernel

    cfg = _config(preset, trials)
    t0 = time.perf_counter()
    d = simulate(cfg, k)
    t1 = time.perf_counter()
    xtr, xte = d.x[d.train], d.x[d.test]
    for name in cfg.gram_kernels:
        kern = kernel(name, formulas=cfg.formulas)
        krr.predict(kern(xte, xtr), kern(xtr), d.y[d.train], ridge=cfg.krr.ridge)
    return time.perf_counter() - t1, t1 - t0


def _trial_one(args) -> float:
    preset, trials, k, out = args
    from ntkflow import trial
    from ntkflow.store import Store

    cfg = _config(preset, trials)
    t0 = time.perf_counter()
    trial.run_trial(cfg, Store(out).child(cfg.run_id), k)
    return time.perf_counter() - t0


STORAGE = ("ntkflow/store.py", "/zarr/", "/fsspec/")  # and SHA-256: see _split


def _split(preset: str, trials: int, tmp: str) -> dict:
    """One trial (after a warm-up trial) in one process: its wall time, its science measured
    alone on the same trial, and its storage from a profile of the trial (Zarr through its event
    loop, the store's files, SHA-256, each counted once from callers outside storage code)."""
    from ntkflow import trial
    from ntkflow.store import Store

    cfg = _config(preset, trials)
    store = Store(f"{tmp}/profile")
    trial.run_trial(cfg, store, 0)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    trial.run_trial(cfg, store, 1)
    prof.disable()
    wall = time.perf_counter() - t0
    science = sum(min(_floor_one((preset, trials, 1))[i] for _ in range(3)) for i in (0, 1))

    def own(key):
        return any(s in key[0] for s in STORAGE)

    storage = 0.0
    for key, row in pstats.Stats(prof).stats.items():
        if own(key) or "sha256" in key[2]:
            storage += sum(c[3] for caller, c in row[4].items() if not own(caller))
    return {"wall": wall, "science": science, "storage": storage}


def _storage_floor(preset: str, trials: int, tmp: str) -> dict:
    """What storing one trial's Grams costs at the least: their bytes written as plain files
    (one write per array, no Zarr, no metadata) and hashed once (SHA-256), best of 3 rounds;
    against the science of the same Grams (their evaluation and solves)."""
    import hashlib
    import shutil

    from ntkflow import krr
    from ntkflow.data import simulate
    from ntkflow.kernels import kernel

    cfg = _config(preset, trials)
    d = simulate(cfg, 1)
    xtr, xte = d.x[d.train], d.x[d.test]
    arrays = []
    for name in cfg.gram_kernels:
        kern = kernel(name, formulas=cfg.formulas)
        arrays += [kern(xtr), kern(xte, xtr)]
        krr.predict(arrays[-1], arrays[-2], d.y[d.train], ridge=cfg.krr.ridge)
    best = float("inf")
    for _ in range(3):
        folder = Path(tmp) / "storage-floor"
        folder.mkdir()
        t0 = time.perf_counter()
        for i, a in enumerate(arrays):
            with open(folder / str(i), "wb") as f:
                f.write(memoryview(a))
            hashlib.sha256(memoryview(a)).hexdigest()
        best = min(best, time.perf_counter() - t0)
        shutil.rmtree(folder)
    return {"seconds": best, "bytes": sum(a.nbytes for a in arrays)}


def _command(preset: str, trials: int, workers: int, out: str, home: str) -> tuple[float, str]:
    env = {**os.environ, "PREFECT_HOME": home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    args = ["run", "--preset", preset, "--kernels-only", "--set", f"trials={trials}"]
    args += ["--workers", str(workers), "--out", out]
    t0 = time.perf_counter()
    res = subprocess.run(CLI + args, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"ntkflow run failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return wall, res.stderr


def _new_home(home: str) -> float:
    """Seconds to create a Prefect home: the embedded server's first start migrates its new
    SQLite database (once per machine and PREFECT_HOME, then every start skips it)."""
    env = {**os.environ, "PREFECT_HOME": home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    code = "from flows.embedded import EmbeddedAPI as E; s = E(); s.wait(); s.stop()"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)
    return time.perf_counter() - t0


def _one_thread_per_worker() -> None:
    """What a worker of the local cluster gets (ntkflow.cluster.resources.worker_env):
    single-threaded math libraries, so the floor, the pool and the profile run as the flow's
    workers do. Set before NumPy is imported here or in the pool's processes."""
    os.environ.update(dict.fromkeys(THREAD_VARS, "1"))


THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NTKFLOW_KERNEL_THREADS",
)


def main() -> None:
    _one_thread_per_worker()
    from ntkflow.cluster.resources import worker_env

    assert worker_env(1) == dict.fromkeys(THREAD_VARS, "1"), worker_env(1)
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="paper")
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--json", default=str(HERE / "results" / "overhead.json"))
    a = p.parse_args()
    w, n = a.workers, a.trials
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(w) as pool:
        floor_each = [f for f, _ in pool.map(_floor_one, [(a.preset, n, k) for k in range(n)])]
        t0 = time.perf_counter()
        pool_each = list(pool.map(_trial_one, [(a.preset, n, k, f"{tmp}/pool") for k in range(n)]))
        pool_wall = time.perf_counter() - t0
        split = _split(a.preset, n, tmp)
        storage_floor = _storage_floor(a.preset, n, tmp)
        home = f"{tmp}/prefect-home"
        home_wall = _new_home(home)  # once per machine: a user's Prefect home exists
        flow_wall, _ = _command(a.preset, n, w, f"{tmp}/runs", home)
        noop_wall, noop_log = _command(a.preset, n, w, f"{tmp}/runs", home)
    floor = sum(floor_each) / w
    science = split["science"]
    rest = max(0.0, split["wall"] - science - split["storage"])
    orchestration = max(0.0, flow_wall * w / n - split["wall"])
    out = {
        "preset": a.preset,
        "trials": n,
        "workers": w,
        "floor_seconds": floor,
        "plain_pool_seconds": pool_wall,
        "plain_pool_trial_seconds_mean": sum(pool_each) / n,
        "flow_seconds": flow_wall,
        "flow_over_floor": flow_wall / floor,
        "noop_rerun_seconds": noop_wall,
        "new_prefect_home_seconds": home_wall,
        "per_trial": {
            **split,
            "trial_rest": rest,
            "orchestration": orchestration,
            "storage_share_of_science": split["storage"] / science,
            "overhead_share_of_science": (split["wall"] - science + orchestration) / science,
        },
        "storage_floor": {
            **storage_floor,
            "share_of_science": storage_floor["seconds"] / science,
        },
        "noop_rerun_log_tail": noop_log[-600:],
        "cpu_count": os.cpu_count(),
    }
    rows = [
        ("compute floor (science / workers)", f"{floor:.1f} s"),
        ("plain pool of run_trial", f"{pool_wall:.1f} s"),
        ("ntkflow run, whole command", f"{flow_wall:.1f} s ({flow_wall / floor:.2f}× floor)"),
        ("no-op rerun, whole command", f"{noop_wall:.1f} s"),
        ("(once: a new Prefect home's migrations)", f"{home_wall:.1f} s"),
        ("one trial in one process", f"{split['wall']:.3f} s"),
        ("  science", f"{science:.3f} s"),
        ("  storage", f"{split['storage']:.3f} s ({split['storage'] / science:.0%} of science)"),
        (
            "  storage floor (plain files + SHA-256)",
            f"{storage_floor['seconds']:.3f} s for {storage_floor['bytes'] / 1e6:.0f} MB "
            f"({storage_floor['seconds'] / science:.0%} of science)",
        ),
        ("  rest of the trial (items, leases)", f"{rest:.3f} s"),
        ("  orchestration (flow, per trial)", f"{orchestration:.3f} s"),
        (
            "  storage + orchestration + rest",
            f"{out['per_trial']['overhead_share_of_science']:.0%} of science",
        ),
    ]
    print_and_save(
        f"{a.preset} --kernels-only, {n} trials, {w} workers, {os.cpu_count()} cores",
        rows,
        out,
        a.json,
    )


if __name__ == "__main__":
    main()

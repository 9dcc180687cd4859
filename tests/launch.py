"""Helpers of the end-to-end tests (chaos, concurrency, S3, Slurm): launch `ntkflow run` in its
own process group, kill its whole process tree, read a run's outcome, compute the numbers a run
must give."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


# The small run whose numbers the S3 and Slurm tests compare with a local computation: one
# setting for both (S3 runs it --kernels-only), so one reference table serves both.
SMALL = [
    "trials=2",
    "data.n_obs=120",
    "kernels=[NTKB1, K1]",
    "networks.depths=[1]",
    "networks.width=64",
    "networks.epochs=[20]",
]

REFERENCE = """
import json, sys
from ntkflow import report, trial
from ntkflow.config.presets import load_config
from ntkflow.store import Store
cfg, store = load_config("smoke", overrides=json.loads(sys.argv[1])), Store(sys.argv[2])
for k in range(cfg.trials):
    trial.run_trial(cfg, store, k)
print(json.dumps(report.aggregate(cfg, store)["methods"]))
"""


def reference_table(once, overrides: list[str]) -> dict:
    """The summary's ``methods`` of the smoke preset with ``overrides``, computed by `run_trial`
    into a local folder in one process with the workers' environment (single-threaded math
    libraries, so the same float operations as any cluster's workers): the numbers a run on
    another backend must give. Computed once per pytest session for each list of overrides
    (``once``: the conftest fixture)."""
    from ntkflow.cluster.resources import worker_env

    def build(folder: Path) -> None:
        res = subprocess.run(
            [sys.executable, "-c", REFERENCE, json.dumps(overrides), str(folder / "store")],
            cwd=ROOT,
            env={**os.environ, **worker_env(1)},
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr
        (folder / "methods.json").write_text(res.stdout.splitlines()[-1])

    return json.loads((once("reference", overrides, build) / "methods.json").read_text())


def launch(args, log: Path, home: Path, env=None, api: str | None = None) -> subprocess.Popen:
    """`ntkflow ARGS` with its own PREFECT_HOME, output to ``log``: on its embedded API, or on
    the Prefect API at ``api`` (the shared server of the ``shared_api`` fixture)."""
    from servers import seed_home

    seed_home(home)
    full = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **(env or {}),
    }
    full.pop("PREFECT_API_URL", None)
    if api:
        full["PREFECT_API_URL"] = api
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=ROOT,
        env=full,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: killed as a whole
    )


def kill_tree(proc: subprocess.Popen) -> int:
    """SIGKILL the command, every descendant and its process group; returns how many died."""
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    psutil.wait_procs(tree, timeout=30)
    return len(tree)


def survivors(tree: list[psutil.Process], timeout: float = 30) -> list[tuple[int, list[str]]]:
    """The processes of ``tree`` (a command's descendants, taken while it ran) still alive
    after ``timeout`` seconds, zombies aside: ``(pid, cmdline)`` each; [] when none is left."""
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    left = []
    for p in alive:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                left.append((p.pid, p.cmdline()))
        except psutil.NoSuchProcess:  # gone since
            pass
    return left


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def n_complete(run_dir: Path) -> int:
    return len(list(run_dir.glob("trials/*/result.json")))

"""Helpers of the end-to-end chaos and concurrency tests: launch `ntkflow run` in its own
process group, kill its whole process tree, read a run's outcome."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def launch(args, log: Path, home: Path, env=None) -> subprocess.Popen:
    """`ntkflow ARGS` with its own PREFECT_HOME (embedded API), output to ``log``."""
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


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def n_complete(run_dir: Path) -> int:
    return len(list(run_dir.glob("trials/*/result.json")))

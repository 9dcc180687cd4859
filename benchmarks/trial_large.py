"""One kernels-only trial at large n_obs: wall time, peak RSS and Zarr size.

    python benchmarks/trial_large.py [--n-obs 20000] [--kernels NTKB1,NTKJ2,K1] [--json PATH]

Runs ``ntkflow.trial.run_trial`` in a child process under ``/usr/bin/time -v`` (peak RSS as the
kernel counts it) on a fresh local store, with the default memory budget (8 GB).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import sys, time
from ntkflow.config.presets import load_config
from ntkflow.store import Store
from ntkflow import trial
cfg = load_config("paper-corrected", overrides=["networks.enabled=false", "trials=1",
      f"data.n_obs={sys.argv[2]}", f"kernels=[{sys.argv[3]}]"])
t = time.perf_counter()
res = trial.run_trial(cfg, Store(sys.argv[1]), 0, scheduler="threads")
print("WALL", time.perf_counter() - t)
for m, r in res["methods"].items():
    print("ITEM", m, r["rmse"], r["solver"], r["seconds_gram"], r["seconds_solve"])
"""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n-obs", type=int, default=20_000)
    p.add_argument("--kernels", default="NTKB1,NTKJ2,K1")
    p.add_argument("--json", default=str(Path(__file__).parent / "results" / "trial_large.json"))
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = subprocess.run(
            ["/usr/bin/time", "-v", sys.executable, "-c", CHILD, tmp, str(a.n_obs), a.kernels],
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
        if res.returncode:
            sys.exit(res.stderr[-3000:])
        size = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr)[1])
    items = [line.split()[1:] for line in res.stdout.splitlines() if line.startswith("ITEM")]
    out = {
        "n_obs": a.n_obs,
        "kernels": a.kernels.split(","),
        "process_wall_s": wall,
        "trial_wall_s": float(re.search(r"WALL (\S+)", res.stdout)[1]),
        "peak_rss_gb": rss_kb * 1024 / 1e9,
        "store_gb": size / 1e9,
        "items": [
            {"method": m, "rmse": float(r), "solver": s, "gram_s": float(g), "solve_s": float(v)}
            for m, r, s, g, v in items
        ],
    }
    print(
        f"n_obs={a.n_obs}: trial {out['trial_wall_s']:.1f} s (process {wall:.1f} s), "
        f"peak RSS {out['peak_rss_gb']:.2f} GB, store {out['store_gb']:.2f} GB"
    )
    for it in out["items"]:
        print(
            f"  {it['method']:6} rmse {it['rmse']:.4f}  {it['solver']:9} gram {it['gram_s']:.1f} s"
            f"  solve {it['solve_s']:.1f} s"
        )
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""Width sweep: does the trained network approach its linearization as the width grows?

Runs ``ntkflow sweep`` (one flow per depth; data and Grams shared by all widths) at the paper's
linearized times t = 1.5 (NN1) and 3 (NN2), reached with the `quick` preset's η = 0.02 and
300 / 600 epochs, and reports per width the NN ↔ LIN-sgd, LIN-emp and LIN test-prediction gaps
and the fitted log-log slopes (per-trial slopes, mean and 95% t interval; theory ≈ −0.5).

    PYTHONPATH=$PWD python benchmarks/theory_sweep.py                       # default below
    PYTHONPATH=$PWD python benchmarks/theory_sweep.py --trials 8 \\
        --widths1 256,512,1024,2048,4096 --widths2 256,512,1024,2048

On GPUs at the paper's width and learning rate (one dask-cuda worker per GPU):

    ntkflow sweep --preset paper-corrected --cluster cuda --widths 1000,2500,5000,10000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_sweep(depth: int, widths: str, trials: int, out: str, workers: int) -> dict:
    epochs = {1: 300, 2: 600}[depth]
    args = ["--widths", widths, "--set", f"trials={trials}", "--set", "kernels=[NTKB1, NTKJ1]"]
    args += ["--set", f"networks.depths=[{depth}]", "--set", f"networks.epochs=[{epochs}]"]
    return run_ntkflow(args, out, workers)


def run_ntkflow(args: list[str], out: str, workers: int) -> dict:
    """``ntkflow sweep --preset quick ARGS`` in a subprocess; its summary, command and time."""
    cmd = [sys.executable, "-m", "flows.cli", "sweep", "--preset", "quick", *args]
    cmd += ["--out", out, "--workers", str(workers)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=os.environ)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        print(r.stdout[-3000:], r.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{' '.join(cmd[2:])} failed (exit {r.returncode})")
    run_line = next(line for line in r.stdout.splitlines() if line.startswith("run folder:"))
    folder = run_line.split("run folder:")[1].split(" in ")[0].strip()
    summary = json.loads(Path(folder, "summary.json").read_text())
    return {"command": " ".join(cmd[2:]), "seconds": seconds, "folder": folder, **summary}


def _pm(e: dict, digits: int = 4) -> str:
    return f"{e['mean']:.{digits}f}±{e['se']:.{digits}f}" if e.get("n") else "–"


def _ci(d: dict | None) -> str:
    if not d or d.get("n", 0) < 2:
        return "–"
    return f"{d['mean_diff']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"


def print_after(summary: dict) -> None:
    """Per network: init and final kernel error, drift, the gaps to LIN-emp and LIN-after and
    the paired differences (final − init error; gap LIN-after − gap LIN-emp)."""
    print(
        "network | init error | final error | drift | gap LIN-emp | gap LIN-after | "
        "final − init [95% CI] | after − emp gap [95% CI]"
    )
    for name, e in summary["theory"].items():
        dg, p, a = e["diagnostics"], e["predictors"], e.get("after", {})
        emp = next(v for k, v in p.items() if k.split("@")[0].endswith("-emp"))
        after = next(v for k, v in p.items() if k.split("@")[0].endswith("-after"))
        print(
            f"{name} | {_pm(dg.get('ntk_init_error', {}))} | {_pm(dg.get('ntk_final_error', {}))}"
            f" | {_pm(dg.get('ntk_drift', {}))} | {_pm(emp['gap'])} | {_pm(after['gap'])} | "
            f"{_ci(a.get('final_minus_init_error'))} | {_ci(a.get('after_minus_emp_gap'))}"
        )
    for v in summary.get("verdict", {}).values():
        print(v["sentence"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--widths1", default="256,512,1024,2048,4096")
    ap.add_argument("--widths2", default="256,512,1024,2048")
    ap.add_argument("--depths", default="1,2")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="/tmp/ntkflow-theory-sweep")
    args = ap.parse_args()
    results = {}
    for depth in (int(d) for d in args.depths.split(",")):
        widths = args.widths1 if depth == 1 else args.widths2
        res = run_sweep(depth, widths, args.trials, args.out, args.workers)
        results[f"NN{depth}"] = res
        sweep = res["width_slopes"][f"NN{depth}"]
        print(
            f"\nNN{depth}: t = {2 * 0.02 * {1: 300, 2: 600}[depth] / 8:g}, "
            f"{args.trials} trials, {res['seconds']:.0f} s, run {res['folder']}"
        )
        print(
            "predictor | "
            + " | ".join(f"w={w}" for w in sweep[next(iter(sweep))]["widths"])
            + " | slope [95% CI] | NN vs LIN RMSE at largest width"
        )
        for base, r in sweep.items():
            gaps = " | ".join(
                f"{g:.4f}±{s:.4f}" for g, s in zip(r["gap_mean"], r["gap_se"], strict=True)
            )
            slope = (
                f"{r['slope']:+.3f} [{r['slope_ci_low']:+.3f}, {r['slope_ci_high']:+.3f}]"
                if "slope" in r
                else "–"
            )
            last = r["nn_vs_lin_rmse_rel"][-1]
            refs = ", ".join(f"{g:.4f}" for g in r.get("vs_reference_mean", []))
            print(
                f"{base} | {gaps} | {slope} | {last.get('mean', float('nan')):+.3f} | "
                f"vs reference: {refs or '–'}"
            )
        print_after(res)
    path = ROOT / "benchmarks" / "results" / "theory_sweep.json"
    keep = ("command", "seconds", "folder", "width_slopes", "theory", "verdict")
    slim = {k: {key: v.get(key) for key in keep} for k, v in results.items()}
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**old, **slim}, indent=1))  # depths run separately merge
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""One check of the CUDA half on a lent GPU machine, in under 8 minutes (issue 25, docs/gpu.md).

    make gpu-wheels                              # here, with PyPI: the wheels it lacks → .whl/
    make gpu-check                               # there: python benchmarks/gpu_check.py
    python benchmarks/gpu_check.py --dry-run     # any CPU, every step at tiny sizes (CI)

The wheels in ``.whl/`` are installed into a temporary site (``pip install --no-index
--no-deps --target``), put on PYTHONPATH, and the steps run in order of value, each in its own
subprocess with its own time box (killed with everything it started when the box ends; what
the earlier steps found is kept):

1. ``tests``: ``pytest -m gpu`` on tests/test_gpu.py, test_nets.py, test_kernels.py (CuPy Gram
   blocks vs NumPy, the CuPy Gram in Zarr, the LocalCUDACluster's GPU=1, a training step on
   CUDA vs the CPU);
2. ``gram``: the NTKB2 Gram at n = 20,000 on CuPy, blockwise through Dask as a trial computes
   it, against NumPy on a subsample of its rows (the full NumPy time is extrapolated);
3. ``train step``: seconds per SGD step at width 10,000, depth 1 and 2, batch 8, against the
   HBM roofline of the bytes it moves, from a device-to-device copy in the same run
   (benchmarks/train_step.py's code);
4. ``trial``: one trial of the paper protocol on the LocalCUDACluster's GPU worker; the
   networks' epochs are scaled down to fit the box (sized from step 3) and the training loop
   is extrapolated to NN1 3000 / NN2 6000 epochs, which the output says.

Prints one row per step as it ends, then writes JSON: ``$OUT/gpu_check.json`` (``$OUT`` unset:
benchmarks/results/); a dry run writes gpu_check_dry_run.json ($OUT, else the temp folder).
Exits 1 unless every step is ok.
The dry run runs every step on the CPU (NumPy for CuPy, a LocalCluster for the CUDA one), no
wheels installed, so the check cannot rot between loans.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # run as a script: benchmarks/ is on sys.path

TOTAL_S = 480  # the whole check, installation included: a lent machine's command gets 600 s
INSTALL_S = 60
BOXES = {"tests": 120, "gram": 70, "train step": 60, "trial": 170}  # seconds, in order of value
TRIAL_RESERVE_S = 95  # of the trial's box, for all but the training loops (cluster, Grams, theory)
DRY_TRIAL_TRAIN_S = 2.0  # a dry run's training loops: the code path, not the timing
TEST_FILES = ["tests/test_gpu.py", "tests/test_nets.py", "tests/test_kernels.py"]


# ---- steps: each runs in its own process (``--step NAME``) and returns a JSON-able dict with
# ---- "status" (ok / fail), "line" (its row of the table) and "details" (lines under it)


def step_tests(dry: bool, budget: float, inputs: dict) -> dict:
    opts = "-v -rs -p no:cacheprovider -p no:randomly -m gpu".split()
    cmd = [sys.executable, "-m", "pytest", *opts, *TEST_FILES]
    try:  # stop short of the box, to report which test was running
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget - 5)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else e.stdout or ""
        return {
            "status": "timeout",
            "line": f"pytest -m gpu still running after {budget - 5:g} s",
            "details": out.splitlines()[-15:],
        }
    out = p.stdout + p.stderr
    counts = {k: 0 for k in ("passed", "failed", "skipped", "error")}
    summary = [line for line in out.splitlines() if re.search(r"\d+ (passed|skipped|failed)", line)]
    for n, what in re.findall(
        r"(\d+) (passed|failed|skipped|errors?)\b", summary[-1] if summary else ""
    ):
        counts[what.rstrip("s") if what.startswith("error") else what] += int(n)
    reasons = sorted(set(re.findall(r"^SKIPPED \[\d+\] [^:]+:\d+: (.+)$", out, re.M)))
    # On the GPU every test must run; on the CPU (dry run) every one must skip, with a reason.
    ran = counts["skipped"] > 0 if dry else counts["passed"] > 0 and not counts["skipped"]
    ok = p.returncode == 0 and ran and not counts["failed"] and not counts["error"]
    line = ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "no test ran"
    return {
        "status": "ok" if ok else "fail",
        "line": f"pytest -m gpu: {line}" + (f" ({'; '.join(reasons)})" if reasons else ""),
        "details": [] if ok else out.splitlines()[-15:],
        "returncode": p.returncode,
        "counts": counts,
        "skip_reasons": reasons,
    }


def step_gram(dry: bool, budget: float, inputs: dict) -> dict:
    import numpy as np

    from ntkflow import gram
    from ntkflow.kernels import kernel

    n, rows, block = (400, 100, 128) if dry else (20_000, 2_000, 2048)
    rng = np.random.default_rng(0)
    x = rng.uniform(-5, 7, (n, 15))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    k = kernel("NTKB2")
    if dry:  # the same blockwise path on NumPy chunks
        xd, sync, host, where = x, (lambda: None), (lambda a: a), "numpy (dry run)"
    else:
        import cupy

        xd, sync, host = cupy.asarray(x), cupy.cuda.Device().synchronize, cupy.asnumpy
        where = f"cupy {cupy.__version__}"
    t = time.perf_counter()
    gram.gram_dask(k, xd[:256], None, 128).compute(scheduler="sync")  # CuPy compiles kernels
    sync()
    t_warm = time.perf_counter() - t
    t = time.perf_counter()
    g = gram.gram_dask(k, xd, None, block).compute(scheduler="sync")
    sync()
    t_dev = time.perf_counter() - t
    t = time.perf_counter()
    ref = k(x[:rows], x)  # NumPy on every core: rows × n of the n × n Gram
    t_rows = time.perf_counter() - t
    got = host(g[:rows])
    max_abs = float(np.abs(got - ref).max())
    rel = max_abs / float(np.abs(ref).max())
    ok = bool(np.allclose(got, ref, rtol=1e-12, atol=1e-14))
    # NumPy computes the tiles on and above the diagonal of K(X, X): n(n+1)/2 entries
    t_full = t_rows * (n * (n + 1) / 2) / (rows * n)
    return {
        "status": "ok" if ok else "fail",
        "line": f"NTKB2 n={n:,}: {where} {t_dev:.2f} s (Dask blocks of {block}); NumPy "
        f"{rows:,} of {n:,} rows {t_rows:.2f} s, full Gram ≈ {t_full:.1f} s (extrapolated); "
        f"max |Δ| / max |K| = {rel:.1e}",
        "details": [f"warm-up (CuPy kernel compilation) {t_warm:.2f} s, not in the time"],
        "n": n,
        "block": block,
        "numpy_rows": rows,
        "device_s": t_dev,
        "warmup_s": t_warm,
        "numpy_rows_s": t_rows,
        "numpy_full_s_extrapolated": t_full,
        "max_abs_diff": max_abs,
        "max_rel_diff": rel,
        "allclose_rtol_1e-12": ok,
    }


def step_train(dry: bool, budget: float, inputs: dict) -> dict:
    import torch
    import train_step as ts

    device = "cpu" if dry else "cuda"
    if not dry and not torch.cuda.is_available():
        return {"status": "fail", "line": "torch sees no CUDA device", "details": []}
    width, steps = (64, 20) if dry else (10_000, 300)
    bandwidth = ts.copy_bandwidth(device, gib=1 / 64 if dry else 1.0)
    rows = []
    for depth in (1, 2):
        r = ts.bench_width(width, depth, steps, device, bandwidth)
        r["bytes_per_step"] = 4 * r["weight_bytes"]  # the hand-written step's 4 passes
        rows.append(r)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    nn2 = rows[1]
    details = [
        f"{name}, torch {torch.__version__}; copy {bandwidth / 1e9:,.0f} GB/s (read + write)"
    ]
    details += [
        f"NN{r['depth']}: {r['sec_per_step'] * 1e3:.3f} ms/step (autograd + optim "
        f"{r['autograd_sec_per_step'] * 1e3:.3f}), moves {r['bytes_per_step'] / 1e9:.3f} GB: "
        f"roofline {r['roofline_sec_per_step_4pass'] * 1e3:.3f} ms = "
        f"{r['fraction_of_roofline_4pass']:.0%} of the step; {r['outside_ops_share']:.0%} of "
        f"wall time {'GPU idle' if device == 'cuda' else 'outside ops'}"
        for r in rows
    ]
    return {
        "status": "ok" if all(math.isfinite(r["sec_per_step"]) for r in rows) else "fail",
        "line": f"width {width:,}, batch 8: NN1 {rows[0]['sec_per_step'] * 1e3:.3f} ms/step, "
        f"NN2 {nn2['sec_per_step'] * 1e3:.3f} ms/step = {nn2['fraction_of_roofline_4pass']:.0%} "
        f"of its HBM roofline ({nn2['bytes_per_step'] / 1e9:.2f} GB/step)",
        "details": details,
        "device": device,
        "device_name": name,
        "torch": torch.__version__,
        "width": width,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "rows": rows,
    }


def plan_epochs(
    full: list[int], sec_per_step: list[float], steps_per_epoch: int, budget_s: float
) -> tuple[list[int], float]:
    """The networks' epochs scaled by one factor (≤ 1) so their training loops fit ``budget_s``
    at the estimated seconds per step: ``(epochs, factor)``, at least one epoch each."""
    need = sum(e * steps_per_epoch * s for e, s in zip(full, sec_per_step, strict=True))
    factor = min(1.0, budget_s / need) if need > 0 else 1.0
    return [max(1, int(e * factor)) for e in full], factor


def _trial_on_worker(overrides: list[str], out: str) -> dict:
    """Trial 0 of the paper preset with ``overrides``, on this Dask worker's device."""
    from ntkflow.cluster.resources import torch_device
    from ntkflow.config.presets import load_config
    from ntkflow.store import Store
    from ntkflow.trial import run_trial

    cfg, device = load_config("paper", overrides=overrides), torch_device()
    t = time.perf_counter()
    result = run_trial(cfg, Store(out), 0, device=device)
    keep = ("status", "rmse", "epochs", "steps_per_second", "seconds_train", "device", "error")
    methods = {m: {k: r[k] for k in keep if k in r} for m, r in result["methods"].items()}
    return {"device": device, "seconds": time.perf_counter() - t, "methods": methods}


def step_trial(dry: bool, budget: float, inputs: dict) -> dict:
    from distributed import Client

    from ntkflow.cluster import lifecycle, plans
    from ntkflow.config import ComputeConfig
    from ntkflow.config.presets import load_config
    from ntkflow.split import keras_split, test_size

    small = ["data.n_obs=120", "networks.width=64"] if dry else []
    cfg = load_config("paper", overrides=small)
    nets, full = cfg.networks, list(cfg.networks.epochs)
    n_train = cfg.data.n_obs - test_size(cfg.data.n_obs, cfg.data.test_fraction)
    per_epoch = -(-keras_split(n_train, nets.validation_split) // nets.batch_size)
    measured = {r["depth"]: r["sec_per_step"] for r in inputs.get("train step", {}).get("rows", [])}
    guess = {1: 3e-4, 2: 2e-3}  # s/step where step 3 measured nothing (a cautious GPU guess)
    est = [measured.get(d, guess.get(d, 2e-3)) for d in nets.depths]
    train_s = DRY_TRIAL_TRAIN_S if dry else max(10.0, budget - TRIAL_RESERVE_S)
    epochs, factor = plan_epochs(full, est, per_epoch, train_s)
    overrides = [*small, f"networks.epochs={epochs}"]

    plan = plans.resolve_cluster("local" if dry else "cuda", ComputeConfig(n_workers=1))
    out = tempfile.mkdtemp(prefix="ntkflow-gpu-trial-")
    t = time.perf_counter()
    try:
        with lifecycle.start_cluster(plan, start_timeout=120) as address, Client(address) as c:
            t_cluster = time.perf_counter() - t
            fut = c.submit(
                _trial_on_worker, overrides, out, resources=plan.train_resources or None, pure=False
            )
            r = fut.result()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    wall = time.perf_counter() - t
    nn = {f"NN{d}": r["methods"].get(f"NN{d}", {}) for d in nets.depths}
    full_s = r["seconds"]
    for d, e_full, e in zip(nets.depths, full, epochs, strict=True):
        sps = nn[f"NN{d}"].get("steps_per_second") or math.nan
        full_s += (e_full - e) * per_epoch / sps  # the loop at the protocol's epochs
    bad = [
        m
        for m, x in r["methods"].items()
        if x.get("status", "ok") != "ok" or not math.isfinite(x.get("rmse") or math.nan)
    ]
    ok = not bad and all(nn.values()) and math.isfinite(full_s)
    scaled = "" if factor >= 1 else f", {factor:.1%} of the protocol's: extrapolated"
    rmse = ", ".join(f"{m} {x.get('rmse', math.nan):.4f}" for m, x in nn.items())
    return {
        "status": "ok" if ok else "fail",
        "line": f"paper protocol, width {nets.width:,}, on {r['device']}: epochs "
        f"{'/'.join(map(str, epochs))}{scaled}; {r['seconds']:.0f} s measured, full "
        f"{'/'.join(map(str, full))} epochs ≈ {full_s / 60:.1f} min; RMSE {rmse}",
        "details": [
            f"cluster {plan.describe()} up in {t_cluster:.1f} s; {len(r['methods'])} "
            f"methods, {len(bad)} failed{': ' + ', '.join(bad) if bad else ''}"
        ]
        + [
            f"{m}: {x.get('epochs')} epochs, {x.get('seconds_train', math.nan):.2f} s training, "
            f"{x.get('steps_per_second', math.nan):,.0f} steps/s"
            for m, x in nn.items()
        ],
        "device": r["device"],
        "width": nets.width,
        "epochs_full": full,
        "epochs_run": epochs,
        "factor": factor,
        "extrapolated": factor < 1,
        "steps_per_epoch": per_epoch,
        "sec_per_step_estimate": est,
        "trial_s": r["seconds"],
        "cluster_start_s": t_cluster,
        "wall_s": wall,
        "trial_full_s_extrapolated": full_s,
        "failed_methods": bad,
        "methods": r["methods"],
    }


STEPS = {"tests": step_tests, "gram": step_gram, "train step": step_train, "trial": step_trial}


# ---- the parent: install, time boxes, table, JSON ---------------------------------------------


def run_step(name: str, box: float, dry: bool, env: dict, inputs: dict, tmp: Path) -> dict:
    """Step ``name`` in a subprocess of its own session, killed with all it started after
    ``box`` seconds."""
    result, given = tmp / f"{name.replace(' ', '_')}.json", tmp / "inputs.json"
    given.write_text(json.dumps(inputs))
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--step",
        name,
        "--budget",
        f"{box:g}",
        "--inputs",
        str(given),
        "--result",
        str(result),
    ] + (["--dry-run"] if dry else [])
    t = time.perf_counter()
    p = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        log, _ = p.communicate(timeout=box)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # the step, its pytest, its cluster's workers
        log, _ = p.communicate()
        timed_out = True
    seconds = time.perf_counter() - t
    if result.exists():
        out = json.loads(result.read_text())
    else:
        why = f"timed out after {box:g} s" if timed_out else f"exited {p.returncode}"
        out = {"status": "timeout" if timed_out else "fail", "line": why, "details": []}
        out["details"] = log.strip().splitlines()[-12:]
    out.update(seconds=seconds, box_s=box)
    if out["status"] != "ok":
        out["log_tail"] = log[-4000:]
    return out


def row(name: str, r: dict) -> str:
    return (
        f"{name:<11} {r['status']:<7} {r.get('seconds', 0):>7.1f} {r.get('box_s', 0):>5.0f}  "
        f"{r['line']}"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="every step on the CPU, tiny sizes")
    p.add_argument("--out", help="folder of the JSON (default $OUT, else benchmarks/results)")
    p.add_argument("--wheels", default=str(ROOT / ".whl"), help="the wheels to install")
    p.add_argument("--only", action="append", choices=list(STEPS), help="run only these steps")
    p.add_argument("--step", choices=list(STEPS), help=argparse.SUPPRESS)  # a step's process
    p.add_argument("--budget", type=float, default=60.0, help=argparse.SUPPRESS)
    p.add_argument("--inputs", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.step:
        inputs = json.loads(Path(args.inputs).read_text()) if args.inputs else {}
        out = STEPS[args.step](args.dry_run, args.budget, inputs)
        Path(args.result).write_text(json.dumps(out, indent=2, default=str))
        return 0

    import gpu_wheels

    start = time.monotonic()
    # a dry run's figures are no results: never into benchmarks/results (docs/benchmarks.md)
    default = Path(tempfile.gettempdir()) if args.dry_run else ROOT / "benchmarks" / "results"
    out_dir = Path(args.out or os.environ.get("OUT") or default)
    tmp = Path(tempfile.mkdtemp(prefix="ntkflow-gpu-check-"))
    env, report = dict(os.environ), {"dry_run": args.dry_run, "python": sys.version.split()[0]}
    paths = [str(ROOT)]
    print(
        f"gpu check{' (dry run: CPU, tiny sizes)' if args.dry_run else ''}: python "
        f"{report['python']}, total box {TOTAL_S} s",
        flush=True,
    )
    try:
        if not args.dry_run:
            t = time.perf_counter()
            site = tmp / "site"
            how = gpu_wheels.install(site, Path(args.wheels))
            report["install"] = {
                "how": how,
                "seconds": time.perf_counter() - t,
                "wheels": [f.name for f in gpu_wheels.wheel_files(args.wheels)],
            }
            paths.insert(0, str(site))
            print(
                f"installed {len(report['install']['wheels'])} wheels ({how}) in "
                f"{report['install']['seconds']:.1f} s",
                flush=True,
            )
        env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        print(f"{'step':<11} {'status':<7} {'time s':>7} {'box s':>5}  result", flush=True)
        steps: dict[str, dict] = {}
        for name, box in BOXES.items():
            if args.only and name not in args.only:
                continue
            left = TOTAL_S - (time.monotonic() - start)
            if left < 15:
                steps[name] = {"status": "skipped", "line": "no time left in the check"}
            else:
                steps[name] = run_step(name, min(box, left), args.dry_run, env, steps, tmp)
            print(row(name, steps[name]), flush=True)
            for line in steps[name].get("details", []):
                print(f"{'':<11} {line}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.update(steps=steps, total_s=time.monotonic() - start, total_box_s=TOTAL_S)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ("gpu_check_dry_run.json" if args.dry_run else "gpu_check.json")
    path.write_text(json.dumps(report, indent=2, default=str))
    ok = all(s["status"] == "ok" for s in steps.values())
    print(
        f"{'all steps ok' if ok else 'NOT all steps ok'} in {report['total_s']:.0f} s; wrote {path}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

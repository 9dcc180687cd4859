"""Gram matrix speed: ``kernel(name)(x, None)`` against a plain vectorised NumPy recursion.

    python benchmarks/gram.py [--n 4000] [--d 15] [--repeat 3] [--json PATH]

The baseline computes the same exact formulas (docs/formulas.md, θ = atan2(√max(ab − c², 0), c))
on whole matrices: no symmetry, no tiling, no threads beyond NumPy's own. Data as in
docs/formulas.md: U[-5, 7] rows rescaled to unit norm. Prints a table and writes JSON
(default benchmarks/results/gram.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from ntkflow.kernels import kernel
from ntkflow.kernels.blocks import default_threads

KERNELS = ("NTKJ2", "NTKB2")
DEFAULT_JSON = Path(__file__).parent / "results" / "gram.json"


def baseline_gram(x: np.ndarray, name: str) -> np.ndarray:
    """NTKJ2 or NTKB2 (paper values: all σ = 1, c = 2) from docs/formulas.md, whole matrices."""
    family, depth = name[:4], int(name[4:])
    d = x.shape[1]
    g = x @ x.T
    k = g / d + 1.0  # K⁰ = σ_w²/d ⟨x,x'⟩ + σ_b² in both families
    t = k.copy() if family == "NTKJ" else g + 1.0  # Θ⁰: NTKJ K⁰; NTKB ⟨x,x'⟩ + 1
    c = 1.0 if family == "NTKJ" else 2.0  # NTKJ: σ_w²; NTKB: c_l
    for _ in range(depth):
        a = np.diag(k).copy()
        s = np.sqrt(np.maximum(np.outer(a, a) - k * k, 0.0))
        theta = np.arctan2(s, k)
        e = (s + (np.pi - theta) * k) / (2 * np.pi)
        e_dot = (np.pi - theta) / (2 * np.pi)
        k = 1.0 + c * e
        t = k + c * e_dot * t if family == "NTKJ" else 1.0 + c * e + c * e_dot * t
    return t


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).uniform(-5.0, 7.0, size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def best_time(fn, repeat: int) -> tuple[float, np.ndarray]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--d", type=int, default=15)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)

    x = unit_rows(args.n, args.d)
    threads = default_threads()
    rows = []
    for name in KERNELS:
        k = kernel(name)
        t_base, base = best_time(lambda name=name: baseline_gram(x, name), args.repeat)
        t_ours, ours = best_time(lambda k=k: k(x, None), args.repeat)
        t_one, _ = best_time(lambda k=k: k(x, None, threads=1), args.repeat)
        rows.append(
            {
                "kernel": name,
                "baseline_s": t_base,
                "ntkflow_s": t_ours,
                "ntkflow_1thread_s": t_one,
                "speedup": t_base / t_ours,
                "max_rel_diff": float(np.max(np.abs(ours - base) / np.abs(base))),
            }
        )
        del base, ours

    print(f"n={args.n} d={args.d} best of {args.repeat}; ntkflow with {threads} threads and 1")
    header = ("kernel", "baseline s", "ntkflow s", "1 thread s", "speedup", "max rel diff")
    print("{:8s} {:>11s} {:>10s} {:>11s} {:>8s} {:>13s}".format(*header))
    for r in rows:
        print(
            f"{r['kernel']:8s} {r['baseline_s']:11.3f} {r['ntkflow_s']:10.3f} "
            f"{r['ntkflow_1thread_s']:11.3f} {r['speedup']:7.2f}x {r['max_rel_diff']:13.2e}"
        )
    report = {
        "benchmark": "gram",
        "n": args.n,
        "d": args.d,
        "repeat": args.repeat,
        "threads": threads,
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "machine": platform.processor() or platform.machine(),
        "numpy": np.__version__,
        "results": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()

"""Blockwise Gram through Dask (and on to Zarr) vs the in-memory kernel, same n, same threads.

    python benchmarks/gram_dask.py [--n 4000] [--d 15] [--block 2048] [--repeat 3] [--json PATH]

Times, best of ``repeat`` interleaved rounds, K(X, X) for NTKB2 and NTKJ2:
  in-memory    kernel(name)(x)                      (tiled, threaded, symmetric)
  dask         gram_dask(k, x, None, block).compute (blocks on and above the diagonal, mirrored)
               on Dask's threaded scheduler, each block's kernel call on one thread
               (``write_gram(scheduler="threads")``)
  blocks       the kernel alone on the same blocks, one call per block on every thread, no
               Dask (the cost of cutting the Gram into blocks, apart from Dask's)
  dask sync    the blocks one after another, each block's kernel call on every thread: what a
               trial does (``Trial.scheduler == "sync"``)
  sync→zarr    the same stored into an uncompressed Zarr array on local disk (a trial's Gram),
               which adds the disk's write bandwidth (128 MB at n = 4000)
"dask" variants store the blocks into one preallocated array (what Dask adds over the kernel).
Reports the Dask overheads (variant / in-memory − 1; target ≤ 10% for a trial's path) and the
max difference.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from functools import partial
from pathlib import Path

import dask.array as da
import numpy as np
import zarr

from ntkflow.gram import WRITE_ALL, _edges, block_size, gram_dask
from ntkflow.kernels import kernel


def interleaved(fns, repeat):
    """Best time of each function, the functions run in turn each round (so that drift in the
    machine's load hits all of them alike), and each one's last result."""
    best, out = [float("inf")] * len(fns), [None] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            out[i] = fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return best, out


def _blocks(k, x, block, scheduler):
    threads = 1 if scheduler == "threads" else None  # as ntkflow.gram.write_gram
    return gram_dask(k, x, None, block, threads=threads)


def via_dask(k, x, block, scheduler="threads"):
    out = np.empty((len(x), len(x)))  # stored block by block, as into Zarr: no concatenation
    da.store(_blocks(k, x, block, scheduler), out, lock=False, scheduler=scheduler)
    return out


def blocks_alone(k, x, block):
    """The blocks' kernel calls without Dask: the upper blocks computed one after another."""
    edges = _edges(len(x), block)  # the blocks gram_dask cuts
    out = np.empty((len(x), len(x)))
    for i, r in enumerate(edges):
        for c in edges[i:]:
            out[r, c] = k(x[r]) if r == c else k(x[r], x[c])
    return out


def via_zarr(k, x, block, path, scheduler="sync"):
    n = len(x)
    b = block_size(n, block)  # Zarr chunks = Dask blocks, as in ntkflow.gram.write_gram
    arr = zarr.create_array(
        path,
        shape=(n, n),
        chunks=(b, b),
        dtype="f8",
        compressors=None,
        overwrite=True,
        config=WRITE_ALL,
    )
    da.store(_blocks(k, x, block, scheduler), arr, lock=False, scheduler=scheduler)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--d", type=int, default=15)
    p.add_argument("--block", type=int, default=2048)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--json", default=str(Path(__file__).parent / "results" / "gram_dask.json"))
    a = p.parse_args()
    x = np.random.default_rng(0).uniform(-5, 7, (a.n, a.d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("NTKB2", "NTKJ2"):
            k = kernel(name)
            (t_mem, t_blocks, t_dask, t_sync, t_zarr), (ref, _, got, got_sync, _) = interleaved(
                [
                    partial(k, x),
                    partial(blocks_alone, k, x, a.block),
                    partial(via_dask, k, x, a.block),
                    partial(via_dask, k, x, a.block, "sync"),
                    partial(via_zarr, k, x, a.block, f"{tmp}/{name}.zarr"),
                ],
                a.repeat,
            )
            rows.append(
                {
                    "kernel": name,
                    "n": a.n,
                    "block": a.block,
                    "in_memory_s": t_mem,
                    "blocks_alone_s": t_blocks,
                    "dask_s": t_dask,
                    "dask_sync_s": t_sync,
                    "dask_zarr_s": t_zarr,
                    "blocks_overhead": t_blocks / t_mem - 1,
                    "dask_overhead": t_dask / t_mem - 1,
                    "dask_sync_overhead": t_sync / t_mem - 1,
                    "dask_zarr_overhead": t_zarr / t_mem - 1,
                    "max_rel_diff": max(
                        float(np.abs(g - ref).max() / np.abs(ref).max()) for g in (got, got_sync)
                    ),
                }
            )
    print(
        f"{'kernel':7} {'n':>6} {'block':>6} {'memory s':>9} {'blocks s':>9} {'dask s':>8} "
        f"{'sync s':>8} {'→zarr s':>8} {'blocks ovh':>10} {'dask ovh':>9} {'sync ovh':>9} "
        f"{'zarr ovh':>9} {'max rel diff':>12}"
    )
    seconds = [("blocks_alone_s", 9), ("dask_s", 8), ("dask_sync_s", 8), ("dask_zarr_s", 8)]
    overheads = [(f"{v}_overhead", w) for v, w in [("blocks", 9), ("dask", 8), ("dask_sync", 8)]]
    overheads += [("dask_zarr_overhead", 8)]
    for r in rows:
        cells = [f"{r[key]:{w}.3f}" for key, w in seconds]
        cells += [f"{100 * r[key]:{w}.1f}%" for key, w in overheads]
        print(
            f"{r['kernel']:7} {r['n']:6d} {r['block']:6d} {r['in_memory_s']:9.3f} "
            f"{' '.join(cells)} {r['max_rel_diff']:12.1e}"
        )
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

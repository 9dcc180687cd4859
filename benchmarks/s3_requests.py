"""Requests one trial makes to an S3 store: counted by kind, for its first computation and for
a rerun that reuses everything.

    python benchmarks/s3_requests.py [--json PATH]

One trial of the smoke preset (kernels NTKB1, NTKJ2, K1), kernels-only and with one network,
run by ``run_trial`` into a fresh prefix of a real S3 API on 127.0.0.1 (``moto_server``, from
the ``test`` extra, started as tests/servers.py starts it). Every call that s3fs sends is
counted (the store's own and Zarr's): on S3 each is a round trip of tens of milliseconds, so
the count, not the bytes, is what a small trial waits for. Prints a table and writes JSON
(benchmarks/results/s3_requests.json).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import uuid
from datetime import date
from pathlib import Path

from bench_io import commit, print_and_save

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

KERNELS = ["kernels=[NTKB1, NTKJ2, K1]", "trials=1"]
CASES = {
    "kernels-only": ["networks.enabled=false", *KERNELS],
    "networks": ["networks.enabled=true", "networks.depths=[1]", "networks.epochs=[2]", *KERNELS],
}


def count_requests() -> collections.Counter:
    """A counter that every request s3fs sends from now on adds its kind to."""
    import s3fs.core

    counts: collections.Counter = collections.Counter()
    send = s3fs.core.S3FileSystem._call_s3

    async def counted(self, method, *args, **kwargs):
        counts[method] += 1
        return await send(self, method, *args, **kwargs)

    s3fs.core.S3FileSystem._call_s3 = counted
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=str(HERE / "results" / "s3_requests.json"))
    args = ap.parse_args()

    import servers

    from ntkflow import trial
    from ntkflow.config.presets import load_config
    from ntkflow.store import Store

    counts = count_requests()
    out = {"date": date.today().isoformat(), "commit": commit(), "trials": {}}
    rows = []
    with tempfile.TemporaryDirectory() as work, servers.s3_server(Path(work)) as env:
        os.environ.update(env)
        for case, overrides in CASES.items():
            cfg = load_config("smoke", overrides=overrides)
            store = Store(f"s3://ntkflow/{uuid.uuid4().hex[:12]}")
            figures = {}
            for run in ("first", "rerun"):
                counts.clear()
                trial.run_trial(cfg, store, 0)
                figures[run] = {"total": sum(counts.values()), **dict(counts.most_common())}
                kinds = ", ".join(f"{k} {v}" for k, v in counts.most_common())
                rows.append((f"{case}, {run}", f"{figures[run]['total']:4d}  ({kinds})"))
            out["trials"][case] = figures
    print_and_save("requests to S3 for one trial", rows, out, args.json)


if __name__ == "__main__":
    main()

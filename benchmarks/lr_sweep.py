"""Learning-rate sweep at fixed t: where does lazy training end?

Depth-1 networks of width 1024 on the quick data (n_obs = 1000), lr ∈ {0.005, 0.02, 0.08, 0.32}
with the epochs scaled to keep t = 2ηE/B = 1.5 (``--keep-t``: 1200, 300, 75 and 19 epochs; 19
gives t = 1.52, the record has the t trained to). Per lr: the gap NN ↔ each LIN predictor, the
kernel drift, init and final kernel error (mean ± SE over trials), and the verdict. Theory
expects the gap and the drift to grow with lr once training leaves the lazy regime.

    PYTHONPATH=$PWD python benchmarks/lr_sweep.py [--trials 4] [--width 1024]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from theory_sweep import ROOT, _pm, print_after, run_ntkflow


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--lrs", default="0.005,0.02,0.08,0.32")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="/tmp/ntkflow-lr-sweep")
    args = ap.parse_args()
    cli = ["--vary", f"networks.lr={args.lrs}", "--keep-t", "--set", f"trials={args.trials}"]
    cli += ["--set", f"networks.width={args.width}", "--set", "networks.lr=0.02"]
    cli += ["--set", "networks.depths=[1]", "--set", "networks.epochs=[300]"]
    cli += ["--set", "kernels=[NTKJ1, NTKB1]"]
    res = run_ntkflow(cli, args.out, args.workers)
    (line,) = res["sweep"]["lr"]["lines"].values()
    dg = line["diagnostics"]
    print(f"\n{args.trials} trials, width {args.width}, {res['seconds']:.0f} s, {res['folder']}")
    preds = list(line["gap"])
    print("lr | t | drift | init error | final error | " + " | ".join(f"gap {p}" for p in preds))
    for i, lr in enumerate(line["values"]):
        cells = [
            f"{dg['linearized_time'][i]['mean']:.3g}",
            *(_pm(dg[k][i]) for k in ("ntk_drift", "ntk_init_error", "ntk_final_error")),
            *(_pm(line["gap"][p][i]) for p in preds),
        ]
        print(f"{lr:g} | " + " | ".join(cells))
    print()
    print_after(res)
    out = Path(ROOT, "benchmarks", "results", "lr_sweep.json")
    keep = ("command", "seconds", "folder", "sweep", "theory", "verdict")
    out.write_text(json.dumps({k: res.get(k) for k in keep}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

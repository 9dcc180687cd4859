"""What the linearized theory (docs/theory.md) adds to a trial's time, from a run's records.

Per trial: kernel time (Gram + solve of every kernel), network training, and the theory: the
empirical NTK at initialisation and the drift diagnostics inside the training task
(``seconds_ntk``: Θ̂₀ before training, Θ̂_T after it, the diagnostics) plus the theory task
(``seconds_theory``: closed forms, SGD replay, and LIN-after, an item of its own).

    PYTHONPATH=$PWD python benchmarks/theory_cost.py RUN_DIR [LABEL]   # e.g. a `make run` folder

Results are kept per LABEL (default: the run folder) in results/theory_cost.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd


def main() -> None:
    run = Path(sys.argv[1])
    label = sys.argv[2] if len(sys.argv) > 2 else str(run)
    df = pd.read_parquet(run / "results.parquet")
    df = df[df.status == "ok"]
    rows = []
    for k, t in df.groupby("trial"):
        kern = t[t.kind == "kernel"][["seconds_gram", "seconds_solve"]].sum().sum()
        nets = t[t.kind == "network"]
        train = nets["seconds_train"].sum()
        ntk = nets["seconds_ntk"].sum()
        # seconds_theory is the whole theory item, repeated on each of its LIN records; the
        # items (LIN<L>, LIN<L>-after) store their predictions in one file each
        lin = t[t.kind == "linearized"]
        theory = lin.groupby(["network", "predictions"])["seconds_theory"].first().sum()
        added = ntk + theory
        rows.append(
            {
                "trial": int(k),
                "kernels_s": kern,
                "train_s": train,
                "ntk_s": ntk,
                "theory_s": theory,
                "added_fraction": added / (kern + train),
            }
        )
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    total = table[["ntk_s", "theory_s"]].sum().sum() / table[["kernels_s", "train_s"]].sum().sum()
    print(f"theory adds {100 * total:.1f}% to the trials' compute time (target ≤ 10%)")
    out = Path(__file__).parent / "results" / "theory_cost.json"
    old = json.loads(out.read_text()) if out.exists() else {}
    if "run" in old:  # the earlier layout: one run (before LIN-after)
        old = {f"{old['run']} (before LIN-after)": old}
    new = {label: {"run": str(run), "rows": rows, "added_fraction": total}}
    out.write_text(json.dumps({**old, **new}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

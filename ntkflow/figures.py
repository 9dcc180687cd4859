"""The run's figures: the box plot of test RMSE per method, the theory and sweep panels."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from ntkflow.config import Config
from ntkflow.names import network_specs
from ntkflow.store import Store


def boxplot_png(df: pd.DataFrame, methods: list[str], formulas: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = df[df.status == "ok"]
    data = [ok.loc[ok.method == m, "rmse"].to_numpy() for m in methods]
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(methods)), 4), dpi=110)
    ax.boxplot(data, tick_labels=methods, showmeans=True)
    ax.set_ylabel("test RMSE")
    n = ok.trial.nunique()
    ax.set_title(f"Test RMSE over {n} trial(s), formulas={formulas}")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def write_theory_figures(cfg: Config, df: pd.DataFrame, summary: dict, store: Store) -> None:
    """theory.png: per-trial NN RMSE against LIN RMSE, one panel per depth (the widest network
    of a sweep); sweep.png: the gap to each LIN predictor against width, log-log."""
    if not summary.get("theory"):
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ok = df[df.status == "ok"]
    widest = {}
    for s in network_specs(cfg):
        if s.depth not in widest or s.width > widest[s.depth].width:
            widest[s.depth] = s
    fig, axes = plt.subplots(1, len(widest), figsize=(4.6 * len(widest), 4.2), dpi=110)
    axes = np.atleast_1d(axes)
    for ax, s in zip(axes, widest.values(), strict=True):
        nn = ok[ok.method == s.name].set_index("trial")["rmse"]
        lo, hi = np.inf, -np.inf
        for m in s.theory_methods(cfg.networks.parameterization):
            lin = ok[ok.method == m].set_index("trial")["rmse"]
            both = lin.index.intersection(nn.index)
            if len(both):
                ax.scatter(nn[both], lin[both], s=18, label=m.split("@")[0], alpha=0.8)
                lo = min(lo, nn[both].min(), lin[both].min())
                hi = max(hi, nn[both].max(), lin[both].max())
        if np.isfinite(lo):
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
            ax.legend(fontsize=7)
        ax.set_xlabel(f"{s.name} test RMSE")
        ax.set_ylabel("linearized test RMSE")
        ax.set_title(f"depth {s.depth}, width {s.width}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    store.write_bytes("theory.png", _png(fig))
    sweep = summary.get("sweep")
    if sweep:
        fig, axes = plt.subplots(1, len(sweep), figsize=(4.8 * len(sweep), 4.2), dpi=110)
        for ax, (net, preds) in zip(np.atleast_1d(axes), sweep.items(), strict=True):
            for base, r in preds.items():
                w, g = np.asarray(r["widths"], float), np.asarray(r["gap_mean"], float)
                label = f"{base}: slope {r.get('slope', r['slope_of_means']):+.2f}"
                ax.errorbar(w, g, yerr=r["gap_se"], marker="o", capsize=3, label=label)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(r["widths"], [str(w) for w in r["widths"]])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("width")
            ax.set_ylabel(f"RMSE({net}, LIN) on test")
            ax.set_title(f"{net}: gap to the linearized network")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        store.write_bytes("sweep.png", _png(fig))


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()

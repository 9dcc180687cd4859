"""Kernel items: kernel regression on a kernel's stored Gram (docs/formulas.md, "Kernel
regression"): test RMSE, solve diagnostics and the test predictions (``nets/<K>_krr.npz``,
named in the record with their SHA-256 like every artifact), which the verdict compares with
the network's (ntkflow.gaps)."""

from __future__ import annotations

import hashlib
import io
import time

import numpy as np

from ntkflow import krr
from ntkflow.gram import CorruptArtifact
from ntkflow.trial.context import Trial
from ntkflow.trial.gram import GramItem
from ntkflow.trial.items import REUSED, RecordItem, log, producer, run


@producer("kernel")
class KernelItem(RecordItem):
    """Kernel regression with kernel ``name`` on its stored Gram: test RMSE and diagnostics.

    The Gram's blocks run one after another (``scheduler="sync"`` by default): the kernel
    already spreads each block over the process's threads, so running blocks in parallel would
    only oversubscribe the cores and hold more blocks in memory.
    """

    kind = "kernel"

    def __init__(self, t: Trial, name):
        super().__init__(t)
        self.name = getattr(name, "name", name)  # a name or a parsed ntkflow.names.Method
        self.methods = [self.name]

    def section(self, method=None) -> dict:
        krr_section = self.cfg.krr.model_dump(mode="json")
        return {"kernel": self.name, "formulas": self.cfg.formulas, "krr": krr_section}

    def make(self) -> list[dict]:
        t, d = self.t, self.t.data
        t0 = time.perf_counter()
        g = GramItem(t, self.name)
        (attrs,), how = run([g])  # under the trial's lease, held for every kernel
        reused = how == REUSED

        def solve():
            if g.arrays:  # just computed in one block: solve in memory, nothing read back
                k_train, k_test = g.arrays["train_train"], g.arrays["test_train"]
                return krr.predict(k_test, k_train, d.y[d.train], ridge=self.cfg.krr.ridge)
            return krr.predict_stored(
                t.store.zarr_store(g.rel, read_only=True),
                d.y[d.train],
                ridge=self.cfg.krr.ridge,
                memory_budget=self.cfg.compute.memory_budget_gb * 1e9,
                scheduler=t.scheduler,
            )

        t1 = time.perf_counter()
        try:
            pred, info = solve()
        except CorruptArtifact as e:  # an array fails its checksum (e.g. a chunk is missing)
            if not reused:
                raise
            log.warning("recomputing %s: %s", g.rel, e)
            attrs, reused = g.compute(), False
            t1 = time.perf_counter()
            pred, info = solve()
        rel = t.net_path(self.name, "_krr.npz")
        return [
            {
                "method": self.name,
                "rmse": krr.rmse(pred, d.y[d.test]),
                "predictions": rel,
                "predictions_sha256": write_predictions(t, rel, np.asarray(pred)),
                **info,
                "seconds_gram": t1 - t0,
                "seconds_solve": time.perf_counter() - t1,
                "gram": g.rel,
                "gram_reused": reused,
                "gram_sha256": attrs["sha256"],
            }
        ]


def write_predictions(t: Trial, rel: str, pred: np.ndarray) -> str:
    """Write the test predictions as one .npz (``pred_test``, one atomic write); returns its
    SHA-256."""
    buf = io.BytesIO()
    np.savez(buf, pred_test=np.asarray(pred, dtype=np.float64))
    t.store.write_bytes(rel, buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()

"""The prediction gap between a network and kernel regression with its analytic NTK, from their
stored test predictions (each verified by its SHA-256): RMSE(f_NN − f_KRR) on the test set."""

from __future__ import annotations

import hashlib
import io
import logging

import numpy as np

from ntkflow.names import family_kernels
from ntkflow.store import Store

log = logging.getLogger("ntkflow.report")


def compared_kernels(spec) -> list[str]:
    """The kernels a network is compared with, in order of preference: its family's analytic NTK
    at its depth, then the other family's (a "standard" network has none of its own)."""
    own = [spec.kernel] if spec.kernel else []
    return own + [k for k in family_kernels(spec.depth) if k not in own]


def test_predictions(store: Store, record: dict) -> np.ndarray | None:
    """A record's stored test predictions (``pred_test``), or None when it names none (a record
    of an older version) or the file fails its checksum (logged)."""
    rel, sha = record.get("predictions"), record.get("predictions_sha256")
    if record.get("status", "ok") != "ok" or not rel or not sha or not store.exists(rel):
        return None
    raw = store.read_bytes(rel)
    if hashlib.sha256(raw).hexdigest() != sha:
        log.warning("%s fails its checksum: no prediction gap from it", rel)
        return None
    with np.load(io.BytesIO(raw)) as z:
        return z["pred_test"] if "pred_test" in z else None


def kernel_gaps(store: Store, results: dict[int, dict | None], specs, methods) -> list[dict]:
    """Per trial and network: the gap to the first of :func:`compared_kernels` among
    ``methods`` whose predictions the trial holds (``rmse_vs_kernel``, ``kernel_compared``)."""
    rows = []
    for k, res in results.items():
        recs = (res or {}).get("methods") or {}
        for s in specs:
            nn = recs.get(s.name)
            f_nn = test_predictions(store, nn) if nn else None
            if f_nn is None:
                continue
            for name in (m for m in compared_kernels(s) if m in methods and m in recs):
                f_krr = test_predictions(store, recs[name])
                if f_krr is not None:
                    gap = float(np.sqrt(np.mean((f_nn - f_krr) ** 2)))
                    rows.append(
                        {
                            "trial": k,
                            "method": s.name,
                            "kernel_compared": name,
                            "rmse_vs_kernel": gap,
                        }
                    )
                    break
    return rows

"""The data item: trial k's simulated data (docs/formulas.md, "Data") in ``data.zarr``, with
its digest."""

from __future__ import annotations

import numpy as np

from ntkflow.data import TrialData, simulate
from ntkflow.gram import CorruptArtifact, one_chunk_files, put_files
from ntkflow.store import Store
from ntkflow.trial.context import Trial
from ntkflow.trial.groups import DATA_ARRAYS, data_digest, write_group
from ntkflow.trial.items import Item, log


class DataItem(Item):
    """``data.zarr``: x, y and the split, simulated from the trial's seed; keyed by what
    determines the data (the run id's fields) and the data code."""

    kind = "data"

    def section(self, method=None) -> dict:
        return self.cfg.result_dict()

    def stored(self, quiet: bool = False) -> TrialData | None:
        t = self.t
        rel = t.path("data.zarr")
        try:
            d = t.data
        except CorruptArtifact as e:
            if not quiet and t.store.exists(rel):
                log.warning("recomputing %s: %s", rel, e)
            return None
        if d.info.get("key") == self.key() or self.cfg.compute.keep_stale:
            return d
        if not quiet:
            log.warning("recomputing %s: stale (key %s)", rel, d.info.get("key"))
        return None

    def compute(self) -> TrialData:
        t = self.t
        d = simulate(self.cfg, t.k)
        arrays = {}
        for name in DATA_ARRAYS:  # C-contiguous little-endian: stored as their own bytes
            a = np.asarray(getattr(d, name))
            arrays[name] = np.ascontiguousarray(a, a.dtype.newbyteorder("<"))
        info = {
            **{k: (v.item() if isinstance(v, np.generic) else v) for k, v in d.info.items()},
            "key": self.key(),
            "sha256": data_digest(arrays),
        }

        def fill(zstore):
            put_files(zstore, one_chunk_files({**info, "complete": True}, arrays))

        write_group(t.store, t.path("data.zarr"), fill, small=True)
        t.data = TrialData(**arrays, info=info)
        return t.data


def ensure_data(cfg, store: Store, k: int) -> str:
    """Trial k's data in the store (simulated unless a verified copy is there); its path."""
    t = Trial(cfg, store, k)
    if DataItem(t).stored() is None:
        DataItem(t).compute()
    return t.path("data.zarr")

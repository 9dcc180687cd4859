"""The data item: trial k's simulated data (SPEC §3) in ``data.zarr``, with its digest."""

from __future__ import annotations

import hashlib

import numpy as np
import zarr
import zarr.storage

from ntkflow.data import TrialData, simulate
from ntkflow.gram import CorruptArtifact, one_chunk_files, put_files
from ntkflow.store import Store
from ntkflow.trial.context import Trial, trial_dir
from ntkflow.trial.items import Item, log

DATA_ARRAYS = ("x", "y", "train", "test", "fit")


def data_digest(arrays: dict) -> str:
    h = hashlib.sha256()
    for name in DATA_ARRAYS:
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write_group(store: Store, rel: str, fill, small: bool = False):
    """Write a Zarr group under a unique temporary name with ``fill(zarr_store)``, then commit
    it to ``rel`` atomically: a half-written or foreign group never sits at ``rel``.

    ``small``: the group fits in memory (data, a Gram of one block). ``fill`` then writes it
    into a memory store, whose files are written out in one pass: a store call per metadata
    document and chunk costs more than the bytes."""
    tmp = store.temp_name(rel)
    try:
        if small:
            files: dict = {}
            out = fill(zarr.storage.MemoryStore(files))
            store.write_folder(tmp, {key: buf.as_numpy_array() for key, buf in files.items()})
        else:
            out = fill(store.zarr_store(tmp))
        store.commit_dir(tmp, rel)
    finally:
        store.remove(tmp)
    return out


def load_data(store: Store, k: int) -> TrialData:
    """Trial k's verified data; CorruptArtifact if missing, incomplete or altered."""
    rel = f"{trial_dir(k)}/data.zarr"
    try:
        group = zarr.open_group(store.zarr_store(rel, read_only=True), mode="r")
        attrs = dict(group.attrs)
        arrays = {name: group[name][...] for name in DATA_ARRAYS}
    except Exception as e:  # missing or unreadable, whatever the reason
        raise CorruptArtifact(f"unreadable {rel}: {type(e).__name__}: {e}") from e
    if not attrs.get("complete") or attrs.get("sha256") != data_digest(arrays):
        raise CorruptArtifact(f"{rel} is incomplete or fails its checksum")
    return TrialData(**arrays, info={k_: v for k_, v in attrs.items() if k_ != "complete"})


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

"""Zarr groups of a trial: written under a temporary name and committed atomically, and the
data group read back and verified against its digest (no item logic here: the trial's context
reads its data through this module)."""

from __future__ import annotations

import hashlib

import numpy as np
import zarr
import zarr.storage

from ntkflow.data import TrialData
from ntkflow.gram import CorruptArtifact
from ntkflow.store import Store

DATA_ARRAYS = ("x", "y", "train", "test", "fit")


def trial_dir(k: int) -> str:
    return f"trials/{k:03d}"


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
        store.commit_dir(tmp, rel)  # which leaves no ``tmp`` behind
    except BaseException:
        store.remove(tmp)
        raise
    return out


def load_data(store: Store, k: int) -> TrialData:
    """Trial k's verified data; CorruptArtifact if missing, incomplete or altered."""
    rel = f"{trial_dir(k)}/data.zarr"
    try:
        group = zarr.open_group(store.zarr_store(rel, read_only=True), mode="r", zarr_format=3)
        attrs = dict(group.attrs)
        arrays = {name: group[name][...] for name in DATA_ARRAYS}
    except Exception as e:  # missing or unreadable, whatever the reason
        raise CorruptArtifact(f"unreadable {rel}: {type(e).__name__}: {e}") from e
    if not attrs.get("complete") or attrs.get("sha256") != data_digest(arrays):
        raise CorruptArtifact(f"{rel} is incomplete or fails its checksum")
    return TrialData(**arrays, info={k_: v for k_, v in attrs.items() if k_ != "complete"})

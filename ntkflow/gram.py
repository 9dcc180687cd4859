"""Gram matrices as Dask arrays of square blocks, written to and read from Zarr.

Each block is one call of the kernel API on the block's rows, so chunks are NumPy or CuPy arrays
as the inputs are. For K(X, X) only blocks on and above the diagonal are computed; those below
are transposes of their mirror images (no extra kernel evaluations).

A Gram group ``trials/<k>/gram/<KERNEL>.zarr`` holds arrays ``train_train`` (n_train × n_train)
and ``test_train`` (n_test × n_train) and attributes naming the kernel, variant, parameters,
shapes, dtype and a SHA-256 per array (over its chunks in order); ``complete`` is set last, so a
group interrupted mid-write never counts, and a chunk changed on disk fails verification.
"""

from __future__ import annotations

import hashlib
import itertools
from functools import cache, partial

import dask
import dask.array as da
import numpy as np
import zarr

ARRAYS = ("train_train", "test_train")
WRITE_ALL = {"write_empty_chunks": True}  # Zarr array config: no fill-value scan per chunk


class CorruptArtifact(ValueError):
    """A stored artifact is incomplete or fails its checksum: recompute it, never use it."""


def block_size(n: int, block: int) -> int:
    """The largest chunk side ≤ ``block`` that cuts n into near-equal pieces (13,400 rows with
    block 2048 → 7 chunks of 1915, not 6 of 2048 and one of 1112: Zarr writes edge chunks at full
    size, so balanced chunks keep the store free of padding)."""
    return -(-n // -(-n // block)) if n else block


def _edges(n: int, block: int) -> list[slice]:
    b = block_size(n, block)
    return [slice(i, min(i + b, n)) for i in range(0, n, b)]


def one_block(n_train: int, n_test: int, block: int) -> bool:
    """Whether the Grams of n_train and n_test points fit one chunk each (computed in memory)."""
    return all(block_size(n, block) == n for n in (n_train, n_test))


def gram_dask(k, x1, x2=None, block: int = 2048, threads: int | None = None) -> da.Array:
    """K(x1, x2) as a Dask array of chunks of at most ``block`` rows; x2=None exploits symmetry.

    ``threads``: threads of each block's kernel call (None: the kernel's default, all cores).
    Use 1 when Dask itself runs blocks in parallel (the "threads" scheduler): whole blocks in
    parallel scale better than tiles of one block.
    """
    rows = _edges(len(x1), block)
    call = dask.delayed(partial(k, threads=threads), pure=True)

    def piece(a, b, sym=False):
        shape = (a.stop - a.start, b.stop - b.start)
        if sym:
            f = call(x1[a], None)
        else:
            f = call(x1[a], (x1 if x2 is None else x2)[b])
        return da.from_delayed(f, shape=shape, dtype=np.float64, meta=x1[:0, :0])

    if x2 is None:
        upper = {
            (i, j): piece(a, b, sym=i == j)
            for i, a in enumerate(rows)
            for j, b in enumerate(rows)
            if j >= i
        }
        grid = [
            [upper[(i, j)] if j >= i else upper[(j, i)].T for j in range(len(rows))]
            for i in range(len(rows))
        ]
    else:
        cols = _edges(len(x2), block)
        grid = [[piece(a, b) for b in cols] for a in rows]
    return da.block(grid)


def _to_host(block):
    """CuPy → NumPy for writing (the only device-to-host copy of a Gram block)."""
    return block.get() if hasattr(block, "get") and not isinstance(block, np.ndarray) else block


def checksum(array, chunks: tuple[int, int]) -> str:
    """SHA-256 over the array's chunks in C order of the chunk grid (Zarr array or ndarray)."""
    h = hashlib.sha256()
    n0, n1 = array.shape
    for i, j in itertools.product(range(0, n0, chunks[0]), range(0, n1, chunks[1])):
        part = np.ascontiguousarray(array[i : i + chunks[0], j : j + chunks[1]], dtype="<f8")
        h.update(part.tobytes())
    return h.hexdigest()


def write_gram(
    zstore,
    k,
    x,
    train,
    test,
    block: int = 2048,
    scheduler="threads",
    extra_attrs=None,
    keep: dict | None = None,
) -> dict:
    """Compute K(X_train, X_train) and K(X_test, X_train) into the Zarr group (``extra_attrs``,
    e.g. the item key, are stored with the kernel's attributes).

    A Gram that fits one block is computed in memory and its files written in one round trip
    (:func:`one_chunk_files`; into an empty store: ``write_group`` gives every write a fresh
    one), with its checksums taken from the arrays as written (no Dask graph, no read-back);
    its host arrays are put into ``keep`` when given (so the solve need not read them back).
    Larger Grams are computed blockwise through Dask and hashed chunk by chunk from the store
    (bounded memory).
    """
    xtr, xte = x[train], x[test]
    shapes = {"train_train": (len(xtr), len(xtr)), "test_train": (len(xte), len(xtr))}
    chunks = {name: tuple(block_size(n, block) for n in s) for name, s in shapes.items()}
    attrs = {
        "kernel": k.name,
        "formulas": k.formulas,
        "params": {key: float(v) for key, v in k.params.items()},
        "shapes": {name: list(s) for name, s in shapes.items()},
        "dtype": "float64",
        "block": block,
        **(extra_attrs or {}),
    }
    # Zarr chunks are the blocks (aligned writes, no locks), and dense float64 Grams barely
    # compress (~15%) while compression costs more time than the write itself. Every chunk is
    # written (WRITE_ALL): Zarr's default first compares each chunk with the fill value to skip
    # empty ones, a scan as long as the write, and a Gram block is never empty.
    if one_block(len(xtr), len(xte), block):
        host = {
            "train_train": np.ascontiguousarray(_to_host(k(xtr)), dtype="<f8"),
            "test_train": np.ascontiguousarray(_to_host(k(xte, xtr)), dtype="<f8"),
        }
        sums = {name: hashlib.sha256(memoryview(a)).hexdigest() for name, a in host.items()}
        done = {**attrs, "sha256": sums, "complete": True}  # checksum(a, a.shape) of each
        put_files(zstore, one_chunk_files(done, host))
        if keep is not None:
            keep.update(host)
        return done
    group = zarr.open_group(zstore, mode="w", attributes={**attrs, "complete": False})
    threads = 1 if scheduler == "threads" else None
    arrays = {
        "train_train": gram_dask(k, xtr, None, block, threads),
        "test_train": gram_dask(k, xte, xtr, block, threads),
    }
    targets = [
        group.create_array(
            n, shape=shapes[n], chunks=chunks[n], dtype="f8", compressors=None, config=WRITE_ALL
        )
        for n in arrays
    ]
    sources = [
        a.map_blocks(_to_host, dtype=np.float64, meta=np.empty((0, 0))) for a in arrays.values()
    ]
    da.store(sources, targets, lock=False, scheduler=scheduler)
    sums = {t.basename: checksum(t, t.chunks) for t in targets}
    group.update_attributes({"sha256": sums, "complete": True})
    return {**attrs, "sha256": sums, "complete": True}


def one_chunk_files(attrs: dict, arrays: dict) -> dict:
    """The files of a Zarr group with attributes ``attrs`` holding each of ``arrays`` (NumPy,
    C-contiguous, little-endian) as an uncompressed array of one chunk: what Zarr writes for
    ``create_array(data=a, chunks=a.shape, compressors=None)`` (tests/test_gram_store.py
    compares them byte for byte), made without Zarr's event loop. The metadata documents are
    Zarr's own: the group's encoded from ``attrs``, an array's made by Zarr once per shape and
    dtype, then reused; a chunk is the array's own memory (no copy, no codec pipeline)."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.group import GroupMetadata

    proto = default_buffer_prototype()
    files = {"zarr.json": GroupMetadata(attributes=attrs).to_buffer_dict(proto)["zarr.json"]}
    for name, a in arrays.items():
        if not (a.flags.c_contiguous and a.dtype.byteorder in "=<|"):
            raise ValueError(f"{name}: not a C-contiguous little-endian array")
        doc, chunk = _array_document(a.shape, a.dtype.str)
        files[f"{name}/zarr.json"] = doc
        if a.size:
            files[f"{name}/{chunk}"] = proto.buffer.from_bytes(memoryview(a).cast("B"))
    return files


@cache
def _array_document(shape: tuple, dtype: str):
    """Zarr's ``zarr.json`` for an uncompressed one-chunk array of ``shape`` and ``dtype``,
    and the key of its chunk."""
    import zarr.storage

    files: dict = {}
    chunks = tuple(max(1, n) for n in shape)
    arr = zarr.create_array(
        zarr.storage.MemoryStore(files), shape=shape, dtype=dtype, chunks=chunks, compressors=None
    )
    return files["zarr.json"], arr.metadata.encode_chunk_key((0,) * len(shape))


def put_files(zstore, files: dict) -> None:
    """``files`` (key → Zarr buffer) into the Zarr store, in one round trip to Zarr's event
    loop."""
    import asyncio

    from zarr.core.sync import sync

    async def put():
        await asyncio.gather(*(zstore.set(key, buf) for key, buf in files.items()))

    sync(put())


def open_gram(zstore, shapes: dict | None = None) -> tuple[zarr.Group, dict]:
    """The group and its attributes; CorruptArtifact if it is missing, incomplete, or its
    arrays are not float64 of the recorded shapes (and of ``shapes`` when given)."""
    try:
        group = zarr.open_group(zstore, mode="r", zarr_format=3)  # no probes for v2 files
        attrs = dict(group.attrs)
        if not attrs.get("complete"):
            raise CorruptArtifact(f"incomplete Gram group {zstore}")
        for name in ARRAYS:
            arr = group[name]
            want = (shapes or attrs["shapes"])[name]
            if list(arr.shape) != list(want) or list(want) != list(attrs["shapes"][name]):
                raise CorruptArtifact(f"{name} in {zstore} has shape {arr.shape}, not {want}")
            if arr.dtype != np.float64:
                raise CorruptArtifact(f"{name} in {zstore} has dtype {arr.dtype}, not float64")
    except CorruptArtifact:
        raise
    except Exception as e:  # missing or unreadable metadata, a group where an array belongs, …
        raise CorruptArtifact(f"unreadable Gram group {zstore}: {type(e).__name__}: {e}") from e
    return group, attrs


def _verified(group: zarr.Group, name: str, attrs: dict, load):
    """``load(zarr_array)`` checked against the stored SHA-256; CorruptArtifact otherwise."""
    try:
        arr = group[name]
        data = load(arr)
        ok = checksum(data, arr.chunks) == attrs.get("sha256", {}).get(name)
    except Exception as e:  # truncated or missing chunk files
        raise CorruptArtifact(f"unreadable {name} in {group.store}: {e}") from e
    if not ok:
        raise CorruptArtifact(f"checksum mismatch for {name} in {group.store}")
    return data


def read_array(group: zarr.Group, name: str, attrs: dict, out: np.ndarray | None = None):
    """One verified array of a Gram group, optionally into a preallocated buffer ``out``."""
    return _verified(group, name, attrs, lambda arr: arr[...] if out is None else _fill(out, arr))


def verify_array(group: zarr.Group, name: str, attrs: dict) -> None:
    """Verify a stored array without loading it: the checksum streams its chunks."""
    _verified(group, name, attrs, lambda arr: arr)


def _fill(out: np.ndarray, arr) -> np.ndarray:
    for i in range(0, arr.shape[0], arr.chunks[0]):
        out[i : i + arr.chunks[0]] = arr[i : i + arr.chunks[0]]
    return out


def read_gram(zstore) -> tuple[np.ndarray, np.ndarray, dict]:
    """(train_train, test_train, attrs), verified; CorruptArtifact otherwise."""
    group, attrs = open_gram(zstore)
    return read_array(group, "train_train", attrs), read_array(group, "test_train", attrs), attrs


def as_dask(zstore, name: str) -> da.Array:
    """A stored Gram array as a Dask array over its Zarr chunks (for blockwise solves)."""
    group, _ = open_gram(zstore)
    return da.from_zarr(group[name])

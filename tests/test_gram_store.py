"""Blockwise Grams through Dask and Zarr; the artifact store's atomic, verified records."""

import json

import numpy as np
import pytest

from ntkflow import gram
from ntkflow.kernels import kernel
from ntkflow.store import Store


def _x(n, seed=0):
    x = np.random.default_rng(seed).uniform(-5, 7, (n, 15))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("n, block", [(97, 32), (64, 64), (50, 200), (131, 17)])
@pytest.mark.parametrize("name", ["NTKB2", "K1", "GPJ1"])
def test_blockwise_equals_in_memory(n, block, name):
    k = kernel(name)
    x = _x(n)
    sym = gram.gram_dask(k, x, None, block)
    sizes = sym.chunks[0]
    assert len(sizes) == -(-n // block) and max(sizes) <= block and sizes[0] == max(sizes)
    np.testing.assert_allclose(sym.compute(scheduler="sync"), k(x), rtol=1e-13, atol=1e-15)
    y = _x(n // 2 + 3, seed=1)
    rect = gram.gram_dask(k, y, x, block).compute(scheduler="sync")
    # BLAS may sum the inner products of a sub-block in another order: rounding only
    np.testing.assert_allclose(rect, k(y, x), rtol=1e-13, atol=1e-15)


def test_symmetric_assembly_is_exactly_symmetric():
    g = gram.gram_dask(kernel("NTKJ2"), _x(90), None, 25).compute(scheduler="sync")
    np.testing.assert_array_equal(g, g.T)


def test_zarr_round_trip_bit_identical(tmp_path):
    k, x = kernel("NTKB1", formulas="published"), _x(120)
    train, test = np.arange(0, 120, 2)[::-1], np.arange(1, 120, 2)
    store = Store(tmp_path)
    attrs = gram.write_gram(store.zarr_store("g.zarr"), k, x, train, test, block=40)
    tt, te, read_attrs = gram.read_gram(store.zarr_store("g.zarr", read_only=True))
    expect_tt = gram.gram_dask(k, x[train], None, 40).compute(scheduler="sync")
    np.testing.assert_array_equal(tt, expect_tt)
    np.testing.assert_array_equal(te, gram.gram_dask(k, x[test], x[train], 40).compute())
    assert read_attrs["formulas"] == "published" and read_attrs["kernel"] == "NTKB1"
    assert read_attrs["shapes"] == {"train_train": [60, 60], "test_train": [60, 60]}
    assert attrs["complete"] and read_attrs["params"]["c"] == 2.0


def test_incomplete_group_is_rejected(tmp_path):
    import zarr

    store = Store(tmp_path)
    g = zarr.open_group(store.zarr_store("g.zarr"), mode="w")
    g.attrs["complete"] = False
    with pytest.raises(ValueError, match="incomplete"):
        gram.read_gram(store.zarr_store("g.zarr", read_only=True))


def _store(root, tmp_path, request) -> Store:
    import uuid

    if root == "local":
        return Store(tmp_path)
    if root == "s3":
        return Store(request.getfixturevalue("s3_root"))
    return Store(f"{root}-{uuid.uuid4().hex}")


@pytest.mark.parametrize("root", ["local", "memory://ntkflow-test", "s3"])
def test_store_json_verification(tmp_path, root, request):
    store = _store(root, tmp_path, request)
    store.write_json("a/result.json", {"x": 1, "y": [1, 2]}, checksum=True)
    assert store.read_json("a/result.json", verify=True) == {"x": 1, "y": [1, 2]}
    raw = store.read_bytes("a/result.json")
    store.write_bytes("a/result.json", raw[: len(raw) // 2])  # truncated
    assert store.read_json("a/result.json", verify=True) is None
    tampered = json.loads(raw)
    tampered["x"] = 2
    store.write_bytes("a/result.json", json.dumps(tampered).encode())  # edited
    assert store.read_json("a/result.json", verify=True) is None
    assert store.read_json("missing.json") is None
    assert store.listdir("a") == ["result.json"]  # no temporary files left behind


def test_atomic_write_leaves_old_or_new(tmp_path):
    store = Store(tmp_path)
    store.write_text("f.txt", "old")

    class Boom(bytes):
        pass

    # A writer that dies mid-write (here: a non-bytes payload fails inside write) leaves the
    # target untouched; only a temporary sibling may remain, and it is never read as the target.
    with pytest.raises(TypeError):
        store.write_bytes("f.txt", object())
    assert store.read_bytes("f.txt") == b"old"


@pytest.mark.parametrize("root", ["local", "memory://ntkflow-commit", "s3"])
@pytest.mark.parametrize("there", ["nothing", "a file", "a foreign group"])
def test_group_written_to_a_temp_name_then_committed(tmp_path, root, there, request):
    import zarr

    store = _store(root, tmp_path, request)
    if there == "a file":
        store.write_text("gram/K.zarr", "junk")
    elif there == "a foreign group":
        g = zarr.open_group(store.zarr_store("gram/K.zarr"), mode="w")
        g.create_array("stray", data=np.ones(3))
    k, x = kernel("K1"), _x(40)
    tmp = store.temp_name("gram/K.zarr")
    assert tmp.startswith("gram/.tmp-")
    gram.write_gram(store.zarr_store(tmp), k, x, np.arange(30), np.arange(30, 40), block=16)
    assert not store.exists("gram/K.zarr") or there != "nothing"  # nothing final before commit
    store.commit_dir(tmp, "gram/K.zarr")
    tt, te, attrs = gram.read_gram(store.zarr_store("gram/K.zarr", read_only=True))
    np.testing.assert_allclose(tt, k(x[:30]), rtol=1e-13, atol=1e-15)
    assert te.shape == (10, 30) and attrs["complete"]
    assert store.listdir("gram") == ["K.zarr"]  # no temporary or replaced folder left
    assert "stray" not in store.listdir("gram/K.zarr")


@pytest.mark.parametrize("name", ["NTKB2", "K1"])
def test_one_block_and_blockwise_writes_agree(tmp_path, name):
    """A Gram that fits one block is written without Dask, its checksums taken in memory; it
    reads back verified, equal to the in-memory kernel and to the blockwise path's Gram."""
    k, x = kernel(name), _x(90)
    train, test = np.arange(60), np.arange(60, 90)
    store = Store(tmp_path)
    kept: dict = {}
    one = gram.write_gram(store.zarr_store("one.zarr"), k, x, train, test, block=64, keep=kept)
    many = gram.write_gram(store.zarr_store("many.zarr"), k, x, train, test, block=16)
    tt1, te1, _ = gram.read_gram(store.zarr_store("one.zarr", read_only=True))
    tt2, te2, _ = gram.read_gram(store.zarr_store("many.zarr", read_only=True))
    np.testing.assert_array_equal(tt1, k(x[train]))
    np.testing.assert_array_equal(te1, k(x[test], x[train]))
    np.testing.assert_array_equal(kept["train_train"], tt1)
    np.testing.assert_array_equal(kept["test_train"], te1)
    # the blockwise path evaluates sub-blocks: the same values up to rounding
    np.testing.assert_allclose(tt2, tt1, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(te2, te1, rtol=1e-13, atol=1e-15)
    assert one["sha256"]["train_train"] == gram.checksum(tt1, tt1.shape)
    assert one["block"] == 64 and many["block"] == 16 and kept and one["complete"]


def test_a_one_block_gram_holds_the_files_zarr_itself_writes():
    """A one-block Gram's chunks are stored as the arrays' own bytes, not through Zarr's codec
    pipeline: file for file and byte for byte what Zarr's ``create_array(data=...)`` writes."""
    import zarr
    import zarr.storage

    k, x = kernel("NTKB2"), _x(50)
    ours, zarrs = {}, {}
    attrs = gram.write_gram(zarr.storage.MemoryStore(ours), k, x, np.arange(35), np.arange(35, 50))
    group = zarr.open_group(zarr.storage.MemoryStore(zarrs), mode="w", attributes=attrs)
    for name, a in {"train_train": k(x[:35]), "test_train": k(x[35:], x[:35])}.items():
        group.create_array(name, data=a, chunks=a.shape, compressors=None, config=gram.WRITE_ALL)
    assert sorted(ours) == sorted(zarrs) and "train_train/c/0/0" in ours
    for key in zarrs:
        assert ours[key].to_bytes() == zarrs[key].to_bytes(), key


def test_one_chunk_files_are_what_zarr_writes_for_the_data_arrays_too():
    """The files of a trial's data group (2-D and 1-D float64, int64 indices, one chunk each,
    uncompressed) are byte for byte Zarr's own, written twice with the same shapes (the
    arrays' documents are reused), and the group reads back equal."""
    import zarr
    import zarr.storage

    rng = np.random.default_rng(0)
    attrs = {"key": "abc", "seed": 3, "sigma": 0.25, "complete": True}
    for n in (40, 40, 41):
        arrays = {
            "x": rng.normal(size=(n, 3)),
            "y": rng.normal(size=n),
            "train": np.arange(n - 9),
            "fit": rng.integers(0, n, size=7),
        }
        ours = gram.one_chunk_files(attrs, arrays)
        zarrs: dict = {}
        group = zarr.open_group(zarr.storage.MemoryStore(zarrs), mode="w", attributes=attrs)
        for name, a in arrays.items():
            group.create_array(name, data=a, chunks=a.shape, compressors=None)
        assert sorted(ours) == sorted(zarrs)
        for key in zarrs:
            assert ours[key].to_bytes() == zarrs[key].to_bytes(), key
        back = zarr.open_group(zarr.storage.MemoryStore(ours), mode="r")
        assert dict(back.attrs) == attrs
        for name, a in arrays.items():
            np.testing.assert_array_equal(back[name][...], a)
    with pytest.raises(ValueError, match="x: not a C-contiguous"):
        gram.one_chunk_files(attrs, {"x": arrays["x"].T})


@pytest.mark.parametrize("root", ["local", "memory://ntkflow-small", "s3"])
def test_a_small_group_is_written_with_zarrs_own_bytes(tmp_path, root, request):
    """A group that fits in memory (a one-block Gram; any group Zarr encodes, here with its
    default compressor) is written into a memory store and out in one pass: the same files,
    byte for byte, as writing into the store itself, and it reads back verified."""
    import zarr

    from ntkflow.trial.groups import write_group

    store = _store(root, tmp_path, request)
    k, x = kernel("NTKB2"), _x(50)

    def a_gram(zstore):
        return gram.write_gram(zstore, k, x, np.arange(35), np.arange(35, 50), block=64)

    def data(zstore):
        group = zarr.open_group(zstore, mode="w", attributes={"complete": True, "seed": 3})
        for name, a in {"x": x, "train": np.arange(35), "y": x[:, 0] ** 2}.items():
            group.create_array(name, data=a)

    for name, fill in [("K.zarr", a_gram), ("data.zarr", data)]:
        write_group(store, f"zarr/{name}", fill)
        write_group(store, f"memory/{name}", fill, small=True)
        files = store.files(f"zarr/{name}")
        assert files == store.files(f"memory/{name}") and "zarr.json" in files
        for f in files:
            assert store.read_bytes(f"memory/{name}/{f}") == store.read_bytes(f"zarr/{name}/{f}")
    assert sorted(store.listdir("memory")) == ["K.zarr", "data.zarr"]  # no temporary folder left
    tt, te, attrs = gram.read_gram(store.zarr_store("memory/K.zarr", read_only=True))
    np.testing.assert_array_equal(tt, k(x[:35]))
    np.testing.assert_array_equal(te, k(x[35:], x[:35]))
    assert attrs["complete"]


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_the_store_check_of_one_launch_leaves_a_concurrent_launchs_probe(
    tmp_path, backend, request
):
    """Two launches of the same run check the store at the same moment: each worker writes its
    probe, and the first command to read its own back removes only that one, so the second
    still reads its own (it used to remove the whole probe folder: exit 2, "the Dask workers
    cannot share this store"). Nothing is left once both have read."""
    from ntkflow import preflight

    url = str(tmp_path) if backend == "local" else request.getfixturevalue("s3_root")
    store = Store(url)
    preflight.probe_write(url, "token-a")
    preflight.probe_write(url, "token-b")
    preflight.probe_read(url, "token-a", "host-a")
    preflight.probe_read(url, "token-b", "host-b")  # no PlaceError
    assert not store.files(preflight.PROBE_DIR)
    assert backend == "s3" or not (tmp_path / preflight.PROBE_DIR).exists()


def test_zarrs_view_of_an_s3_store_lists_what_another_writer_added_since(s3_root):
    """Zarr reads an object store through a filesystem of its own, opened as the store opens
    its own: without cached listings (s3fs would keep the first listing of a prefix for good,
    while other runs and workers write there) and reading each object with one GET."""
    from zarr.core.sync import sync

    async def names(view):
        return sorted([name async for name in view.list_dir("")])

    store = Store(s3_root)
    store.write_text("g/a.json", "{}")
    view = store.zarr_store("g", read_only=True)
    assert sync(names(view)) == ["a.json"]
    Store(s3_root).write_text("g/b.json", "{}")  # another writer, meanwhile
    assert sync(names(view)) == ["a.json", "b.json"]
    assert store.fs.max_concurrency == view.fs.max_concurrency == 1

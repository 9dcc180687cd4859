"""One trial against the artifact store: reuse, verification, recomputation, blockwise solves."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ntkflow import report, trial
from ntkflow.config.presets import load_config
from ntkflow.store import Store

KERNELS_ONLY = ["networks.enabled=false", "kernels=[NTKB1, NTKJ2, K1]"]
NETS = ["networks.enabled=true", "networks.depths=[1]", "networks.epochs=[2]"]


def _cfg(*extra):
    return load_config("smoke", overrides=[*KERNELS_ONLY, *extra])


# ---- pristine stores: every trial of a config computed from scratch, once, then copied ---------
def _compute(cfg, store: Store) -> None:
    for k in range(cfg.trials):
        trial.run_trial(cfg, store, k)


@pytest.fixture
def pristine(once, tmp_path, request):
    """``pristine(cfg, backend="local", into=tmp_path) -> Store``: a fresh copy of the store in
    which `run_trial` computed every trial of ``cfg`` from scratch, for tests that damage or
    extend a finished store, not the ones that check its first computation. Built once per
    session in a local folder (``once``: shared by the xdist workers) and copied: with
    copytree, or uploaded to a fresh prefix of S3: `run_trial` writes the same objects there
    as in a folder (seen when this was written, for a trial with a network: the same 71
    paths, the same bytes but for the timings and lease owners in the JSON records)."""

    def get(cfg, backend="local", into=tmp_path) -> Store:
        settings = cfg.model_dump(mode="json")
        built = once("run-trial-store", settings, lambda folder: _compute(cfg, Store(folder)))
        if backend == "local":
            shutil.copytree(built, into, dirs_exist_ok=True)
            return Store(into)
        store = Store(request.getfixturevalue("s3_root"))
        files = sorted(Store(built).files(""))
        store.fs.put([str(built / f) for f in files], [store.path(f) for f in files])
        return store

    return get


def test_memory_store_end_to_end():
    cfg = _cfg()
    store = Store("memory://ntkflow-e2e/run")
    for k in range(cfg.trials):
        trial.run_trial(cfg, store, k)
    summary = report.aggregate(cfg, store)
    assert summary["failed_trials"] == []
    assert all(summary["methods"][m]["n"] == 2 for m in cfg.methods)
    assert store.read_bytes("boxplot.png")[:4] == b"\x89PNG"
    assert set(store.listdir("trials/000/gram")) == {"NTKB1.zarr", "NTKJ2.zarr", "K1.zarr"}


def test_blockwise_solve_matches_in_memory(tmp_path, pristine):
    mem = trial.load_result(pristine(_cfg()), 0)["methods"]
    blk = trial.run_trial(
        _cfg("compute.memory_budget_gb=1e-9", "compute.gram_block=32"), Store(tmp_path / "b"), 0
    )["methods"]
    for name in ("NTKB1", "NTKJ2", "K1"):
        assert blk[name]["solver"] == "blockwise-cholesky" and mem[name]["solver"] == "cholesky"
        cond = mem[name]["condition_estimate"]
        # both solves are backward stable: the RMSEs agree to ~cond·eps (relative)
        tol = 100 * cond * np.finfo(float).eps
        assert tol < 1e-3
        assert blk[name]["rmse"] == pytest.approx(mem[name]["rmse"], rel=tol)


def _flip_bytes(path: Path, at: int = 100) -> None:
    raw = bytearray(path.read_bytes())
    raw[at : at + 8] = bytes(255 - b for b in raw[at : at + 8])
    path.write_bytes(bytes(raw))


def test_corrupted_artifacts_are_detected_and_recomputed(tmp_path, caplog, pristine):
    cfg = _cfg()
    store = pristine(cfg)
    before = report.aggregate(cfg, store)["methods"]
    t0 = tmp_path / "trials/000"

    # a truncated result.json, a corrupted Gram chunk (with its item record gone) and an
    # edited data array: all detected, none used
    res = t0 / "result.json"
    res.write_bytes(res.read_bytes()[:200])
    (t0 / "items/NTKB1.json").unlink()
    chunk = t0 / "gram/NTKB1.zarr/train_train/c/0/0"  # Zarr v3 chunk key of block (0, 0)
    _flip_bytes(chunk)
    assert trial.load_result(store, 0) is None
    with caplog.at_level("WARNING"):
        again = trial.run_trial(cfg, store, 0)
    assert "checksum mismatch" in caplog.text
    assert again["methods"]["NTKB1"]["gram_reused"] is False
    assert trial.load_result(store, 0) is not None
    after = report.aggregate(cfg, store)["methods"]
    assert after == before  # recomputed bit for bit: same summary

    y_before = trial.load_data(store, 0).y
    y_chunks = [p for p in (t0 / "data.zarr/y").rglob("*") if p.is_file() and p.name != "zarr.json"]
    _flip_bytes(y_chunks[0], at=0)
    with pytest.raises(trial.CorruptArtifact):
        trial.load_data(store, 0)
    trial.ensure_data(cfg, store, 0)  # resimulated from the trial's seed
    np.testing.assert_array_equal(trial.load_data(store, 0).y, y_before)


def test_rerun_reuses_verified_items(tmp_path, pristine):
    cfg = _cfg()
    store = pristine(cfg)
    first = trial.load_result(store, 1)
    (tmp_path / "trials/001/result.json").unlink()
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "trials/001/items").iterdir()}
    second = trial.run_trial(cfg, store, 1)
    assert {
        p.name: p.stat().st_mtime_ns for p in (tmp_path / "trials/001/items").iterdir()
    } == mtimes
    assert second["methods"] == first["methods"]


WRITER = """
import sys
from ntkflow.store import Store
Store(sys.argv[1]).write_bytes("big.bin", b"x" * (400 * 2**20))
print("done")
"""


def test_writer_killed_mid_write_leaves_nothing_that_verifies(tmp_path):
    store = Store(tmp_path)
    store.write_json("big.bin", {"old": True}, checksum=True)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir()):
        assert time.monotonic() < deadline and proc.poll() is None, "writer never started"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # the target is the old record, intact; the partial temporary file is never read as it
    assert store.read_json("big.bin", verify=True) == {"old": True}
    assert json.loads(store.read_bytes("big.bin"))["old"] is True


# ---- every unreadable artifact is recomputed, whatever is wrong with it, on every backend -------
# The damage is done through the store (a local folder or a real S3 API), to trial 0's folder.
T = "trials/000"


def _zarr_group(s: Store, rel: str, mode="w", **arrays):
    import zarr

    g = zarr.open_group(store=s.zarr_store(rel), mode=mode)
    for name, a in arrays.items():
        g.create_array(name, data=a)
    return g


def _gram_became_a_group(s: Store):
    """The state two concurrent launches of the old code left: `gram/` itself a Zarr group
    with `train_train`/`test_train` beside the kernel groups, one kernel group gone, the
    trial unfinished."""
    for rel in ("gram/NTKB1.zarr", "items/NTKB1.json", "result.json"):
        s.remove(f"{T}/{rel}")
    _zarr_group(s, f"{T}/gram", "a", train_train=np.zeros((3, 3)), test_train=np.zeros((2, 3)))


def _chunk(array="train_train") -> str:
    return f"{T}/gram/NTKJ2.zarr/{array}/c/0/0"


def _replace_gram(s: Store, dtype="f8", rows=None):
    """A Gram group with the right attributes but arrays of another dtype or shape."""
    import zarr

    rel = f"{T}/gram/NTKJ2.zarr"
    g = zarr.open_group(store=s.zarr_store(rel, read_only=True), mode="r")
    attrs, tt, te = dict(g.attrs), g["train_train"][...], g["test_train"][...]
    rows = rows or tt.shape[0]
    new = _zarr_group(s, rel, train_train=tt[:rows, :rows].astype(dtype), test_train=te)
    new.attrs.update(attrs)
    s.remove(f"{T}/result.json")
    s.remove(f"{T}/items/NTKJ2.json")


RECOMPUTE_NTKJ2 = "recomputing trials/000/gram/NTKJ2.zarr"


def _strays(s: Store):
    s.write_text(f"{T}/gram/junk.txt", "x")
    s.write_text(f"{T}/gram/.trash-123/x", "x")
    s.write_text(f"{T}/zarr.json", "{}")
    s.remove(f"{T}/result.json")


def _file_for_group(s: Store, rel="gram/NTKJ2.zarr"):
    s.remove(f"{T}/{rel}")
    s.write_bytes(f"{T}/{rel}", b"\0" * 10)


def _garbage_item(s: Store):
    s.write_bytes(f"{T}/items/K1.json", b"\xff\xfe")
    s.remove(f"{T}/result.json")


def _result_is_a_folder(s: Store):
    s.remove(f"{T}/result.json")
    s.write_text(f"{T}/result.json/x", "x")


# what is damaged → what the rerun must log (the damaged artifact, named)
CORRUPTIONS = {
    "gram folder became a Zarr group": (_gram_became_a_group, "removing trials/000/gram/zarr.json"),
    "stray files in an unfinished trial": (_strays, "removing trials/000/gram/junk.txt"),
    "Gram chunk truncated under an intact result.json": (
        lambda s: s.write_bytes(_chunk(), s.read_bytes(_chunk())[:100]),
        RECOMPUTE_NTKJ2,
    ),
    "Gram chunk missing under an intact result.json": (
        lambda s: s.remove(_chunk("test_train"), missing_ok=False),
        RECOMPUTE_NTKJ2,
    ),
    "Gram of the wrong dtype": (lambda s: _replace_gram(s, dtype="f4"), "has dtype float32"),
    "Gram of the wrong shape": (lambda s: _replace_gram(s, rows=10), "has shape (10, 10)"),
    "a file where a Gram group belongs": (_file_for_group, RECOMPUTE_NTKJ2),
    "a file where data.zarr belongs": (
        lambda s: _file_for_group(s, "data.zarr"),
        "recomputing trials/000/data.zarr",
    ),
    "an item record is garbage": (_garbage_item, "unreadable trials/000/items/K1.json"),
    "result.json is a folder": (_result_is_a_folder, "unreadable trials/000/result.json"),
}


@pytest.mark.parametrize("backend", ["local", "s3"])
@pytest.mark.parametrize("networks", [False, True], ids=["kernels-only", "networks"])
@pytest.mark.parametrize("what", list(CORRUPTIONS))
def test_any_broken_artifact_is_recomputed_by_a_plain_rerun(
    what, networks, backend, pristine, caplog
):
    cfg = _cfg("trials=1", *(NETS if networks else []))
    store = pristine(cfg, backend)
    ref = trial.load_result(store, 0)["methods"]
    damage, logged = CORRUPTIONS[what]
    damage(store)
    assert trial.complete(cfg, store, 0) is None  # noticed without any manual deletion
    caplog.clear()
    with caplog.at_level("WARNING"):
        again = trial.run_trial(cfg, store, 0)
    assert logged in caplog.text  # the rerun names what was wrong
    assert {m: again["methods"][m]["rmse"] for m in ref} == {m: ref[m]["rmse"] for m in ref}
    assert trial.complete(cfg, store, 0, deep=True) is not None
    grams = sorted(f"{name}.zarr" for name in cfg.gram_kernels)  # + NTKJ1 with the network
    assert store.listdir(f"{T}/gram") == grams
    assert not [f for f in store.files("") if ".tmp-" in f or ".trash-" in f]


def test_verify_finds_a_flipped_bit_and_the_rerun_recomputes_it(tmp_path, pristine):
    cfg = _cfg("trials=1")
    store = pristine(cfg)
    ref = trial.load_result(store, 0)["methods"]
    assert report.verify(cfg, store) == {0: []}
    _flip_bytes(tmp_path / _chunk())
    assert trial.complete(cfg, store, 0) is not None  # same files and sizes: only checksums see it
    bad = report.verify(cfg, store)[0]
    assert len(bad) == 1 and "gram/NTKJ2.zarr" in bad[0] and "checksum" in bad[0]
    assert trial.complete(cfg, store, 0) is None  # quarantined: the next run recomputes it
    kept = _mtimes(tmp_path, "trials/000/items/*.json")
    again = trial.run_trial(cfg, store, 0)["methods"]
    assert again["NTKB1"] == ref["NTKB1"] and again["K1"] == ref["K1"]  # reused as they were
    assert _mtimes(tmp_path, "trials/000/items/*.json") == {
        **kept,
        Path("trials/000/items/NTKJ2.json"): (tmp_path / "trials/000/items/NTKJ2.json")
        .stat()
        .st_mtime_ns,
    }
    assert Path("trials/000/items/NTKJ2.json") not in kept  # removed with its Gram, recomputed
    assert {m: again[m]["rmse"] for m in ref} == {m: ref[m]["rmse"] for m in ref}
    assert report.verify(cfg, store) == {0: []}


def test_report_flags_results_of_another_run_id_or_variant(pristine):
    cfg = _cfg("trials=1")
    store = pristine(cfg)
    for edit in ("seed=5", "formulas=published"):
        other = _cfg("trials=1", edit)
        (problems,) = report.verify(other, store).values()
        assert problems and any(w in " ".join(problems) for w in ("run", "formulas"))
        summary = report.aggregate(other, store)
        assert summary["failed_trials"] == [0]  # never relabelled as results of `other`
    assert report.verify(cfg, store) == {0: []}  # nothing was removed


# ---- keys: what is reused when the config or the code changes ---------------------------------
def _mtimes(root: Path, pattern: str) -> dict:
    return {p.relative_to(root): p.stat().st_mtime_ns for p in root.glob(pattern)}


def test_growing_trials_adding_and_reordering_kernels_reuse_everything(tmp_path):
    store = Store(tmp_path)
    small = _cfg("trials=2", "kernels=[NTKB1, K1]")
    for k in range(2):
        trial.run_trial(small, store, k)
    before = _mtimes(tmp_path, "trials/*/items/*.json")
    grown = _cfg("trials=3", "kernels=[K1, NTKJ2, NTKB1]")
    assert grown.run_id == small.run_id
    assert trial.complete(grown, store, 0) is None  # NTKJ2 is missing
    for k in range(3):
        trial.run_trial(grown, store, k)
    after = _mtimes(tmp_path, "trials/*/items/*.json")
    assert {p: after[p] for p in before} == before  # nothing recomputed
    assert len(after) == len(before) + 2 + 3
    assert trial.complete(small, store, 1) is not None  # the old kernel list is still complete
    assert set(trial.load_result(store, 1)["methods"]) == {"NTKB1", "K1", "NTKJ2"}
    reordered = _cfg("trials=3", "kernels=[NTKJ2, NTKB1, K1]")
    assert all(trial.complete(reordered, store, k) is not None for k in range(3))


def test_items_of_another_code_version_are_recomputed_or_kept_and_listed(pristine, monkeypatch):
    from ntkflow import keys

    cfg = _cfg("trials=1")
    store = pristine(cfg)
    first = trial.load_result(store, 0)["methods"]
    from ntkflow.trial.items import KINDS

    real = keys.code_version
    monkeypatch.setattr(keys, "code_version", lambda module: "x" + real(module)[1:])
    kernel_code = real(KINDS["kernel"])
    assert trial.complete(cfg, store, 0) is None  # a kernel fix invalidates the kernel items

    keep = _cfg("trials=1", "compute.keep_stale=true")
    assert trial.complete(keep, store, 0) is not None
    summary = report.aggregate(keep, store)
    assert {s["method"] for s in summary["stale_items"]} == set(cfg.methods)
    assert summary["code_versions"]["items"]["kernel"] == [kernel_code]

    again = trial.run_trial(cfg, store, 0)["methods"]
    assert all(again[m]["key"] != first[m]["key"] for m in cfg.methods)
    assert again["NTKB1"]["gram_reused"] is False  # the Gram is keyed on the kernel code too
    assert {m: again[m]["rmse"] for m in first} == {m: first[m]["rmse"] for m in first}
    summary = report.aggregate(cfg, store)
    assert summary["stale_items"] == []
    assert summary["code_versions"]["items"]["kernel"] == ["x" + kernel_code[1:]]


def test_network_items_are_keyed_without_log_every(tmp_path):
    store = Store(tmp_path)
    cfg = load_config("smoke", overrides=["trials=1", "kernels=[K1]"])
    first = trial.run_trial(cfg, store, 0)["methods"]
    assert first["NN1"]["kind"] == "network"
    relog = load_config("smoke", overrides=["trials=1", "kernels=[K1]", "networks.log_every=2"])
    assert trial.complete(relog, store, 0) is not None
    wider = load_config("smoke", overrides=["trials=1", "kernels=[K1]", "networks.width=32"])
    assert wider.run_id == cfg.run_id and trial.complete(wider, store, 0) is None
    again = trial.run_trial(wider, store, 0)["methods"]
    assert again["K1"] == first["K1"] and again["NN1"]["key"] != first["NN1"]["key"]


def test_verify_and_report_commands(tmp_path, capsys, pristine):
    from flows.cli import main
    from ntkflow.config import to_yaml

    cfg = _cfg()
    run_dir = tmp_path / cfg.run_id
    store = pristine(cfg, into=run_dir)
    store.write_text("config.yaml", to_yaml(cfg, provenance={}))
    assert main(["verify", str(run_dir)]) == 0
    assert "2 of 2 trial(s) verified" in capsys.readouterr().err
    _flip_bytes(run_dir / "trials/001/gram/K1.zarr/test_train/c/0/0")
    assert main(["verify", str(run_dir)]) == 1
    out = capsys.readouterr()
    assert "trial 001: gram/K1.zarr" in out.out and "bad: [1]" in out.err
    trial.run_trial(cfg, store, 1)  # the rerun recomputes what verify removed
    assert main(["report", str(run_dir)]) == 0

    # config.yaml edited: the results are not relabelled, they are flagged
    edited = (run_dir / "config.yaml").read_text().replace("seed: 0", "seed: 7")
    (run_dir / "config.yaml").write_text(edited)
    assert main(["report", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert "config.yaml edited?" in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (
        summary["failed_trials"] == [0, 1] and "not of this run" in summary["failures"][0]["error"]
    )


@pytest.mark.parametrize("networks", [False, True], ids=["kernels-only", "networks"])
def test_a_missing_gram_chunk_heals_by_a_rerun_and_by_verify(tmp_path, networks, pristine):
    """A chunk deleted under a finished trial: a plain rerun recomputes that Gram only (the
    networks are reused), and `verify` removes the damaged Gram so the next run recomputes it."""
    cfg = _cfg("trials=1", *(NETS if networks else []))
    store = pristine(cfg)
    ref = trial.load_result(store, 0)["methods"]
    gram_dir = tmp_path / "trials/000/gram/NTKB1.zarr"
    chunk = sorted((gram_dir / "train_train/c").rglob("*"))[-1]
    kept = _mtimes(tmp_path, "trials/000/items/*.json")
    chunk.unlink()
    assert trial.complete(cfg, store, 0) is None
    again = trial.run_trial(cfg, store, 0)["methods"]
    assert {m: again[m]["rmse"] for m in ref} == {m: ref[m]["rmse"] for m in ref}
    assert trial.complete(cfg, store, 0, deep=True) is not None
    changed = {p for p, t in _mtimes(tmp_path, "trials/000/items/*.json").items() if kept[p] != t}
    assert changed == {Path("trials/000/items/NTKB1.json")}  # only what used the lost chunk

    chunk.unlink()
    bad = report.verify(cfg, store)[0]
    assert bad and all("gram/NTKB1.zarr" in b for b in bad), bad
    assert not gram_dir.exists() and not (tmp_path / "trials/000/items/NTKB1.json").exists()
    again = trial.run_trial(cfg, store, 0)["methods"]
    assert {m: again[m]["rmse"] for m in ref} == {m: ref[m]["rmse"] for m in ref}
    assert report.verify(cfg, store) == {0: []}


def test_data_recomputed_with_other_numbers_recomputes_every_item_computed_from_it(
    tmp_path, monkeypatch
):
    """The data's code changed (its key is stale) and it now gives other numbers (as a data
    simulated with another BLAS thread count does in its last bits): every record computed
    from the old data is recomputed in the same run, which then completes, not only the next
    one (the kernels were judged reusable before the data was replaced)."""
    import dataclasses

    import ntkflow.trial.data as data_item

    cfg = load_config("smoke", overrides=["trials=1", "kernels=[NTKB1, K1]", *NETS])
    store = Store(tmp_path)
    first = trial.run_trial(cfg, store, 0)
    simulate = data_item.simulate

    def other_numbers(cfg, k):
        d = simulate(cfg, k)
        return dataclasses.replace(d, y=d.y * (1 + 1e-12))

    monkeypatch.setattr(data_item, "simulate", other_numbers)
    monkeypatch.setattr(data_item.DataItem, "code", "a-changed-data-code")
    store.remove("trials/000/result.json")  # as a change to the networks' code would void it
    res = trial.run_trial(cfg, store, 0)  # the same run completes
    sha = trial.load_data(store, 0).info["sha256"]
    assert res["status"] == "ok" and sha == res["data"]["sha256"] != first["data"]["sha256"]
    for method in res["methods"]:
        record = store.read_json(f"trials/000/items/{method}.json")
        assert record["data_sha256"] == sha, method
    assert set(res["methods"]) == set(first["methods"])

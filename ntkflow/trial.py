"""One trial, step by step, against an artifact store (no Prefect here: flows/ wraps these).

Layout under ``trials/<kkk>/`` (ARCHITECTURE.md "Store layout"):

    data.zarr            x, y, train, test, fit (row indices)
    gram/<KERNEL>.zarr   train_train, test_train
    items/<METHOD>.json  one verified record per method (rmse + diagnostics), written atomically
    nets/<NN>.npz        f₀ and final predictions; nets/<NN>_curve.json the training curve
    result.json          all items of the trial; written last, so its presence = trial complete
    error.json           the last failure's message (removed when the trial completes)

Every step first looks for its own verified record and reuses it, so a rerun recomputes only
what is missing or corrupt (a record that fails its checksum is logged and recomputed).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import platform
import time
import traceback

import numpy as np
import zarr

from ntkflow import compute, gram, krr
from ntkflow.config import Config
from ntkflow.data import STREAM_NETS, TrialData, simulate, stream
from ntkflow.gram import CorruptArtifact
from ntkflow.kernels import kernel
from ntkflow.store import Store

log = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    """Raised by ``faults.fail_trials`` (tests of rerun-failed-only)."""


def trial_dir(k: int) -> str:
    return f"trials/{k:03d}"


def load_result(store: Store, k: int) -> dict | None:
    """The trial's verified result.json, or None (missing, truncated or corrupted)."""
    return store.read_json(f"{trial_dir(k)}/result.json", verify=True)


def inject_fault(cfg: Config, store: Store, k: int) -> None:
    if k not in cfg.faults.fail_trials:
        return
    marker = f"{trial_dir(k)}/fault-injected"
    if cfg.faults.fail_once and store.exists(marker):
        return
    store.write_text(marker, "1")
    raise InjectedFault(f"injected fault in trial {k} (faults.fail_trials)")


# ---- data -------------------------------------------------------------------------------------
DATA_ARRAYS = ("x", "y", "train", "test", "fit")


def _data_digest(arrays: dict) -> str:
    h = hashlib.sha256()
    for name in DATA_ARRAYS:
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def ensure_data(cfg: Config, store: Store, k: int) -> str:
    """Simulate trial k's data into ``data.zarr`` unless a verified copy is there."""
    rel = f"{trial_dir(k)}/data.zarr"
    try:
        load_data(store, k)
        return rel
    except CorruptArtifact as e:
        if store.exists(rel):
            log.warning("recomputing %s: %s", rel, e)
    d = simulate(cfg, k)
    group = zarr.open_group(store.zarr_store(rel), mode="w")
    arrays = {name: np.asarray(getattr(d, name)) for name in DATA_ARRAYS}
    for name, a in arrays.items():
        group.create_array(name, data=a)
    group.attrs.update({**_plain(d.info), "sha256": _data_digest(arrays), "complete": True})
    return rel


def load_data(store: Store, k: int) -> TrialData:
    """Trial k's verified data; CorruptArtifact if missing, incomplete or altered."""
    rel = f"{trial_dir(k)}/data.zarr"
    try:
        group = zarr.open_group(store.zarr_store(rel, read_only=True), mode="r")
        attrs = dict(group.attrs)
        arrays = {name: group[name][...] for name in DATA_ARRAYS}
    except Exception as e:  # missing or unreadable
        raise CorruptArtifact(f"unreadable {rel}: {e}") from e
    if not attrs.get("complete") or attrs.get("sha256") != _data_digest(arrays):
        raise CorruptArtifact(f"{rel} is incomplete or fails its checksum")
    return TrialData(**arrays, info={k_: v for k_, v in attrs.items() if k_ != "complete"})


# ---- kernel regression ------------------------------------------------------------------------
def kernel_item(cfg: Config, store: Store, k: int, name: str, scheduler="sync") -> dict:
    """Gram of kernel ``name`` → Zarr → kernel regression → test RMSE and solve diagnostics.

    A verified Gram already in the store is reused; a missing, incomplete or corrupted one is
    (re)computed. Blocks run one after another (``scheduler="sync"``): the kernel already spreads
    each block over the process's threads, so running blocks in parallel would only oversubscribe
    the cores and hold more blocks in memory.
    """
    rel = f"{trial_dir(k)}/items/{name}.json"
    done = store.read_json(rel, verify=True)
    if done is not None:
        return done
    t0 = time.perf_counter()
    d = load_data(store, k)
    zrel = f"{trial_dir(k)}/gram/{name}.zarr"
    budget = cfg.compute.memory_budget_gb * 1e9

    def solve():
        return krr.predict_stored(
            store.zarr_store(zrel, read_only=True),
            d.y[d.train],
            ridge=cfg.krr.ridge,
            memory_budget=budget,
            scheduler=scheduler,
        )

    try:
        _, attrs = gram.open_gram(store.zarr_store(zrel, read_only=True))
        if (attrs["kernel"], attrs["formulas"]) != (name, cfg.formulas):
            raise gram.CorruptArtifact(f"{zrel} holds {attrs['kernel']}/{attrs['formulas']}")
        t1 = time.perf_counter()
        pred, info = solve()
        reused = True
    except gram.CorruptArtifact as e:
        if store.exists(zrel):
            log.warning("recomputing %s: %s", zrel, e)
        kern = kernel(name, formulas=cfg.formulas)
        x = compute.to_device(d.x)
        attrs = gram.write_gram(
            store.zarr_store(zrel),
            kern,
            x,
            d.train,
            d.test,
            block=cfg.compute.gram_block,
            scheduler=scheduler,
        )
        t1 = time.perf_counter()
        pred, info = solve()
        reused = False
    record = {
        "method": name,
        "kind": "kernel",
        "rmse": krr.rmse(pred, d.y[d.test]),
        **info,
        "seconds_gram": t1 - t0,
        "seconds_solve": time.perf_counter() - t1,
        "gram": zrel,
        "gram_reused": reused,
        "gram_sha256": attrs["sha256"],
    }
    store.write_json(rel, record, checksum=True)
    return record


# ---- networks ---------------------------------------------------------------------------------
def net_seed(cfg: Config, k: int, depth: int) -> np.random.SeedSequence:
    """Initialisation and batch order of trial k's depth-L network (independent per depth)."""
    return stream(cfg.seed, k, STREAM_NETS).spawn(max(cfg.networks.depths) + 1)[depth]


def network_item(
    cfg: Config, store: Store, k: int, depth: int, device: str = "cpu", progress=None
) -> dict:
    """Train trial k's network with ``depth`` hidden layers (SPEC §5); record RMSE and curves.

    ``progress(epoch, row)`` is called every ``networks.log_every`` epochs (train_network)."""
    import torch

    from ntkflow.nets import build_network
    from ntkflow.train import train_network

    name = f"NN{depth}"
    rel = f"{trial_dir(k)}/items/{name}.json"
    done = store.read_json(rel, verify=True)
    if done is not None:
        return done
    n = cfg.networks
    d = load_data(store, k)
    val = d.val
    seed = net_seed(cfg, k, depth)
    net = build_network(
        cfg.data.d_in,
        depth,
        n.width,
        n.parameterization,
        seed=seed,
        dtype=getattr(torch, n.dtype),
        device=device,
    )
    epochs = n.epochs[n.depths.index(depth)]
    res = train_network(
        net,
        d.x[d.fit],
        d.y[d.fit],
        d.x[val],
        d.y[val],
        d.x[d.test],
        epochs=epochs,
        batch_size=n.batch_size,
        lr=n.lr,
        seed=seed,
        log_every=n.log_every,
        progress=progress,
    )
    base = f"{trial_dir(k)}/nets/{name}"
    store.write_json(f"{base}_curve.json", {k_: v.tolist() for k_, v in res.curve.items()})
    _write_npz(
        store,
        f"{base}.npz",
        **{f"f0_{p}": v for p, v in res.f0.items()},
        **{f"pred_{p}": v for p, v in res.pred.items()},
    )
    record = {
        "method": name,
        "kind": "network",
        "rmse": krr.rmse(res.pred["test"], d.y[d.test]),
        "rmse_f0": krr.rmse(res.f0["test"], d.y[d.test]),
        "final_train_loss": float(res.curve["train_loss"][-1]),
        "final_val_loss": float(res.curve["val_loss"][-1]),
        "epochs": res.epochs_run,
        "linearized_time": 2 * n.lr * res.epochs_run / n.batch_size,  # SPEC §6: t = 2ηE/B
        "norms_init": res.norms_init,
        "norms_final": res.norms_final,
        "param_rel_change": res.param_rel_change,
        "seconds_train": res.seconds,
        "steps_per_second": res.steps_per_second,
        "device": res.device,
        "curve": f"{base}_curve.json",
        "predictions": f"{base}.npz",
    }
    store.write_json(rel, record, checksum=True)
    return record


def _write_npz(store: Store, rel: str, **arrays) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    store.write_bytes(rel, buf.getvalue())


# ---- the whole trial --------------------------------------------------------------------------
def finish(cfg: Config, store: Store, k: int, items: list[dict], versions: dict) -> dict:
    """Assemble result.json (atomically, last) from the trial's item records."""
    d = load_data(store, k)
    result = {
        "trial": k,
        "status": "ok",
        "seed": {"base": cfg.seed, "spawn_key": [k]},
        "formulas": cfg.formulas,
        "run_id": cfg.run_id,
        "data": d.info,
        "methods": {item["method"]: item for item in items},
        "manifest": {
            "data.zarr": d.info.get("sha256"),
            **{item["gram"]: item["gram_sha256"] for item in items if "gram" in item},
        },
        "versions": versions,
        "host": platform.node(),
    }
    store.write_json(f"{trial_dir(k)}/result.json", result, checksum=True)
    store.remove(f"{trial_dir(k)}/error.json")
    return result


@contextlib.contextmanager
def recording_errors(store: Store, k: int):
    """Write any failure of trial k's steps to its ``error.json`` (for the report), re-raise."""
    try:
        yield
    except Exception as exc:
        store.write_json(
            f"{trial_dir(k)}/error.json",
            {
                "trial": k,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": "".join(traceback.format_exception(exc))[-4000:],
                "time": time.time(),
            },
        )
        raise


def run_kernels(cfg: Config, store: Store, k: int, scheduler="sync") -> list[dict]:
    """The kernel part of trial k: faults, data, then every kernel's record."""
    inject_fault(cfg, store, k)
    ensure_data(cfg, store, k)
    return [kernel_item(cfg, store, k, name, scheduler) for name in cfg.kernels]


def run_trial(
    cfg: Config,
    store: Store,
    k: int,
    versions: dict | None = None,
    device: str = "cpu",
    scheduler="sync",
) -> dict:
    """All of trial k in one process (the flow runs the same steps as separate tasks)."""
    done = load_result(store, k)
    if done is not None:
        return done
    with recording_errors(store, k):
        items = run_kernels(cfg, store, k, scheduler)
        if cfg.networks.enabled:
            items += [network_item(cfg, store, k, L, device) for L in cfg.networks.depths]
        return finish(cfg, store, k, items, versions or {})


def _plain(d: dict) -> dict:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in d.items()}

"""One trial, step by step, against an artifact store (no Prefect here: flows/ wraps these).

Layout under ``trials/<kkk>/`` (ARCHITECTURE.md "Store layout"):

    data.zarr            x, y, train, test, fit (row indices)
    gram/<KERNEL>.zarr   train_train, test_train
    items/<METHOD>.json  one verified record per method (rmse + diagnostics), written atomically
    nets/<NN>.npz        f₀ and final predictions; nets/<NN>_curve.json the training curve
    nets/<NN>_ntk0.npz   the initial network's empirical NTK Θ̂₀(fit ⊕ test, fit) and f₀
    nets/LIN<L>.npz      the linearized predictions (SPEC §6) of that network, per variant
    result.json          all items of the trial; written last, so its presence = trial complete
    error.json           the last failure's message (removed when the trial completes)

Every step first looks for its own verified record and reuses it, so a rerun recomputes only
what is missing or corrupt (a record that fails its checksum is logged and recomputed).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import platform
import time
import traceback
from typing import NamedTuple

import numpy as np
import zarr

from ntkflow import compute, gram, keys, krr, lease
from ntkflow.config import (
    THEORY_VARIANTS,
    Config,
    network_spec,
    network_specs,
    theory_kernel,
)
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


# ---- item records: keyed, verified, reused only when they are what the config asks for ------
# (field naming an artifact of the trial, field with its SHA-256) in item records
ARTIFACT_FIELDS = (
    ("gram", "gram_sha256"),
    ("predictions", "predictions_sha256"),
    ("ntk0", "ntk0_sha256"),
)


def item_rel(k: int, method: str) -> str:
    return f"{trial_dir(k)}/items/{method}.json"


def item_problem(cfg: Config, record: dict | None, method: str, data_sha: str | None) -> str:
    """Why a stored item record cannot stand for ``method`` under ``cfg`` ('' if it can).

    A record computed by another code version or config section (another key) is stale: it is
    recomputed, or with ``compute.keep_stale`` kept (and listed as stale by the report).
    """
    if record is None:
        return "missing or unreadable"
    if record.get("method") != method:
        return f"holds {record.get('method')!r}"
    if data_sha is not None and record.get("data_sha256") != data_sha:
        return "computed from other data"
    if record.get("key") != cfg.item_key(method) and not cfg.compute.keep_stale:
        return f"stale (key {record.get('key')}, current {cfg.item_key(method)})"
    return ""


def reusable_item(cfg: Config, store: Store, k: int, method: str, data_sha: str | None):
    """The stored record of ``method`` if it can be reused as it is, else None (logged)."""
    rel = item_rel(k, method)
    record = store.read_json(rel, verify=True)
    problem = item_problem(cfg, record, method, data_sha)
    for path, files in (record or {}).get("artifacts", {}).items():
        if not problem and store.files(path) != files:
            problem = f"{path} was changed or removed"
    if problem and record is not None:
        log.warning("recomputing %s: %s", rel, problem)
    return None if problem else record


def save_item(cfg: Config, store: Store, k: int, record: dict, data_sha: str) -> dict:
    """Write a method's record with its key, code version and the data it was computed from."""
    method, kind = record["method"], record["kind"]  # kind: a key of keys.CODE_MODULES
    paths = [record[f] for f, _ in ARTIFACT_FIELDS if f in record]
    record = {
        **record,
        "artifacts": {path: store.files(path) for path in paths},  # files and sizes
        "key": cfg.item_key(method),
        "code": keys.code_version(kind),
        "data_sha256": data_sha,
    }
    store.write_json(item_rel(k, method), record, checksum=True)
    return record


def inject_network_fault(cfg: Config, store: Store, k: int, name: str) -> None:
    """``faults.fail_networks``: fail one network of one trial (tests of rerun-failed-only)."""
    if f"{k}/{name}" not in cfg.faults.fail_networks:
        return
    marker = f"{trial_dir(k)}/fault-injected-{name}"
    if cfg.faults.fail_once and store.exists(marker):
        return
    store.write_text(marker, "1")
    raise InjectedFault(f"injected fault in trial {k}, network {name} (faults.fail_networks)")


# ---- data -------------------------------------------------------------------------------------
DATA_ARRAYS = ("x", "y", "train", "test", "fit")


def _data_digest(arrays: dict) -> str:
    h = hashlib.sha256()
    for name in DATA_ARRAYS:
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write_group(store: Store, rel: str, fill) -> dict:
    """Write a Zarr group under a unique temporary name with ``fill(zarr_store)``, then commit
    it to ``rel`` atomically: a half-written or foreign group never sits at ``rel``."""
    tmp = store.temp_name(rel)
    try:
        out = fill(store.zarr_store(tmp))
        store.commit_dir(tmp, rel)
    finally:
        store.remove(tmp)
    return out


def ensure_data(cfg: Config, store: Store, k: int) -> str:
    """Simulate trial k's data into ``data.zarr`` unless a verified copy is there."""
    rel = f"{trial_dir(k)}/data.zarr"
    sweep(store, k)
    try:
        d = load_data(store, k)
        if d.info.get("key") == cfg.data_key() or cfg.compute.keep_stale:
            return rel
        log.warning("recomputing %s: stale (key %s)", rel, d.info.get("key"))
    except CorruptArtifact as e:
        if store.exists(rel):
            log.warning("recomputing %s: %s", rel, e)
    d = simulate(cfg, k)
    arrays = {name: np.asarray(getattr(d, name)) for name in DATA_ARRAYS}

    def fill(zstore):
        group = zarr.open_group(zstore, mode="w")
        for name, a in arrays.items():
            group.create_array(name, data=a)
        group.attrs.update(
            {
                **_plain(d.info),
                "key": cfg.data_key(),
                "sha256": _data_digest(arrays),
                "complete": True,
            }
        )

    write_group(store, rel, fill)
    return rel


def load_data(store: Store, k: int) -> TrialData:
    """Trial k's verified data; CorruptArtifact if missing, incomplete or altered."""
    rel = f"{trial_dir(k)}/data.zarr"
    try:
        group = zarr.open_group(store.zarr_store(rel, read_only=True), mode="r")
        attrs = dict(group.attrs)
        arrays = {name: group[name][...] for name in DATA_ARRAYS}
    except Exception as e:  # missing or unreadable, whatever the reason
        raise CorruptArtifact(f"unreadable {rel}: {type(e).__name__}: {e}") from e
    if not attrs.get("complete") or attrs.get("sha256") != _data_digest(arrays):
        raise CorruptArtifact(f"{rel} is incomplete or fails its checksum")
    return TrialData(**arrays, info={k_: v for k_, v in attrs.items() if k_ != "complete"})


def data_sha(store: Store, k: int) -> str | None:
    """The recorded digest of trial k's data (attributes only, not verified: cheap)."""
    try:
        rel = f"{trial_dir(k)}/data.zarr"
        return zarr.open_group(store.zarr_store(rel, read_only=True), mode="r").attrs["sha256"]
    except Exception:  # noqa: BLE001 - missing or unreadable: no data
        return None


STALE_AGE = 3600.0  # temporary files older than this belong to dead writers


def sweep(store: Store, k: int) -> None:
    """Remove what cannot belong in trial k's folder (logged): anything in ``gram/`` that is
    not a ``<KERNEL>.zarr`` group (e.g. a ``gram/zarr.json`` group with arrays ``train_train``
    beside the kernels, left by an interrupted writer of an old version), a ``zarr.json`` at the
    trial's top level, leftovers of replaced artifacts and old temporary files."""
    base = trial_dir(k)
    strays = [f"{base}/zarr.json"] if store.exists(f"{base}/zarr.json") else []
    for sub in ("", "/gram", "/items", "/nets"):
        for name in store.listdir(base + sub):
            rel = f"{base}{sub}/{name}"
            if name.startswith(".trash-"):
                strays.append(rel)
            elif name.startswith(".tmp-"):
                age = store.age(rel)
                if age is not None and age > STALE_AGE:
                    strays.append(rel)
            elif sub == "/gram" and not name.endswith(".zarr"):
                strays.append(rel)
    for rel in strays:
        log.warning("removing %s: it does not belong there", rel)
        store.remove(rel)


# ---- kernel regression ------------------------------------------------------------------------
def kernel_item(
    cfg: Config, store: Store, k: int, name: str, scheduler="sync", data: TrialData | None = None
) -> dict:
    """Gram of kernel ``name`` → Zarr → kernel regression → test RMSE and solve diagnostics.

    A verified Gram already in the store is reused; a missing, incomplete or corrupted one is
    (re)computed. Blocks run one after another (``scheduler="sync"``): the kernel already spreads
    each block over the process's threads, so running blocks in parallel would only oversubscribe
    the cores and hold more blocks in memory.
    """
    d = data if data is not None else load_data(store, k)
    sha = d.info["sha256"]
    done = reusable_item(cfg, store, k, name, sha)
    if done is not None:
        return done
    t0 = time.perf_counter()
    zrel = f"{trial_dir(k)}/gram/{name}.zarr"
    budget = cfg.compute.memory_budget_gb * 1e9
    n_train, n_test = len(d.train), len(d.test)
    shapes = {"train_train": [n_train, n_train], "test_train": [n_test, n_train]}
    own = {"key": cfg.gram_key(name), "data_sha256": sha}

    def solve():
        return krr.predict_stored(
            store.zarr_store(zrel, read_only=True),
            d.y[d.train],
            ridge=cfg.krr.ridge,
            memory_budget=budget,
            scheduler=scheduler,
        )

    try:
        _, attrs = gram.open_gram(store.zarr_store(zrel, read_only=True), shapes)
        if (attrs["kernel"], attrs["formulas"]) != (name, cfg.formulas):
            raise gram.CorruptArtifact(f"{zrel} holds {attrs['kernel']}/{attrs['formulas']}")
        if attrs.get("data_sha256") != sha:
            raise gram.CorruptArtifact(f"{zrel} was computed from other data")
        if attrs.get("key") != own["key"] and not cfg.compute.keep_stale:
            raise gram.CorruptArtifact(f"{zrel} is stale (key {attrs.get('key')})")
        t1 = time.perf_counter()
        pred, info = solve()
        reused = True
    except gram.CorruptArtifact as e:
        if store.exists(zrel):
            log.warning("recomputing %s: %s", zrel, e)
        kern = kernel(name, formulas=cfg.formulas)
        x = compute.to_device(d.x)
        attrs = write_group(
            store,
            zrel,
            lambda zstore: gram.write_gram(
                zstore,
                kern,
                x,
                d.train,
                d.test,
                block=cfg.compute.gram_block,
                scheduler=scheduler,
                extra_attrs=own,
            ),
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
    return save_item(cfg, store, k, record, sha)


# ---- networks ---------------------------------------------------------------------------------
def net_seed(cfg: Config, k: int, depth: int) -> np.random.SeedSequence:
    """Initialisation and batch order of trial k's depth-L network (independent per depth)."""
    return stream(cfg.seed, k, STREAM_NETS).spawn(max(cfg.networks.depths) + 1)[depth]


def network_item(
    cfg: Config,
    store: Store,
    k: int,
    depth: int,
    device: str = "cpu",
    width: int | None = None,
    progress=None,
) -> dict:
    """Train trial k's network with ``depth`` hidden layers (SPEC §5); record RMSE and curves.

    ``width`` picks the network of a width sweep. Before training the empirical NTK of the
    initial network is stored for the theory (SPEC §6), after it the lazy-training diagnostics
    are added to the record. A network whose loss diverges gets a failed record (deterministic
    for its seed), which fails only its own methods.
    """
    from ntkflow.train import TrainingDiverged, train_network

    spec = network_spec(cfg, depth, width)
    name = spec.name
    d = load_data(store, k)
    sha = d.info["sha256"]
    done = reusable_item(cfg, store, k, name, sha)
    if done is not None:
        return done
    inject_network_fault(cfg, store, k, name)
    n = cfg.networks
    val = d.val
    seed = net_seed(cfg, k, depth)
    net = initial_network(cfg, k, spec, device)
    epochs = n.epochs[n.depths.index(depth)]
    t_init = time.perf_counter()
    ntk0 = store_initial_ntk(store, k, name, net, d)
    seconds_ntk = time.perf_counter() - t_init
    try:
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
    except TrainingDiverged as exc:
        return save_item(cfg, store, k, failed_item(name, "network", exc, **ntk0.record), sha)
    t_diag = time.perf_counter()
    diagnostics = lazy_diagnostics(cfg, k, net, d, ntk0)
    seconds_ntk += time.perf_counter() - t_diag
    base = f"{trial_dir(k)}/nets/{name}"
    store.write_json(f"{base}_curve.json", {k_: v.tolist() for k_, v in res.curve.items()})
    npz_sha = _write_npz(
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
        "predictions_sha256": npz_sha,
        **ntk0.record,
        **diagnostics,
        "seconds_ntk": seconds_ntk,
    }
    return save_item(cfg, store, k, record, sha)


def _write_npz(store: Store, rel: str, **arrays) -> str:
    """Write arrays as one .npz; returns its SHA-256."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    store.write_bytes(rel, buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


# ---- linearized theory (SPEC §6) -----------------------------------------------------------------
def initial_network(cfg: Config, k: int, spec, device: str = "cpu"):
    """Trial k's network ``spec`` at initialisation (deterministic from the trial seed)."""
    import torch

    from ntkflow.nets import build_network

    n = cfg.networks
    return build_network(
        cfg.data.d_in,
        spec.depth,
        spec.width,
        n.parameterization,
        seed=net_seed(cfg, k, spec.depth),
        dtype=getattr(torch, n.dtype),
        device=device,
    )


class InitialNTK(NamedTuple):
    """Θ̂₀(fit ⊕ test, fit) of the initial network (float64; fit rows first) and its f₀."""

    ntk: np.ndarray
    f0_fit: np.ndarray
    f0_test: np.ndarray
    record: dict  # where it is stored, with its SHA-256


def store_initial_ntk(store: Store, k: int, name: str, net, d: TrialData) -> InitialNTK:
    """Compute the initial network's empirical NTK and f₀ and store them (``nets/<NN>_ntk0.npz``).

    The NTK comes from per-layer factors of a float64 copy of the network (no Jacobians); f₀ is
    the network's own output in its own dtype, the f₀ its training starts from.
    """
    import torch

    from ntkflow.nets import empirical_ntk

    rows = np.concatenate([d.fit, d.test])
    nf = len(d.fit)
    ntk = empirical_ntk(net, d.x[rows])[:, :nf]  # features once for all rows
    p = net.layers[0].weight
    with torch.no_grad():
        f0 = net(torch.as_tensor(d.x[rows]).to(dtype=p.dtype, device=p.device)).reshape(-1).double()
    f0 = f0.cpu().numpy()
    rel = f"{trial_dir(k)}/nets/{name}_ntk0.npz"
    sha = _write_npz(store, rel, ntk=ntk, f0_fit=f0[:nf], f0_test=f0[nf:])
    return InitialNTK(ntk, f0[:nf], f0[nf:], {"ntk0": rel, "ntk0_sha256": sha})


def load_initial_ntk(cfg: Config, store: Store, k: int, spec, record: dict | None) -> InitialNTK:
    """The stored initial NTK if it verifies against the network's record, else recomputed from
    the seed (the initial network is rebuilt exactly) and stored again."""
    rel = f"{trial_dir(k)}/nets/{spec.name}_ntk0.npz"
    want = (record or {}).get("ntk0_sha256")
    if want is not None and store.exists(rel):
        raw = store.read_bytes(rel)
        if hashlib.sha256(raw).hexdigest() == want:
            with np.load(io.BytesIO(raw)) as z:
                return InitialNTK(z["ntk"], z["f0_fit"], z["f0_test"], {"ntk0": rel})
        log.warning("recomputing %s: fails its checksum", rel)
    net = initial_network(cfg, k, spec)
    return store_initial_ntk(store, k, spec.name, net, load_data(store, k))


def ntk_subsample_seed(cfg: Config, k: int) -> np.random.SeedSequence:
    """Seed of the trial's fixed drift subsample: slot 0 of the networks' streams (depths ≥ 1)."""
    return net_seed(cfg, k, 0)


def lazy_diagnostics(cfg: Config, k: int, net, d: TrialData, init: InitialNTK) -> dict:
    """SPEC §6 on a fixed subsample of fit points: kernel drift ‖Θ̂_T − Θ̂₀‖/‖Θ̂₀‖ of the trained
    ``net`` and init error ‖Θ̂₀ − Θ‖/‖Θ‖ against the analytic NTK of its family (Frobenius)."""
    from ntkflow.kernels import kernel
    from ntkflow.linearized import fixed_subsample, relative_change
    from ntkflow.nets import empirical_ntk

    sub = fixed_subsample(ntk_subsample_seed(cfg, k), len(d.fit), cfg.networks.ntk_subsample)
    theta0 = init.ntk[np.ix_(sub, sub)]
    x_sub = d.x[d.fit[sub]]
    out = {
        "ntk_subsample": len(sub),
        "ntk_drift": relative_change(empirical_ntk(net, x_sub), theta0),
    }
    name = theory_kernel(cfg.networks.parameterization, net.depth)
    if name:
        analytic = kernel(name, formulas="exact", **net.hyper)(x_sub)
        out["ntk_init_error"] = relative_change(theta0, analytic)
    return out


def analytic_ntk(cfg: Config, store: Store, k: int, name: str, d: TrialData):
    """Θ(fit, fit) and Θ(test, fit) of the exact kernel ``name``: slices of the trial's stored
    Gram (fit = leading train rows), shared by every width; evaluated here when the run's Grams
    are of the published variant or the stored one is unusable."""
    nf = len(d.fit)
    if cfg.formulas == "exact" and name in cfg.gram_kernels:
        zrel = f"{trial_dir(k)}/gram/{name}.zarr"
        try:
            k_train, k_test, _ = gram.read_gram(store.zarr_store(zrel, read_only=True))
            return k_train[:nf, :nf], k_test[:, :nf]
        except CorruptArtifact as e:
            log.warning("evaluating %s in memory: %s", name, e)
    from ntkflow.kernels import kernel

    k_all = kernel(name, formulas="exact")(np.concatenate([d.x[d.fit], d.x[d.test]]), d.x[d.fit])
    return k_all[:nf], k_all[nf:]


def theory_item(
    cfg: Config, store: Store, k: int, depth: int, width: int | None = None
) -> list[dict]:
    """LIN<L>, LIN<L>-emp, LIN<L>-inf, LIN<L>-sgd of trial k's network (SPEC §6), after it trained.

    LIN: gradient flow to the network's t = 2ηE/B with the analytic NTK of its family and its
    own f₀; -emp: the same with the empirical NTK at initialisation; -inf: t → ∞ (analytic, with
    f₀); -sgd: the network's own SGD steps applied to the linear model with the empirical NTK.
    Each record has the test RMSE and the RMSE between its and the network's test predictions.
    A variant that diverges (or a network that did) fails only its own method.
    """
    from ntkflow.linearized import GradientFlow, LinearizedDiverged, sgd_replay
    from ntkflow.train import epoch_permutations

    spec = network_spec(cfg, depth, width)
    n = cfg.networks
    names = spec.theory_methods(n.parameterization)
    t_start = time.perf_counter()
    d = load_data(store, k)
    sha = d.info["sha256"]
    done = [reusable_item(cfg, store, k, m, sha) for m in names]
    if all(r is not None for r in done):
        return done
    nn = reusable_item(cfg, store, k, spec.name, sha)
    if nn is None:
        raise RuntimeError(f"trial {k}: {spec.name} has no record; train it before its theory")
    init = load_initial_ntk(cfg, store, k, spec, nn)
    epochs = n.epochs[n.depths.index(depth)]
    t = 2 * n.lr * epochs / n.batch_size
    y_fit, y_test, nf = d.y[d.fit], d.y[d.test], len(d.fit)
    f0 = (y_fit, init.f0_fit, init.f0_test)
    emp_fit, emp_test = init.ntk[:nf], init.ntk[nf:]
    preds, errors, kernels = {}, {}, {}
    name = theory_kernel(n.parameterization, depth)
    if name:
        flow = GradientFlow(*analytic_ntk(cfg, store, k, name, d))  # one eigh: every t
        preds[""], preds["-inf"] = flow.predict(t, *f0), flow.predict(math.inf, *f0)
        kernels[""] = kernels["-inf"] = name
    preds["-emp"] = GradientFlow(emp_fit, emp_test).predict(t, *f0)
    kernels["-emp"] = kernels["-sgd"] = "empirical"
    try:
        perms = epoch_permutations(net_seed(cfg, k, depth), nf, epochs)
        preds["-sgd"] = sgd_replay(
            emp_fit, emp_test, *f0, perms, batch_size=n.batch_size, lr=n.lr
        ).eval
    except LinearizedDiverged as exc:
        errors["-sgd"] = exc
    nn_pred = None
    if nn.get("status", "ok") == "ok":
        with np.load(io.BytesIO(store.read_bytes(nn["predictions"]))) as z:
            nn_pred = z["pred_test"]
    base = f"{trial_dir(k)}/nets/LIN{depth}{spec.tag}.npz"
    pred_sha = _write_npz(store, base, **{f"pred_test{v}": p for v, p in preds.items()})
    seconds = time.perf_counter() - t_start
    # SPEC §6 separates three effects: finite width (-emp vs LIN), SGD steps vs gradient flow
    # (-sgd vs -emp), and the time limit (-inf vs LIN); each record holds its own against the
    # predictor it differs from in one respect.
    reference = {"-emp": "", "-sgd": "-emp", "-inf": ""}
    records = []
    for v in THEORY_VARIANTS:
        m = f"LIN{depth}{v}{spec.tag}"
        if m not in names:
            continue
        if v in errors:
            rec = failed_item(m, "linearized", errors[v], network=spec.name)
        else:
            gap = krr.rmse(preds[v], nn_pred) if nn_pred is not None else None
            rec = {
                "method": m,
                "kind": "linearized",
                "network": spec.name,
                "variant": v.lstrip("-") or "flow",
                "ntk": kernels[v],
                "t": math.inf if v == "-inf" else t,
                "rmse": krr.rmse(preds[v], y_test),
                "rmse_vs_network": gap,
                "rel_rmse_vs_network": gap / nn["rmse"] if gap is not None else None,
                "reference": None,
                "rmse_vs_reference": None,
                "predictions": base,
                "predictions_sha256": pred_sha,
                "seconds_theory": seconds,
            }
            ref = reference.get(v)
            if ref is not None and ref in preds:
                rec["reference"] = f"LIN{depth}{ref}{spec.tag}"
                rec["rmse_vs_reference"] = krr.rmse(preds[v], preds[ref])
        records.append(save_item(cfg, store, k, rec, sha))
    return records


def failed_item(method: str, kind: str, exc: BaseException, **extra) -> dict:
    """The record of a method that failed deterministically (e.g. diverged) in this trial."""
    return {
        "method": method,
        "kind": kind,
        "status": "failed",
        "error": f"{type(exc).__name__}: {exc}",
        "rmse": None,
        **extra,
    }


# ---- the whole trial: manifest, completeness, verification ------------------------------------
def _manifest_entry(item: dict, field: str, sha) -> dict:
    """An item's artifact: its checksum(s) and its files with their sizes when it was made."""
    return {"sha256": sha, "files": item.get("artifacts", {}).get(item[field])}


def finish(cfg: Config, store: Store, k: int, items: list[dict], versions: dict) -> dict:
    """Assemble result.json (atomically, last) from the trial's item records.

    Methods of an earlier result that this config does not ask for (another kernel list) are
    kept, with their manifest entries, so runs with different kernel lists share a trial.
    """
    d = load_data(store, k)
    old = load_result(store, k) or {}
    keep = {m: it for m, it in (old.get("methods") or {}).items() if m not in cfg.methods}
    methods = {**keep, **{item["method"]: item for item in items}}
    if any(it.get("data_sha256") != d.info["sha256"] for it in methods.values()):
        methods = {item["method"]: item for item in items}  # older items of other data: drop
    data = {"sha256": d.info["sha256"], "files": store.files(f"{trial_dir(k)}/data.zarr")}
    manifest = {"data.zarr": data}
    for item in methods.values():
        for field, sha in ARTIFACT_FIELDS:
            if field in item:
                rel = item[field].removeprefix(trial_dir(k) + "/")
                manifest[rel] = _manifest_entry(item, field, item.get(sha))
    result = {
        "trial": k,
        "status": "ok",
        "seed": {"base": cfg.seed, "spawn_key": [k]},
        "formulas": cfg.formulas,
        "run_id": cfg.run_id,
        "data": d.info,
        "methods": methods,
        "manifest": manifest,
        "versions": versions,
        "code": keys.code_versions(),
        "host": platform.node(),
    }
    store.write_json(f"{trial_dir(k)}/result.json", result, checksum=True)
    store.remove(f"{trial_dir(k)}/error.json")
    return result


def problems(cfg: Config, store: Store, k: int, result: dict | None, deep: bool = False):
    """What is wrong with trial k's result for ``cfg`` (empty: complete and intact).

    Always: the record verifies, belongs to this run id and variant, holds every method of
    ``cfg`` with its current key, and every artifact of its manifest has exactly its files and
    sizes (a deleted or truncated chunk is noticed without reading any data). ``deep``: also
    the SHA-256 of every array and file (what ``ntkflow verify`` does).
    """
    if result is None:
        return ["no result.json (or it fails its checksum)"]
    out = []
    if result.get("run_id") != cfg.run_id:
        out.append(f"result of run {result.get('run_id')}, not of this run {cfg.run_id}")
    if result.get("formulas") != cfg.formulas:
        out.append(f"formulas {result.get('formulas')!r}, config says {cfg.formulas!r}")
    methods = result.get("methods") or {}
    sha = (result.get("data") or {}).get("sha256")
    for m in cfg.methods:
        why = item_problem(cfg, methods.get(m), m, sha)
        if why:
            out.append(f"{m}: {why}")
    for rel, entry in (result.get("manifest") or {}).items():
        if not isinstance(entry, dict):
            out.append(f"{rel}: manifest entry of an older format")
            continue
        if store.files(f"{trial_dir(k)}/{rel}") != entry.get("files"):
            out.append(f"{rel}: files differ from the manifest (missing, extra or resized)")
    if deep and not out:
        out += [f"{rel}: {msg}" for rel, msg in corrupt_artifacts(store, k, result)]
    return out


def corrupt_artifacts(store: Store, k: int, result: dict) -> list[tuple[str, str]]:
    """(artifact, what is wrong) for every manifest artifact that fails its checksums."""
    out = []
    for rel, entry in result["manifest"].items():
        full = f"{trial_dir(k)}/{rel}"
        try:
            if rel == "data.zarr":
                if load_data(store, k).info["sha256"] != entry["sha256"]:
                    raise CorruptArtifact("data differ from the manifest")
            elif rel.endswith(".zarr"):
                group, attrs = gram.open_gram(store.zarr_store(full, read_only=True))
                if attrs["sha256"] != entry["sha256"]:
                    raise CorruptArtifact("checksums differ from the manifest")
                for name in gram.ARRAYS:
                    gram.verify_array(group, name, attrs)
            elif hashlib.sha256(store.read_bytes(full)).hexdigest() != entry["sha256"]:
                raise CorruptArtifact("checksum mismatch")
        except Exception as e:  # noqa: BLE001 - whatever the reason, the artifact is bad
            out.append((rel, f"{type(e).__name__}: {e}"))
    return out


def quarantine(store: Store, k: int, result: dict, bad: list[str]) -> None:
    """Remove corrupted artifacts (trial-relative paths), the item records computed from them
    and result.json, so the next run recomputes exactly those (logged)."""
    base = trial_dir(k)
    for method, item in (result.get("methods") or {}).items():
        used = {item.get(field) for field, _ in ARTIFACT_FIELDS}
        if used & {f"{base}/{rel}" for rel in bad} or "data.zarr" in bad:
            store.remove(item_rel(k, method))
    for rel in bad:
        log.warning("removing corrupted %s/%s: the next run recomputes it", base, rel)
        store.remove(f"{base}/{rel}")
    store.remove(f"{base}/result.json")


def complete(
    cfg: Config, store: Store, k: int, deep: bool = False, quiet: bool = False
) -> dict | None:
    """Trial k's result when it is complete and intact for ``cfg`` (see :func:`problems`)."""
    result = load_result(store, k)
    if result is None:
        return None
    bad = problems(cfg, store, k, result, deep)
    if bad:
        if not quiet:
            log.warning("trial %d must be (partly) recomputed: %s", k, "; ".join(bad))
        return None
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
    d = load_data(store, k)
    return [kernel_item(cfg, store, k, name, scheduler, d) for name in cfg.gram_kernels]


# ---- leased steps: what a flow task (or run_trial) calls ----------------------------------------
REUSED, COMPUTED, ELSEWHERE = "reused", "ok", "finished by another run"


def lease_dir(k: int, part: str) -> str:
    return f"{trial_dir(k)}/lease/{part}"


def _kernels_done(cfg: Config, store: Store, k: int) -> bool:
    if complete(cfg, store, k, quiet=True) is not None:
        return True
    if not cfg.networks.enabled:
        return False
    sha = data_sha(store, k)
    return sha is not None and all(
        not item_problem(cfg, store.read_json(item_rel(k, m), verify=True), m, sha)
        for m in cfg.gram_kernels
    )


def kernel_part(
    cfg: Config, store: Store, k: int, versions: dict, scheduler="sync", on_wait=None
) -> str:
    """Data and every kernel of trial k under the trial's lease; finishes the trial when it
    has no networks. Returns REUSED, COMPUTED or ELSEWHERE (another run did it meanwhile);
    ``on_wait(message)`` is called when the trial is running elsewhere and waited for."""
    if complete(cfg, store, k) is not None:
        return REUSED
    held = lease.acquire_or_wait(
        store,
        lease_dir(k, "trial"),
        cfg.compute.lease_seconds,
        done=lambda: _kernels_done(cfg, store, k),
        what=f"trial-{k:03d}",
        on_wait=on_wait,
    )
    if held is None:
        return ELSEWHERE
    with held:
        if _kernels_done(cfg, store, k):  # finished by the holder we waited for
            return ELSEWHERE
        items = run_kernels(cfg, store, k, scheduler)
        if not cfg.networks.enabled:  # no network tasks follow: the trial ends here
            finish(cfg, store, k, items, versions)
    return COMPUTED


def network_part(
    cfg: Config,
    store: Store,
    k: int,
    depth: int,
    device: str = "cpu",
    on_wait=None,
    progress=None,
    width: int | None = None,
) -> dict:
    """One network of trial k under its own lease (waits for a live holder elsewhere);
    ``width`` and ``progress`` as in :func:`network_item`."""
    name = network_spec(cfg, depth, width).name

    def done():
        return reusable_item(cfg, store, k, name, data_sha(store, k))

    record = done()
    if record is not None:
        return record
    held = lease.acquire_or_wait(
        store,
        lease_dir(k, name),
        cfg.compute.lease_seconds,
        done,
        f"trial-{k:03d}/{name}",
        on_wait=on_wait,
    )
    if held is None:
        return done()
    with held:
        return network_item(cfg, store, k, depth, device, width, progress)


def finish_part(cfg: Config, store: Store, k: int, versions: dict) -> str:
    """Assemble result.json from the stored item records (after the network tasks)."""
    if complete(cfg, store, k) is not None:
        return REUSED
    sha = data_sha(store, k)
    items = [reusable_item(cfg, store, k, m, sha) for m in cfg.methods]
    missing = [m for m, it in zip(cfg.methods, items, strict=True) if it is None]
    if missing:
        raise CorruptArtifact(f"trial {k}: no valid record for {missing}")
    finish(cfg, store, k, items, versions)
    return COMPUTED


def run_trial(
    cfg: Config,
    store: Store,
    k: int,
    versions: dict | None = None,
    device: str = "cpu",
    scheduler="sync",
) -> dict:
    """All of trial k in one process (the flow runs the same steps as separate tasks)."""
    with recording_errors(store, k):
        kernel_part(cfg, store, k, versions or {}, scheduler)
        for s in network_specs(cfg):
            network_part(cfg, store, k, s.depth, device, width=s.width)
            theory_item(cfg, store, k, s.depth, s.width)
        if cfg.networks.enabled:
            finish_part(cfg, store, k, versions or {})
    return load_result(store, k)


def _plain(d: dict) -> dict:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in d.items()}

"""The network item: one trained network of a trial (docs/formulas.md, "Networks"), with its
initial empirical NTK (stored before training, for the theory) and the lazy-training diagnostics
(docs/theory.md)."""

from __future__ import annotations

import hashlib
import io
import time
from typing import NamedTuple

import numpy as np

from ntkflow import krr
from ntkflow.gram import CorruptArtifact
from ntkflow.names import network_spec
from ntkflow.seeds import net_seed, ntk_subsample_seed
from ntkflow.trial.context import Trial
from ntkflow.trial.items import RecordItem, failed_record, log, producer

_MEMO: dict = {}  # see memo()
MEMO_SIZE = 8


def memo(key: tuple, make):
    """``make()``, kept for the next call with the same ``key`` in this process (the oldest of
    MEMO_SIZE dropped). The networks of a sweep's grid points often share what the theory needs
    from their initialisation (the initial network of an lr sweep, the analytic kernel of every
    point): each is computed once per worker process instead of once per grid point. Keys name
    everything the value depends on."""
    if key not in _MEMO:
        if len(_MEMO) >= MEMO_SIZE:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[key] = make()
    return _MEMO[key]


def write_npz(t: Trial, rel: str, **arrays) -> str:
    """Write arrays as one .npz (one atomic write); returns its SHA-256."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    t.store.write_bytes(rel, buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


@producer("network")
class NetworkItem(RecordItem):
    """Trial k's network ``spec`` (``NN<L>``, ``NN<L>@w<W>`` or ``NN<L>@lr=0.02`` in a sweep),
    trained on ``t.device``, with its empirical NTK before and after training. A network whose
    loss diverges gets a failed record (deterministic for its seed), which fails only its own
    methods. ``progress(epoch, row)`` follows training."""

    kind = "network"

    def __init__(self, t: Trial, spec, progress=None):
        super().__init__(t)
        if not hasattr(spec, "epochs"):  # a parsed method name
            spec = network_spec(t.cfg, spec.network)
        self.spec, self.progress = spec, progress
        self.methods = [spec.name]
        self.lease = spec.name

    def section(self, method=None) -> dict:
        """The networks section less what names other networks (depths, epochs, the sweep) or
        does not change results (log_every), with this network's own settings (the key of a
        network outside a sweep is what it always was)."""
        s = self.spec
        skip = {"enabled", "depths", "epochs", "log_every", "vary", "keep_t"}
        return {
            **self.cfg.networks.model_dump(mode="json", exclude=skip),
            **{k: s.setting(k) for k in ("width", "lr", "batch_size", "parameterization")},
            "depth": s.depth,
            "epochs": s.epochs,
        }

    def make(self) -> list[dict]:
        from ntkflow.train import TrainingDiverged, train_network

        t, d, s, name = self.t, self.t.data, self.spec, self.spec.name
        net = initial_network(t, s, t.device)
        t_init = time.perf_counter()
        ntk0 = store_initial_ntk(t, name, net)
        seconds_ntk = time.perf_counter() - t_init
        try:
            res = train_network(
                net,
                d.x[d.fit],
                d.y[d.fit],
                d.x[d.val],
                d.y[d.val],
                d.x[d.test],
                epochs=s.epochs,
                batch_size=s.batch_size,
                lr=s.lr,
                seed=net_seed(self.cfg, t.k, s.depth),
                log_every=self.cfg.networks.log_every,
                progress=self.progress,
            )
        except TrainingDiverged as exc:
            return [failed_record(name, exc, **ntk0.record)]
        t_diag = time.perf_counter()
        ntk_t, ntk_t_record = store_final_ntk(t, name, net)
        diagnostics = lazy_diagnostics(t, s, ntk0.ntk, ntk_t)
        seconds_ntk += time.perf_counter() - t_diag
        curve = t.net_path(name, "_curve.json")
        t.store.write_json(curve, {k_: v.tolist() for k_, v in res.curve.items()})
        predictions = t.net_path(name)
        npz_sha = write_npz(
            t,
            predictions,
            **{f"f0_{p}": v for p, v in res.f0.items()},
            **{f"pred_{p}": v for p, v in res.pred.items()},
        )
        record = {
            "method": name,
            "rmse": krr.rmse(res.pred["test"], d.y[d.test]),
            "rmse_f0": krr.rmse(res.f0["test"], d.y[d.test]),
            "final_train_loss": float(res.curve["train_loss"][-1]),
            "final_val_loss": float(res.curve["val_loss"][-1]),
            "epochs": res.epochs_run,
            "linearized_time": s.t,  # t = 2ηE/B (docs/theory.md)
            "norms_init": res.norms_init,
            "norms_final": res.norms_final,
            "param_rel_change": res.param_rel_change,
            "seconds_train": res.seconds,
            "steps_per_second": res.steps_per_second,
            "device": res.device,
            "curve": curve,
            "predictions": predictions,
            "predictions_sha256": npz_sha,
            **ntk0.record,
            **ntk_t_record,
            **diagnostics,
            "seconds_ntk": seconds_ntk,
        }
        return [record]


def initial_network(t: Trial, spec, device: str = "cpu"):
    """Trial k's network ``spec`` at initialisation (deterministic from the trial seed)."""
    import torch

    from ntkflow.nets import build_network

    n = t.cfg.networks
    return build_network(
        t.cfg.data.d_in,
        spec.depth,
        spec.width,
        spec.parameterization,
        seed=net_seed(t.cfg, t.k, spec.depth),
        dtype=getattr(torch, n.dtype),
        device=device,
    )


class InitialNTK(NamedTuple):
    """Θ̂₀(fit ⊕ test, fit) of the initial network (float64; fit rows first) and its f₀."""

    ntk: np.ndarray
    f0_fit: np.ndarray
    f0_test: np.ndarray
    record: dict  # where it is stored, with its SHA-256


def network_ntk(t: Trial, net) -> np.ndarray:
    """The network's empirical NTK Θ̂(fit ⊕ test, fit), float64, fit rows first: per-layer
    factors of a float64 copy of the network (no Jacobians); only the columns of fit points."""
    from ntkflow.empirical import empirical_ntk

    d = t.data
    return empirical_ntk(net, d.x[np.concatenate([d.fit, d.test])], d.x[d.fit])


def store_initial_ntk(t: Trial, name: str, net) -> InitialNTK:
    """Compute the initial network's empirical NTK and f₀ and store them (``nets/<NN>_ntk0.npz``);
    f₀ is the network's own output in its own dtype, the f₀ its training starts from."""
    import torch

    d = t.data
    rows = np.concatenate([d.fit, d.test])
    nf = len(d.fit)
    p = net.layers[0].weight

    def compute():
        with torch.no_grad():
            x = torch.as_tensor(d.x[rows]).to(dtype=p.dtype, device=p.device)
            f0 = net(x).reshape(-1).double().cpu().numpy()
        return network_ntk(t, net), f0

    # the initial network is determined by these (grid points of an lr sweep share it)
    init = (net.depth, p.shape[0], net.parameterization, str(p.dtype), str(p.device))
    ntk, f0 = memo(("ntk0", t.store.url, t.k, t.data_sha, *init), compute)
    rel = t.net_path(name, "_ntk0.npz")
    sha = write_npz(t, rel, ntk=ntk, f0_fit=f0[:nf], f0_test=f0[nf:])
    return InitialNTK(ntk, f0[:nf], f0[nf:], {"ntk0": rel, "ntk0_sha256": sha})


def store_final_ntk(t: Trial, name: str, net) -> tuple[np.ndarray, dict]:
    """The trained network's empirical NTK Θ̂_T, computed like Θ̂₀ and stored
    (``nets/<NN>_ntkT.npz``); returns it and the record fields naming it."""
    ntk = network_ntk(t, net)
    rel = t.net_path(name, "_ntkT.npz")
    return ntk, {"ntkT": rel, "ntkT_sha256": write_npz(t, rel, ntk=ntk)}


def load_final_ntk(t: Trial, record: dict) -> np.ndarray:
    """The trained network's stored Θ̂_T (it cannot be recomputed without retraining)."""
    raw = t.store.read_bytes(record["ntkT"])
    if hashlib.sha256(raw).hexdigest() != record.get("ntkT_sha256"):
        raise CorruptArtifact(f"{record['ntkT']} fails its checksum: `ntkflow verify` removes it")
    with np.load(io.BytesIO(raw)) as z:
        return z["ntk"]


def load_initial_ntk(t: Trial, spec, record: dict | None) -> InitialNTK:
    """The stored initial NTK if it verifies against the network's record, else recomputed from
    the seed (the initial network is rebuilt exactly) and stored again."""
    rel = t.net_path(spec.name, "_ntk0.npz")
    want = (record or {}).get("ntk0_sha256")
    if want is not None and t.store.exists(rel):
        raw = t.store.read_bytes(rel)
        if hashlib.sha256(raw).hexdigest() == want:
            with np.load(io.BytesIO(raw)) as z:
                return InitialNTK(z["ntk"], z["f0_fit"], z["f0_test"], {"ntk0": rel})
        log.warning("recomputing %s: fails its checksum", rel)
    return store_initial_ntk(t, spec.name, initial_network(t, spec))


def lazy_diagnostics(t: Trial, spec, ntk0: np.ndarray, ntk_t: np.ndarray) -> dict:
    """Lazy-training diagnostics (docs/theory.md) on a fixed subsample of fit points
    (Frobenius norms): kernel drift ‖Θ̂_T − Θ̂₀‖/‖Θ̂₀‖, and against the analytic NTK Θ of
    the network's family the init error ‖Θ̂₀ − Θ‖/‖Θ‖ and the final error ‖Θ̂_T − Θ‖/‖Θ‖
    (``ntk0``, ``ntk_t``: Θ̂(fit ⊕ test, fit))."""
    from ntkflow.kernels import kernel
    from ntkflow.linearized import fixed_subsample, relative_change
    from ntkflow.nets import HYPER_DEFAULTS  # the networks' (the config sets none)

    d, cfg = t.data, t.cfg
    sub = fixed_subsample(ntk_subsample_seed(cfg, t.k), len(d.fit), cfg.networks.ntk_subsample)
    theta0, theta_t = ntk0[np.ix_(sub, sub)], ntk_t[np.ix_(sub, sub)]
    out = {"ntk_subsample": len(sub), "ntk_drift": relative_change(theta_t, theta0)}
    if spec.kernel:
        hyper = HYPER_DEFAULTS[spec.parameterization]
        analytic = kernel(spec.kernel, formulas="exact", **hyper)(d.x[d.fit[sub]])
        out["ntk_init_error"] = relative_change(theta0, analytic)
        out["ntk_final_error"] = relative_change(theta_t, analytic)
    return out

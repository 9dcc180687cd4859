"""The network item: one trained network of a trial (SPEC §5), with its initial empirical NTK
(stored before training, for the theory) and the lazy-training diagnostics (SPEC §6)."""

from __future__ import annotations

import hashlib
import io
import time
from typing import NamedTuple

import numpy as np

from ntkflow import krr
from ntkflow.names import net_seed, network_spec, ntk_subsample_seed, theory_kernel
from ntkflow.trial.context import Trial
from ntkflow.trial.items import RecordItem, failed_record, log, producer


def write_npz(t: Trial, rel: str, **arrays) -> str:
    """Write arrays as one .npz (one atomic write); returns its SHA-256."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    t.store.write_bytes(rel, buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


@producer("network")
class NetworkItem(RecordItem):
    """Trial k's network ``spec`` (``NN<L>``, ``NN<L>@w<W>`` in a sweep), trained on
    ``t.device``. A network whose loss diverges gets a failed record (deterministic for its
    seed), which fails only its own methods. ``progress(epoch, row)`` follows training."""

    kind = "network"

    def __init__(self, t: Trial, spec, progress=None):
        super().__init__(t)
        if not hasattr(spec, "tag"):  # a parsed method name
            spec = network_spec(t.cfg, spec.depth, spec.width)
        self.spec, self.progress = spec, progress
        self.methods = [spec.name]
        self.lease = spec.name

    def section(self, method=None) -> dict:
        """The networks section less what names other networks (depths, epochs, widths) or
        does not change results (log_every), plus this network's depth, epochs and width."""
        n, s = self.cfg.networks, self.spec
        skip = {"enabled", "depths", "epochs", "log_every", "widths", "width"}
        return {
            **n.model_dump(mode="json", exclude=skip),
            "depth": s.depth,
            "epochs": n.epochs[n.depths.index(s.depth)] if s.depth in n.depths else None,
            "width": s.width,
        }

    def make(self) -> list[dict]:
        from ntkflow.train import TrainingDiverged, train_network

        t, d, n, name = self.t, self.t.data, self.cfg.networks, self.spec.name
        net = initial_network(t, self.spec, t.device)
        epochs = n.epochs[n.depths.index(self.spec.depth)]
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
                epochs=epochs,
                batch_size=n.batch_size,
                lr=n.lr,
                seed=net_seed(self.cfg, t.k, self.spec.depth),
                log_every=n.log_every,
                progress=self.progress,
            )
        except TrainingDiverged as exc:
            return [failed_record(name, exc, **ntk0.record)]
        t_diag = time.perf_counter()
        diagnostics = lazy_diagnostics(t, net, ntk0)
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
            "linearized_time": 2 * n.lr * res.epochs_run / n.batch_size,  # SPEC §6: t = 2ηE/B
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
        n.parameterization,
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


def store_initial_ntk(t: Trial, name: str, net) -> InitialNTK:
    """Compute the initial network's empirical NTK and f₀ and store them (``nets/<NN>_ntk0.npz``).

    The NTK comes from per-layer factors of a float64 copy of the network (no Jacobians); f₀ is
    the network's own output in its own dtype, the f₀ its training starts from.
    """
    import torch

    from ntkflow.nets import empirical_ntk

    d = t.data
    rows = np.concatenate([d.fit, d.test])
    nf = len(d.fit)
    ntk = empirical_ntk(net, d.x[rows])[:, :nf]  # features once for all rows
    p = net.layers[0].weight
    with torch.no_grad():
        f0 = net(torch.as_tensor(d.x[rows]).to(dtype=p.dtype, device=p.device)).reshape(-1).double()
    f0 = f0.cpu().numpy()
    rel = t.net_path(name, "_ntk0.npz")
    sha = write_npz(t, rel, ntk=ntk, f0_fit=f0[:nf], f0_test=f0[nf:])
    return InitialNTK(ntk, f0[:nf], f0[nf:], {"ntk0": rel, "ntk0_sha256": sha})


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


def lazy_diagnostics(t: Trial, net, init: InitialNTK) -> dict:
    """SPEC §6 on a fixed subsample of fit points: kernel drift ‖Θ̂_T − Θ̂₀‖/‖Θ̂₀‖ of the trained
    ``net`` and init error ‖Θ̂₀ − Θ‖/‖Θ‖ against the analytic NTK of its family (Frobenius)."""
    from ntkflow.kernels import kernel
    from ntkflow.linearized import fixed_subsample, relative_change
    from ntkflow.nets import empirical_ntk

    d, cfg = t.data, t.cfg
    sub = fixed_subsample(ntk_subsample_seed(cfg, t.k), len(d.fit), cfg.networks.ntk_subsample)
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

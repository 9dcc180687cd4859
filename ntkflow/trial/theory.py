"""The theory items: the linearized predictors of one trained network (docs/theory.md).

LIN<L>: gradient flow to the network's t = 2ηE/B with the analytic NTK of its family and its own
f₀; -emp: the same with the empirical NTK at initialisation; -inf: t → ∞ (analytic, with f₀);
-sgd: the network's own SGD steps applied to the linear model with the empirical NTK; -after: the
flow to t with the empirical NTK of the trained network (its final kernel). Each record
has the test RMSE and the RMSE between its and the network's test predictions, and the RMSE to
the predictor it differs from in one respect (-emp vs LIN: finite width; -sgd vs -emp: SGD steps
vs gradient flow; -inf vs LIN: the time limit; -after vs -emp: the kernel's change). A variant
that diverges (or a network that did) fails only its own method.
"""

from __future__ import annotations

import hashlib
import io
import math
import time

import numpy as np

from ntkflow import gram, krr
from ntkflow.gram import CorruptArtifact
from ntkflow.names import REFERENCE_OF, THEORY_VARIANTS, network_spec, parse_method
from ntkflow.seeds import net_seed
from ntkflow.trial.context import Trial
from ntkflow.trial.items import RecordItem, failed_record, log, producer
from ntkflow.trial.network import (
    NetworkItem,
    load_final_ntk,
    load_initial_ntk,
    memo,
    write_npz,
)


class TheoryItem(RecordItem):
    """LIN<L>[-emp|-inf|-sgd][<TAG>] of the network ``spec``; needs its trained record."""

    kind = "linearized"
    variants = tuple(v for v in THEORY_VARIANTS if v != "-after")

    def __init__(self, t: Trial, spec):
        super().__init__(t)
        if not hasattr(spec, "epochs"):  # a parsed method name
            spec = network_spec(t.cfg, spec.network)
        self.spec = spec
        self.network = NetworkItem(t, spec)
        self.methods = [spec.theory_method(v) for v in self.variants]
        self.methods = [m for m in self.methods if m in spec.theory_methods()]
        self.lease = spec.theory_method("")  # LIN-after shares it (computed in the same step)

    def section(self, method: str | None = None) -> dict:
        """The network's key, the variant and the formulas."""
        variant = parse_method(method).variant if method else ""
        theory = {"network": self.network.key(), "variant": variant}
        return {**theory, "formulas": self.cfg.formulas}

    def trained(self) -> dict:
        nn = self.network.record(self.spec.name)
        if nn is None:
            raise RuntimeError(f"trial {self.t.k}: {self.spec.name} has no record; train it first")
        return nn

    def make(self) -> list[dict]:
        t_start = time.perf_counter()
        nn = self.trained()
        init = load_initial_ntk(self.t, self.spec, nn)
        preds, errors = predictions(self.t, self.spec, init)
        return self.records(nn, preds, errors, t_start)

    def records(self, nn: dict, preds: dict, errors: dict, t_start: float) -> list[dict]:
        """The records of this item's variants from their test predictions (stored in one
        file) and the errors of those that failed."""
        t, spec = self.t, self.spec
        nn_pred = None
        if nn.get("status", "ok") == "ok":
            with np.load(io.BytesIO(t.store.read_bytes(nn["predictions"]))) as z:
                nn_pred = z["pred_test"]
        mine = [v for v in self.variants if spec.theory_method(v) in self.methods]
        path = t.net_path(spec.theory_method(self.variants[0]))
        pred_sha = write_npz(t, path, **{f"pred_test{v}": preds[v] for v in mine if v in preds})
        seconds = time.perf_counter() - t_start
        kernels = {v: "empirical" for v in ("-emp", "-sgd")} | {"-after": "empirical-final"}
        kernels |= {"": spec.kernel, "-inf": spec.kernel}
        out = []
        for v in mine:
            m = spec.theory_method(v)
            if v not in preds:
                out.append(failed_record(m, errors[v], network=spec.name))
                continue
            gap = krr.rmse(preds[v], nn_pred) if nn_pred is not None else None
            rec = {
                "method": m,
                "network": spec.name,
                "variant": v.lstrip("-") or "flow",
                "ntk": kernels[v],
                "t": math.inf if v == "-inf" else spec.t,
                "rmse": krr.rmse(preds[v], t.data.y[t.data.test]),
                "rmse_vs_network": gap,
                "rel_rmse_vs_network": gap / nn["rmse"] if gap is not None else None,
                "reference": None,
                "rmse_vs_reference": None,
                "predictions": path,
                "predictions_sha256": pred_sha,
                "seconds_theory": seconds,
            }
            ref = REFERENCE_OF.get(v)
            if ref is not None and ref in preds:
                rec["reference"] = spec.theory_method(ref)
                rec["rmse_vs_reference"] = krr.rmse(preds[v], preds[ref])
            out.append(rec)
        return out


class AfterItem(TheoryItem):
    """LIN<L>-after[<TAG>]: the flow to t from f₀ with the trained network's empirical NTK Θ̂_T
    (stored by the network item), compared with LIN-emp (the initial one). Its own item, so
    the other predictors of a network trained before it existed are reused as they are; such
    a network has no Θ̂_T, and this method fails naming why."""

    variants = ("-after",)

    def make(self) -> list[dict]:
        t_start = time.perf_counter()
        nn = self.trained()
        init = load_initial_ntk(self.t, self.spec, nn)
        preds, errors = {}, {}
        if "ntkT" in nn:
            preds = after_predictions(self.t, self.spec, init, load_final_ntk(self.t, nn))
        else:
            errors["-after"] = RuntimeError(
                f"{self.spec.name} has no stored trained kernel Θ̂_T (its training failed, or "
                f"it was trained by an older version: remove {self.t.item_path(self.spec.name)} "
                "to retrain it)"
            )
        return self.records(nn, preds, errors, t_start)


@producer("linearized")
def theory_item(t: Trial, method) -> TheoryItem:
    """The item producing a LIN method (LIN-after has its own)."""
    return (AfterItem if method.variant == "-after" else TheoryItem)(t, method)


def after_predictions(t: Trial, spec, init, final: np.ndarray) -> dict:
    """LIN-after and LIN-emp test predictions: the same flow to t from the same f₀ with the
    final and the initial empirical NTK (Θ̂(fit ⊕ test, fit) each)."""
    from ntkflow.linearized import GradientFlow

    d, nf = t.data, len(t.data.fit)
    f0 = (d.y[d.fit], init.f0_fit, init.f0_test)
    after = GradientFlow(final[:nf], final[nf:]).predict(spec.t, *f0)
    return {"-after": after, "-emp": initial_flow(t, init).predict(spec.t, *f0)}


def initial_flow(t: Trial, init):
    """The gradient flow with the initial empirical NTK (one eigendecomposition, shared by the
    grid points whose networks start alike, and by LIN-emp and LIN-after's reference)."""
    from ntkflow.linearized import GradientFlow

    nf = len(t.data.fit)
    digest = hashlib.sha256(np.ascontiguousarray(init.ntk).data).hexdigest()
    key = ("flow0", t.store.url, t.k, t.data_sha, init.ntk.shape, digest)
    return memo(key, lambda: GradientFlow(init.ntk[:nf], init.ntk[nf:]))


def predictions(t: Trial, spec, init) -> tuple[dict, dict]:
    """Test predictions of each variant but -after (key "", "-emp", ...) of the network
    ``spec`` from its initial NTK and f₀ (``init``), and the error of each that diverged."""
    from ntkflow.linearized import GradientFlow, LinearizedDiverged, sgd_replay
    from ntkflow.train import epoch_permutations

    d, nf, time_t = t.data, len(t.data.fit), spec.t
    f0 = (d.y[d.fit], init.f0_fit, init.f0_test)
    emp_fit, emp_test = init.ntk[:nf], init.ntk[nf:]
    preds, errors = {}, {}
    if spec.kernel:  # one eigh per trial and kernel serves every t and grid point
        key = ("flow", t.store.url, t.k, t.data_sha, spec.kernel)
        flow = memo(key, lambda: GradientFlow(*analytic_ntk(t, spec.kernel)))
        preds[""], preds["-inf"] = flow.predict(time_t, *f0), flow.predict(math.inf, *f0)
    preds["-emp"] = initial_flow(t, init).predict(time_t, *f0)
    try:
        perms = epoch_permutations(net_seed(t.cfg, t.k, spec.depth), nf, spec.epochs)
        preds["-sgd"] = sgd_replay(
            emp_fit, emp_test, *f0, perms, batch_size=spec.batch_size, lr=spec.lr
        ).eval
    except LinearizedDiverged as exc:
        errors["-sgd"] = exc
    return preds, errors


def analytic_ntk(t: Trial, name: str):
    """Θ(fit, fit) and Θ(test, fit) of the exact kernel ``name``: slices of the trial's stored
    Gram (fit = leading train rows), shared by every width; evaluated here when the run's Grams
    are of the published variant or the stored one is unusable."""
    d, nf = t.data, len(t.data.fit)
    if t.cfg.formulas == "exact" and name in t.cfg.gram_kernels:
        zrel = t.gram_path(name)
        try:
            k_train, k_test, _ = gram.read_gram(t.store.zarr_store(zrel, read_only=True))
            return k_train[:nf, :nf], k_test[:, :nf]
        except CorruptArtifact as e:
            log.warning("evaluating %s in memory: %s", name, e)
    from ntkflow.kernels import kernel

    k_all = kernel(name, formulas="exact")(np.concatenate([d.x[d.fit], d.x[d.test]]), d.x[d.fit])
    return k_all[:nf], k_all[nf:]

"""The theory item: the linearized predictors of one trained network (SPEC §6).

LIN<L>: gradient flow to the network's t = 2ηE/B with the analytic NTK of its family and its own
f₀; -emp: the same with the empirical NTK at initialisation; -inf: t → ∞ (analytic, with f₀);
-sgd: the network's own SGD steps applied to the linear model with the empirical NTK. Each record
has the test RMSE and the RMSE between its and the network's test predictions, and the RMSE to
the predictor it differs from in one respect (-emp vs LIN: finite width; -sgd vs -emp: SGD steps
vs gradient flow; -inf vs LIN: the time limit). A variant that diverges (or a network that did)
fails only its own method.
"""

from __future__ import annotations

import io
import math
import time

import numpy as np

from ntkflow import gram, krr
from ntkflow.gram import CorruptArtifact
from ntkflow.names import (
    REFERENCE_OF,
    THEORY_VARIANTS,
    net_seed,
    network_spec,
    parse_method,
    theory_kernel,
)
from ntkflow.trial.context import Trial
from ntkflow.trial.items import RecordItem, failed_record, log, producer
from ntkflow.trial.network import NetworkItem, load_initial_ntk, write_npz


@producer("linearized")
class TheoryItem(RecordItem):
    """LIN<L>[-emp|-inf|-sgd][@w<W>] of the network ``spec``; needs its trained record."""

    kind = "linearized"

    def __init__(self, t: Trial, spec):
        super().__init__(t)
        if not hasattr(spec, "tag"):  # a parsed method name
            spec = network_spec(t.cfg, spec.depth, spec.width)
        self.spec = spec
        self.network = NetworkItem(t, spec)
        self.methods = spec.theory_methods(t.cfg.networks.parameterization)
        self.lease = spec.theory_method("")

    def section(self, method: str | None = None) -> dict:
        """The network's key, the variant and the formulas."""
        variant = parse_method(method).variant if method else ""
        theory = {"network": self.network.key(), "variant": variant}
        return {**theory, "formulas": self.cfg.formulas}

    def make(self) -> list[dict]:
        from ntkflow.linearized import GradientFlow, LinearizedDiverged, sgd_replay
        from ntkflow.train import epoch_permutations

        t, d, n, spec = self.t, self.t.data, self.cfg.networks, self.spec
        t_start = time.perf_counter()
        nn = self.network.record(spec.name)
        if nn is None:
            raise RuntimeError(f"trial {t.k}: {spec.name} has no record; train it first")
        init = load_initial_ntk(t, spec, nn)
        epochs = n.epochs[n.depths.index(spec.depth)]
        time_t = 2 * n.lr * epochs / n.batch_size
        y_test, nf = d.y[d.test], len(d.fit)
        f0 = (d.y[d.fit], init.f0_fit, init.f0_test)
        emp_fit, emp_test = init.ntk[:nf], init.ntk[nf:]
        preds, errors, kernels = {}, {}, {}
        name = theory_kernel(n.parameterization, spec.depth)
        if name:
            flow = GradientFlow(*analytic_ntk(t, name))  # one eigh: every t
            preds[""], preds["-inf"] = flow.predict(time_t, *f0), flow.predict(math.inf, *f0)
            kernels[""] = kernels["-inf"] = name
        preds["-emp"] = GradientFlow(emp_fit, emp_test).predict(time_t, *f0)
        kernels["-emp"] = kernels["-sgd"] = "empirical"
        try:
            perms = epoch_permutations(net_seed(self.cfg, t.k, spec.depth), nf, epochs)
            preds["-sgd"] = sgd_replay(
                emp_fit, emp_test, *f0, perms, batch_size=n.batch_size, lr=n.lr
            ).eval
        except LinearizedDiverged as exc:
            errors["-sgd"] = exc
        nn_pred = None
        if nn.get("status", "ok") == "ok":
            with np.load(io.BytesIO(t.store.read_bytes(nn["predictions"]))) as z:
                nn_pred = z["pred_test"]
        base = t.net_path(spec.theory_method(""))
        pred_sha = write_npz(t, base, **{f"pred_test{v}": p for v, p in preds.items()})
        seconds = time.perf_counter() - t_start
        records = []
        for v in THEORY_VARIANTS:
            m = spec.theory_method(v)
            if m not in self.methods:
                continue
            if v in errors:
                records.append(failed_record(m, errors[v], network=spec.name))
                continue
            gap = krr.rmse(preds[v], nn_pred) if nn_pred is not None else None
            rec = {
                "method": m,
                "network": spec.name,
                "variant": v.lstrip("-") or "flow",
                "ntk": kernels[v],
                "t": math.inf if v == "-inf" else time_t,
                "rmse": krr.rmse(preds[v], y_test),
                "rmse_vs_network": gap,
                "rel_rmse_vs_network": gap / nn["rmse"] if gap is not None else None,
                "reference": None,
                "rmse_vs_reference": None,
                "predictions": base,
                "predictions_sha256": pred_sha,
                "seconds_theory": seconds,
            }
            ref = REFERENCE_OF.get(v)
            if ref is not None and ref in preds:
                rec["reference"] = spec.theory_method(ref)
                rec["rmse_vs_reference"] = krr.rmse(preds[v], preds[ref])
            records.append(rec)
        return records


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

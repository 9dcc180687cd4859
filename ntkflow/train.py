"""The paper's training protocol (docs/formulas.md): plain SGD on the mean squared error, batch 8.

Protocol, as in the paper's released (Keras) code:

- Keras-style validation split: the leading ``keras_split(n_train, 0.3)`` rows of the training
  arrays (in split order) are fit; the remaining rows are held out. Their loss is logged, never
  trained on, never used for stopping.
- Every epoch the fit rows are reshuffled (a permutation drawn from the trial seed, stream
  :data:`ntkflow.seeds.STREAM_SHUFFLE`) and cut into consecutive batches of ``batch_size``; the last
  batch is smaller when ``batch_size`` does not divide n_fit (468 = 58·8 + 4), as in Keras.
- Loss of a batch: mean over the batch of (f − y)² (no ½). Update: θ ← θ − lr ∇loss (no momentum,
  no weight decay). One epoch corresponds to linearized time t = 2·lr/batch_size (docs/theory.md).

The SGD step is written out by hand (:mod:`ntkflow.sgd`: no autograd graph, no optimizer). The
only host-device synchronisation is once per epoch, to test the epoch's loss for NaN/inf
(:class:`TrainingDiverged`), and at logged epochs.

Public API::

    keras_split(n_train, validation_split=0.3) -> int      # rows fit
    keras_validation_split(x, y, validation_split=0.3) -> (x_fit, y_fit, x_val, y_val)
    train_network(net, x_fit, y_fit, x_val, y_val, x_test, *, epochs, batch_size=8, lr=0.002,
                  seed, log_every=10, device=None, progress=None) -> TrainResult
    epoch_permutations(seed, n_fit, epochs) -> iterator of torch.Tensor   # the batch order
    batch_slices(n_fit, batch_size) -> list[slice]                         # batches of an epoch
    TrainingDiverged(RuntimeError)     # deterministic: do not retry
    set_torch_threads(n)               # for CPU worker processes

The network is trained in place. Its initial state can be rebuilt exactly with
``build_network(..., seed=same)`` (e.g. for the empirical NTK at initialisation).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ntkflow.empirical import layer_norms
from ntkflow.nets import FCNet
from ntkflow.seeds import STREAM_SHUFFLE, SeedLike, torch_generator
from ntkflow.sgd import sgd_step, step_plan
from ntkflow.split import keras_split


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite. Deterministic for a given seed: not retryable."""


@dataclass
class TrainResult:
    """What one training run returns (all plain Python/numpy, float64 where numeric).

    curve: arrays over the logged epochs (0 = initialisation, every ``log_every``, and the last):
        ``epoch``; ``train_loss`` and ``val_loss``, mean (f − y)² over all fit / held-out rows at
        the end of that epoch; ``sgd_loss``, the Keras-style running loss of that epoch (mean of
        the squared errors seen by its SGD steps; NaN at epoch 0).
    f0, pred: predictions at initialisation and after training, keys "fit", "val", "test".
    norms_init, norms_final: ‖(W_l, b_l)‖ per layer. param_rel_change: ‖θ_T − θ₀‖/‖θ₀‖ per layer.
    seconds: wall time of the whole call; steps_per_second: SGD steps / seconds of the epoch loop.
    """

    epochs_run: int
    steps: int
    n_fit: int
    n_val: int
    batch_size: int
    lr: float
    curve: dict[str, np.ndarray]
    f0: dict[str, np.ndarray]
    pred: dict[str, np.ndarray]
    norms_init: list[float]
    norms_final: list[float]
    param_rel_change: list[float]
    seconds: float
    steps_per_second: float
    device: str

    def to_dict(self) -> dict:
        """JSON-able copy (numpy arrays → lists)."""

        def plain(v):
            if isinstance(v, np.ndarray):
                return v.tolist()
            if isinstance(v, dict):
                return {k: plain(w) for k, w in v.items()}
            return v

        return {k: plain(v) for k, v in asdict(self).items()}


def keras_validation_split(x, y, validation_split: float = 0.3):
    """``(x_fit, y_fit, x_val, y_val)``: leading rows fit, trailing rows held out (as Keras)."""
    n_fit = keras_split(len(x), validation_split)
    return x[:n_fit], y[:n_fit], x[n_fit:], y[n_fit:]


def set_torch_threads(n: int) -> None:
    """Limit PyTorch's CPU threads (call early in each CPU worker process to avoid oversubscribing).

    The inter-op pool can only be sized before its first use; later calls keep its size.
    """
    torch.set_num_threads(int(n))
    try:
        torch.set_num_interop_threads(int(n))
    except RuntimeError:
        pass


def _as_tensor(a, like: torch.Tensor, column: bool = False) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a)
    t = t.to(dtype=like.dtype, device=like.device)
    return t.reshape(-1, 1) if column else t


def epoch_permutations(seed: SeedLike, n_fit: int, epochs: int) -> Iterator[torch.Tensor]:
    """The order in which :func:`train_network` visits the fit rows, one permutation per epoch.

    Drawn on the CPU from the seed's shuffle stream (:data:`ntkflow.seeds.STREAM_SHUFFLE`), so
    the same ``(seed, n_fit)`` gives the same batches on every device: the linearized SGD replay
    (:func:`ntkflow.linearized.sgd_replay`) regenerates the network's exact batch order from the
    seed instead of recording it.
    """
    gen = torch_generator(seed, STREAM_SHUFFLE)
    for _ in range(epochs):
        yield torch.randperm(n_fit, generator=gen)


def batch_slices(n_fit: int, batch_size: int) -> list[slice]:
    """Consecutive batches of a permuted epoch; the last one is smaller when batch_size ∤ n_fit."""
    return [slice(s, min(s + batch_size, n_fit)) for s in range(0, n_fit, batch_size)]


def _mse(net: FCNet, x: torch.Tensor, y: torch.Tensor) -> float:
    if x.shape[0] == 0:
        return math.nan
    return float(torch.mean(torch.square(net(x) - y)).double())


def _predict(net: FCNet, x: torch.Tensor) -> np.ndarray:
    if x.shape[0] == 0:
        return np.zeros(0)
    return net(x).reshape(-1).double().cpu().numpy()


def train_network(
    net: FCNet,
    x_fit,
    y_fit,
    x_val,
    y_val,
    x_test,
    *,
    epochs: int,
    batch_size: int = 8,
    lr: float = 0.002,
    seed: SeedLike,
    log_every: int = 10,
    device: str | torch.device | None = None,
    progress: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Train ``net`` in place by the paper's SGD protocol (module docstring) and report.

    Arrays are numpy or torch, (n, d_in) and (n,) or (n, 1); they are cast to the network's dtype
    and device. ``x_val``/``y_val`` may have 0 rows and ``x_test`` may be None. ``device=None``
    keeps the network where it is; otherwise it is moved there first. ``seed`` drives the batch
    shuffling only (the initialisation was drawn by ``build_network``). ``progress(epoch, row)`` is
    called at every logged epoch with that epoch's curve row.

    Raises TrainingDiverged as soon as an epoch's loss is NaN or infinite.
    """
    t_start = time.perf_counter()
    if not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    if batch_size < 1 or log_every < 1:
        raise ValueError(f"batch_size and log_every must be ≥ 1, got {batch_size}, {log_every}")
    if device is not None:
        net.to(device)
    like = net.layers[0].weight
    xf, yf = _as_tensor(x_fit, like), _as_tensor(y_fit, like, column=True)
    xv, yv = _as_tensor(x_val, like), _as_tensor(y_val, like, column=True)
    xt = _as_tensor(np.zeros((0, net.d_in)) if x_test is None else x_test, like)
    n_fit = xf.shape[0]
    if n_fit == 0 or yf.shape[0] != n_fit or yv.shape[0] != xv.shape[0]:
        raise ValueError(
            f"bad shapes: x_fit {tuple(xf.shape)}, y_fit {tuple(yf.shape)}, "
            f"x_val {tuple(xv.shape)}, y_val {tuple(yv.shape)}"
        )

    layers = list(net.layers)
    with torch.no_grad():
        theta0 = [(layer.weight.clone(), layer.bias.clone()) for layer in layers]
        norms_init = layer_norms(net)
        f0 = {"fit": _predict(net, xf), "val": _predict(net, xv), "test": _predict(net, xt)}

    rows: list[dict] = []

    def log(epoch: int, sgd_loss: float) -> None:
        row = {
            "epoch": epoch,
            "train_loss": _mse(net, xf, yf),
            "val_loss": _mse(net, xv, yv),
            "sgd_loss": sgd_loss,
        }
        if not math.isfinite(row["train_loss"]):
            raise TrainingDiverged(f"training diverged at epoch {epoch}: loss {row['train_loss']}")
        rows.append(row)
        if progress is not None:
            progress(epoch, row)

    batches = batch_slices(n_fit, batch_size)
    plan = step_plan(layers)
    sse = torch.zeros((1, 1), dtype=like.dtype, device=like.device)
    with torch.no_grad():
        log(0, math.nan)
        t_loop = time.perf_counter()
        for epoch, perm in enumerate(epoch_permutations(seed, n_fit, epochs), 1):
            perm = perm.to(like.device)
            xs, ys = xf[perm], yf[perm]  # one gather per epoch; batches are views
            sse.zero_()
            for b in batches:
                sgd_step(plan, xs[b], ys[b], lr, sse)
            sgd_loss = float(sse) / n_fit  # the one synchronisation per epoch
            if not math.isfinite(sgd_loss):
                raise TrainingDiverged(
                    f"training diverged at epoch {epoch} of {epochs}: mean batch loss {sgd_loss} "
                    f"(lr={lr}, batch_size={batch_size})"
                )
            if epoch % log_every == 0 or epoch == epochs:
                log(epoch, sgd_loss)
        loop_seconds = time.perf_counter() - t_loop

        pred = {"fit": _predict(net, xf), "val": _predict(net, xv), "test": _predict(net, xt)}
        norms_final = layer_norms(net)
        rel = []
        for layer, (w0, b0), n0 in zip(layers, theta0, norms_init, strict=True):
            dw = float((layer.weight - w0).double().square().sum())
            db = float((layer.bias - b0).double().square().sum())
            rel.append(math.sqrt(dw + db) / n0 if n0 > 0 else math.nan)
    del theta0

    steps = epochs * len(batches)
    curve = {
        k: np.array([r[k] for r in rows], dtype=np.int64 if k == "epoch" else np.float64)
        for k in ("epoch", "train_loss", "val_loss", "sgd_loss")
    }
    return TrainResult(
        epochs_run=epochs,
        steps=steps,
        n_fit=n_fit,
        n_val=int(xv.shape[0]),
        batch_size=batch_size,
        lr=lr,
        curve=curve,
        f0=f0,
        pred=pred,
        norms_init=norms_init,
        norms_final=norms_final,
        param_rel_change=rel,
        seconds=time.perf_counter() - t_start,
        steps_per_second=steps / loop_seconds if loop_seconds > 0 else math.nan,
        device=str(like.device),
    )

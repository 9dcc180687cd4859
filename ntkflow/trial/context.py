"""One trial against the store: its paths, its data (loaded and verified once), its config, its
lease holdings and its fault hook. Every step of a trial receives one :class:`Trial`.

Layout under ``trials/<kkk>/`` (ARCHITECTURE.md "Store layout"):

    data.zarr            x, y, train, test, fit (row indices)
    gram/<KERNEL>.zarr   train_train, test_train
    items/<METHOD>.json  one verified record per method (rmse + diagnostics), written atomically
    nets/<NN>.npz        f₀ and final predictions; nets/<NN>_curve.json the training curve
    nets/<NN>_ntk0.npz   the initial network's empirical NTK Θ̂₀(fit ⊕ test, fit) and f₀
    nets/LIN<L>.npz      the linearized predictions (docs/theory.md) of that network, per variant
    lease/<PART>/        leases: ``trial`` (data, Grams, kernels, result), ``NN<L>``, ``LIN<L>``
    result.json          all items of the trial; written last, so its presence = trial complete
    error.json           the last failure's message (removed when the trial completes)
"""

from __future__ import annotations

import contextlib
import time
import traceback

from ntkflow import lease
from ntkflow.config import Config
from ntkflow.data import TrialData
from ntkflow.store import Store
from ntkflow.trial.groups import load_data, trial_dir


class InjectedFault(RuntimeError):
    """Raised by ``faults.fail_trials`` / ``faults.fail_networks`` (tests of rerun-failed-only)."""


def load_result(store: Store, k: int) -> dict | None:
    """Trial k's verified result.json, or None (missing, truncated or corrupted)."""
    return store.read_json(f"{trial_dir(k)}/result.json", verify=True)


def recorded_error(store: Store, k: int) -> str | None:
    """The last failure recorded in trial k's error.json, if any."""
    return (store.read_json(f"{trial_dir(k)}/error.json") or {}).get("error")


class Trial:
    """Trial ``k`` of the run ``cfg`` in ``store``; ``versions`` are the package versions a
    result records, ``device`` and ``scheduler`` where its networks and Grams are computed."""

    def __init__(
        self,
        cfg: Config,
        store: Store,
        k: int,
        versions: dict | None = None,
        device: str = "cpu",
        scheduler="sync",
    ):
        self.cfg, self.store, self.k = cfg, store, k
        self.versions = versions or {}
        self.device, self.scheduler = device, scheduler
        self.dir = trial_dir(k)
        self._data: TrialData | None = None
        self._held: set[str] = set()  # lease parts this process holds for the trial

    def __repr__(self) -> str:
        return f"Trial({self.k}, {self.store.url!r})"

    @property
    def name(self) -> str:
        return f"trial-{self.k:03d}"

    # ---- paths --------------------------------------------------------------------------------
    def path(self, rel: str) -> str:
        return f"{self.dir}/{rel}"

    def item_path(self, method: str) -> str:
        return self.path(f"items/{method}.json")

    def gram_path(self, kernel: str) -> str:
        return self.path(f"gram/{kernel}.zarr")

    def net_path(self, name: str, suffix: str = ".npz") -> str:
        return self.path(f"nets/{name}{suffix}")

    # ---- data -------------------------------------------------------------------------------
    @property
    def data(self) -> TrialData:
        """The trial's verified data, read once (CorruptArtifact if missing or altered)."""
        if self._data is None:
            self._data = load_data(self.store, self.k)
        return self._data

    @data.setter
    def data(self, value: TrialData | None) -> None:
        self._data = value

    @property
    def data_sha(self) -> str:
        return self.data.info["sha256"]

    # ---- leases -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def leased(self, part: str, done, on_wait=None):
        """Hold the trial's lease ``part`` (yield True), or learn that ``done()`` became true
        while another run held it (yield False). Re-entrant within this trial object."""
        if part in self._held:
            yield True
            return
        held = lease.acquire_or_wait(
            self.store,
            self.path(f"lease/{part}"),
            self.cfg.compute.lease_seconds,
            done,
            f"{self.name}/{part}",
            on_wait=on_wait,
        )
        if held is None:
            yield False
            return
        self._held.add(part)
        try:
            with held:
                yield True
        finally:
            self._held.discard(part)

    # ---- faults and errors --------------------------------------------------------------------
    def fault(self, network: str | None = None) -> None:
        """``faults.fail_trials`` (``network`` None) or ``faults.fail_networks``: raise
        InjectedFault here, only on the first attempt with ``faults.fail_once``."""
        f = self.cfg.faults
        if network is None:
            hit, marker, what = self.k in f.fail_trials, "fault-injected", "fail_trials"
        else:
            hit = f"{self.k}/{network}" in f.fail_networks
            marker, what = f"fault-injected-{network}", "fail_networks"
        if not hit or (f.fail_once and self.store.exists(self.path(marker))):
            return
        self.store.write_text(self.path(marker), "1")
        where = f"trial {self.k}" + (f", network {network}" if network else "")
        raise InjectedFault(f"injected fault in {where} (faults.{what})")

    @contextlib.contextmanager
    def recording_errors(self):
        """Write any failure of the trial's steps to its ``error.json`` (for the report)."""
        try:
            yield
        except Exception as exc:
            self.store.write_json(
                self.path("error.json"),
                {
                    "trial": self.k,
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": "".join(traceback.format_exception(exc))[-4000:],
                    "time": time.time(),
                },
            )
            raise

    def error(self) -> str | None:
        """The last recorded failure's message, if any."""
        return recorded_error(self.store, self.k)

    def result(self) -> dict | None:
        """The trial's verified result.json, or None."""
        return load_result(self.store, self.k)

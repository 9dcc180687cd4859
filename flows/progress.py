"""Progress of a run: trials done and failed, training epochs, the time left; the progress
artifact and log (Prefect), and the console's display of it (:mod:`flows.console`)."""

from __future__ import annotations

import threading
import time

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from flows import console
from flows.artifacts import artifact_key
from flows.workers import dask_client
from ntkflow.config import Config
from ntkflow.names import network_specs

PROGRESS_TOPIC = "ntkflow-progress"


def epoch_logger(k: int, name: str, epochs: int):
    """Training callback: log the losses and publish the epoch to the flow (Dask event)."""
    log = get_run_logger()

    def on_epoch(epoch: int, row: dict) -> None:
        log.info(
            "trial-%03d %s epoch %d/%d: train loss %.4g, val loss %.4g",
            k,
            name,
            epoch,
            epochs,
            row["train_loss"],
            row["val_loss"],
        )
        try:
            from distributed import get_worker

            get_worker().log_event(PROGRESS_TOPIC, {"trial": k, "net": name, "epoch": epoch})
        except ValueError:  # not on a Dask worker
            pass

    return on_epoch


class Tally:
    """A run's trials: done (those reused included), failed, running with their training epochs;
    the share of this run's work done and the time left. No Prefect here.

    A trial's share is its kernel step, each network's epochs and the steps after training
    (theory, result), equally weighted; a trial that ended (done or failed) counts whole. The
    time left is ``elapsed / share − elapsed``, so it moves with the epochs before the first
    trial ends. ``nets``: each network's epochs (empty: kernels only, a trial moves when it
    ends). Epochs arrive on another thread."""

    def __init__(self, total: int, todo: int, nets: dict[str, int], clock=time.monotonic):
        self.total, self.todo, self.nets, self.clock = total, todo, nets, clock
        self.ok, self.failed = total - todo, []
        self.kernels_done: set[int] = set()
        self.running: set[int] = set()  # trials with steps left (as the flow last said)
        self.epochs: dict[tuple[int, str], int] = {}  # (trial, network) -> last epoch
        self.lock = threading.Lock()
        self.start = clock()

    def epoch(self, k: int, net: str, epoch: int) -> None:
        with self.lock:
            self.epochs[k, net] = max(self.epochs.get((k, net), 0), epoch)

    def trial_fraction(self, k: int) -> float:
        nets = self.nets.items()
        if not nets:
            return 0.0
        with self.lock:
            parts = [1.0 if k in self.kernels_done else 0.0]
            parts += [min(1.0, self.epochs.get((k, n), 0) / max(e, 1)) for n, e in nets]
        return sum(parts) / (len(parts) + 1)  # + the steps after training, done as it ends

    def ended(self, k: int, ok: bool) -> None:
        with self.lock:
            self.running.discard(k)
        if ok:
            self.ok += 1
        else:
            self.failed.append(k)

    @property
    def finished(self) -> int:
        """Trials of this run that ended (done or failed)."""
        return self.ok - (self.total - self.todo) + len(self.failed)

    def fraction(self) -> float:
        """Share of this run's work done, 0..1 (1 with nothing to do)."""
        if not self.todo:
            return 1.0
        with self.lock:
            running = list(self.running)
        work = self.finished + sum(self.trial_fraction(k) for k in running)
        return min(1.0, work / self.todo)

    def elapsed(self) -> float:
        return self.clock() - self.start

    def eta(self) -> float | None:
        """Seconds left, from the share done so far (None before any)."""
        f = self.fraction()
        if f <= 0:
            return None
        return self.elapsed() * (1 - f) / f

    def value(self) -> float:
        """Percent of all the run's trials done (the progress artifact's value)."""
        with self.lock:
            running = list(self.running)
        share = self.ok + sum(self.trial_fraction(k) for k in running)
        return round(100.0 * share / self.total, 2)

    def counts(self) -> str:
        failed = f", {len(self.failed)} failed" if self.failed else ""
        return f"{self.ok}/{self.total} trials done{failed}"

    def trainings(self) -> list[tuple[int, dict[str, int]]]:
        """The running trials that have begun training: (trial, network -> last epoch)."""
        with self.lock:
            begun = {k for k, _ in self.epochs} | self.kernels_done
            return [
                (k, {n: self.epochs.get((k, n), 0) for n in self.nets})
                for k in sorted(self.running & begun)
            ]


class Progress:
    """The progress of the trials of one run: the progress artifact (UI), the flow's log
    (a line per trial) and the console's display (:func:`flows.console.display`)."""

    def __init__(self, cfg: Config, out: str, todo: list[int], log):
        from ntkflow.report import new_items
        from ntkflow.store import Store

        self.cfg, self.log = cfg, log
        nets = {s.name: s.epochs for s in network_specs(cfg)}
        self.tally = Tally(cfg.trials, len(todo), nets)
        self.kernels_done = self.tally.kernels_done
        store = Store(out)
        new = f" ({new_items(cfg, store, todo)} new items)" if todo else ""
        headline = f"run {cfg.run_id}: {cfg.trials} trial(s), {len(todo)} to compute{new}"
        log.info("%s, store %s", headline, store.url)
        self.display = console.display(self.tally, headline)
        self.id = create_progress_artifact(
            self.tally.value(), key=artifact_key("progress", cfg, out), description=self.describe()
        )
        self.shown = (self.tally.value(), self.describe())
        self.updated = time.monotonic()

    def describe(self) -> str:
        return f"{self.tally.counts()} (run {self.cfg.run_id})"

    def follow_epochs(self) -> None:
        """Receive the training tasks' epoch events (pushed by the scheduler as they come)."""
        try:
            dask_client().subscribe_topic(PROGRESS_TOPIC, self._on_epoch)
        except ValueError:  # no Dask client: progress moves with trials only
            pass

    def _on_epoch(self, event) -> None:
        msg = event[1]
        self.tally.epoch(msg["trial"], msg["net"], msg["epoch"])

    def trial_ended(self, k: int, ok: bool, error: str | None = None) -> None:
        self.tally.ended(k, ok)
        if ok:
            eta = console.duration(self.tally.eta() or 0.0)
            self.log.info("trial-%03d done [%s, ETA %s]", k, self.describe(), eta)
        else:
            self.log.error("trial-%03d FAILED [%s]: %s", k, self.describe(), error)
        self.display.trial_ended(k, ok, error)

    def update(self, running=None) -> None:
        """``running``: the trials with steps left (as steps end, and every second); None:
        the trials ended. The artifact is updated at most once a second, and at the end."""
        if running is None:
            with self.tally.lock:
                self.tally.running.clear()
            self.display.close()
        else:
            with self.tally.lock:
                self.tally.running = set(running)
            self.display.tick()
            if time.monotonic() - self.updated < 1.0:
                return
        shown = (self.tally.value(), self.describe())
        if shown != self.shown:
            update_progress_artifact(self.id, shown[0], description=shown[1])
            self.shown = shown
        self.updated = time.monotonic()

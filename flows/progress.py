"""Progress of a run: trials done and failed, training epochs; the progress artifact and log."""

from __future__ import annotations

import time

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

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


class Progress:
    """Trials done, failed and running, with training epochs: the progress artifact and log."""

    def __init__(self, cfg: Config, out: str, reused: int, log):
        self.cfg, self.log, self.total = cfg, log, cfg.trials
        self.ok, self.failed, self.kernels_done = reused, [], set()
        self.epochs: dict[tuple[int, str], int] = {}  # (trial, network) -> last epoch
        self.start = time.monotonic()
        self.todo = cfg.trials - reused
        self.id = create_progress_artifact(
            self.value(), key=artifact_key("progress", cfg, out), description=self.describe()
        )
        self.shown = (self.value(), self.describe())

    def trial_fraction(self, k: int) -> float:
        """Share of trial k done: its kernel step and each network's epochs, equally weighted."""
        n = self.cfg.networks
        if not n.enabled:
            return 0.0
        parts = [1.0 if k in self.kernels_done else 0.0]
        parts += [self.epochs.get((k, s.name), 0) / s.epochs for s in network_specs(self.cfg)]
        return sum(parts) / len(parts)

    def value(self, running=()) -> float:
        share = self.ok + sum(self.trial_fraction(k) for k in running)
        return round(100.0 * share / self.total, 2)

    def describe(self) -> str:
        failed = f", {len(self.failed)} failed" if self.failed else ""
        return f"{self.ok}/{self.total} trials done{failed} (run {self.cfg.run_id})"

    def follow_epochs(self) -> None:
        """Receive the training tasks' epoch events (pushed by the scheduler as they come)."""
        try:
            dask_client().subscribe_topic(PROGRESS_TOPIC, self._on_epoch)
        except ValueError:  # no Dask client: progress moves with trials only
            pass

    def _on_epoch(self, event) -> None:
        msg = event[1]
        key = (msg["trial"], msg["net"])
        self.epochs[key] = max(self.epochs.get(key, 0), msg["epoch"])

    def trial_ended(self, k: int, ok: bool, error: str | None = None) -> None:
        finished = self.ok + len(self.failed) + 1 - (self.total - self.todo)
        if ok:
            self.ok += 1
            eta = (time.monotonic() - self.start) / finished * (self.todo - finished)
            self.log.info("trial-%03d done [%s, ETA %.0f s]", k, self.describe(), eta)
        else:
            self.failed.append(k)
            self.log.error("trial-%03d FAILED [%s]: %s", k, self.describe(), error)

    def update(self, running=()) -> None:
        shown = (self.value(running), self.describe())
        if shown != self.shown:
            update_progress_artifact(self.id, shown[0], description=shown[1])
            self.shown = shown

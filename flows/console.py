"""What the ``ntkflow`` command prints: which logs reach the console (:func:`configure_logging`),
a run's progress (:func:`display`: live on a terminal, a few lines elsewhere), and at the end of a
run, a report or a rerun the results table, the verdict, failures, the run folder and, with a
real Prefect server, the UI URLs (:func:`print_summary`)."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

LOGGING_CONFIG = Path(__file__).with_name("logging.yml")
# handler levels of flows/logging.yml, set to NOTSET by -v (Prefect reads PREFECT_LOGGING_* keys)
VERBOSE_ENV = (
    "PREFECT_LOGGING_HANDLERS_RUN_CONSOLE_LEVEL",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL",
)
# whether run logs reach the console (no live display then); the variables -v set
state = {"logs_on_console": True, "set": set()}


def configure_logging(verbose: bool) -> None:
    """Flow and task run logs go to the Prefect API, and to the console only with ``verbose``
    (flows/logging.yml), in this process and in the workers it starts (they inherit its
    environment; workers started elsewhere keep Prefect's own config). A logging config of
    the user's (PREFECT_LOGGING_SETTINGS_PATH, or logging.yml in the Prefect home) is left as
    it is. Call before Prefect is imported, or it is applied again here."""
    home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    ours = str(LOGGING_CONFIG)
    if (
        os.environ.get("PREFECT_LOGGING_SETTINGS_PATH", ours) != ours
        or (home / "logging.yml").exists()
    ):
        state["logs_on_console"] = True
        return
    os.environ["PREFECT_LOGGING_SETTINGS_PATH"] = str(LOGGING_CONFIG)
    for name in VERBOSE_ENV:
        if verbose:
            os.environ[name] = "NOTSET"
            state["set"].add(name)
        elif name in state["set"]:  # an earlier command of this process set it
            os.environ.pop(name, None)
            state["set"].discard(name)
    state["logs_on_console"] = verbose
    if "prefect.logging.configuration" in sys.modules:  # Prefect was set up with another config
        import logging.config

        from prefect.logging.configuration import load_logging_config

        logging.config.dictConfig(load_logging_config(LOGGING_CONFIG))


def duration(seconds: float) -> str:
    """``45 s``, ``3 min 20 s``, ``2 h 05 min``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def brief_cause(k: int, cause: str | None) -> str:
    """``trial-001 failed (X)`` → ``X``; the cause of a later step is kept whole (it names it)."""
    cause = cause or "no error recorded"
    head = f"trial-{k:03d} failed ("
    return cause[len(head) : -1] if cause.startswith(head) and cause.endswith(")") else cause


def _say(text: str, file=None) -> None:
    """A line on stderr (not through ``print``: a flow with ``log_prints`` logs those)."""
    file = file or sys.stderr
    file.write(f"ntkflow: {text}\n")
    file.flush()


def _eta(tally) -> str:
    eta = tally.eta()
    return "ETA …" if eta is None else f"ETA {duration(eta)}"


class LineDisplay:
    """Off a terminal (or with -v): the headline, a line each time the work done passes the
    next tenth (or the next trial's share, whichever is larger), a line per failed trial and
    one at the end."""

    def __init__(self, tally, headline: str, file=None):
        self.tally, self.file, self.closed = tally, file, False
        self.step = max(0.1, 1.0 / max(tally.todo, 1))
        self.next = self.step
        self.say(headline)

    def say(self, text: str) -> None:
        _say(text, self.file)

    def tick(self) -> None:
        f = self.tally.fraction()
        if self.next < 1 - 1e-9 and f >= self.next - 1e-9:
            t = self.tally
            self.say(f"{math.floor(100 * f)}% of the work · {t.counts()} · {_eta(t)}")
            self.next = (math.floor(f / self.step + 1e-9) + 1) * self.step

    def trial_ended(self, k: int, ok: bool, error: str | None) -> None:
        if not ok:
            self.say(f"trial-{k:03d} FAILED: {brief_cause(k, error)}")
        self.tick()

    def close(self) -> None:
        if not self.closed and self.tally.todo:
            self.closed = True
            self.say(f"trials ended: {self.tally.counts()} in {duration(self.tally.elapsed())}")


class LiveDisplay:
    """On a terminal: one display, redrawn 4 times a second, of the share of the work done with
    the trials done and failed and the time left, and of each running trial's epochs. A failed
    trial is one line above it."""

    ROWS = 6  # running trials shown

    def __init__(self, tally, headline: str, console):
        from rich.live import Live

        self.tally, self.closed = tally, False
        console.print(f"ntkflow: {headline}", markup=False, highlight=False)
        self.live = Live(console=console, get_renderable=self.render, refresh_per_second=4)
        self.live.start()

    def render(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        t = self.tally
        f = t.fraction()
        bar = Table.grid(padding=(0, 1))
        end = f" in {duration(t.elapsed())}" if self.closed else f" · {_eta(t)}"
        bar.add_row(
            ProgressBar(total=1.0, completed=f, width=30), f"{100 * f:3.0f}%", t.counts() + end
        )
        rows = [bar]
        trainings = [] if self.closed else t.trainings()
        for k, epochs in trainings[: self.ROWS]:
            parts = [f"{n} {e}/{t.nets[n]}" for n, e in epochs.items()]
            rows.append(Text(f"  trial-{k:03d}  " + " · ".join(parts), style="dim"))
        if len(trainings) > self.ROWS:
            rows.append(Text(f"  … and {len(trainings) - self.ROWS} more", style="dim"))
        return Group(*rows)

    def tick(self) -> None:
        pass  # redrawn by rich's own thread

    def trial_ended(self, k: int, ok: bool, error: str | None) -> None:
        if not ok:
            self.live.console.print(
                f"trial-{k:03d} FAILED: {brief_cause(k, error)}",
                style="red",
                markup=False,
                highlight=False,
            )

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.live.stop()  # the last drawing stays: the counts and the time taken


class NoDisplay:
    """Nothing to compute: the headline alone."""

    def __init__(self, tally, headline: str):
        _say(headline)

    def tick(self) -> None:
        pass

    def trial_ended(self, k, ok, error) -> None:
        pass

    def close(self) -> None:
        pass


def display(tally, headline: str, console=None):
    """The display of a run's progress on stderr: live on an interactive terminal when no run
    logs are printed there too (-v), else a few lines."""
    if not tally.todo:
        return NoDisplay(tally, headline)
    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
    if console.is_interactive and not state["logs_on_console"]:
        import atexit

        live = LiveDisplay(tally, headline, console)
        atexit.register(live.close)  # a run that crashed leaves the terminal as it found it
        return live
    return LineDisplay(tally, headline, console.file)


def print_summary(summary: dict, url: str, seconds: float | None, api: str | None = None) -> None:
    """The results table, failures, the run folder; with a real server, the flow run's UI URL."""
    from rich.console import Console
    from rich.table import Table

    run = summary["run"]
    title = f"run {run['run_id']} · formulas={run['formulas']} · {run['trials']} trials"
    t = Table(title=title)
    for col in ("method", "n", "mean RMSE", "SE", "median"):
        t.add_column(col, justify="left" if col == "method" else "right")
    for m, s in summary["methods"].items():
        if s.get("n"):
            t.add_row(
                m, str(s["n"]), f"{s['mean_rmse']:.4f}", f"{s['se']:.4f}", f"{s['median']:.4f}"
            )
        else:
            t.add_row(m, "0", "-", "-", "-")
    console = Console()
    console.print(t)
    for v in (summary.get("verdict") or {}).values():  # report.md opens with them too
        console.print(v["sentence"], markup=False, soft_wrap=True)
    if summary["failed_trials"]:
        console.print(f"[red]failed trials: {summary['failed_trials']}[/red]")
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    # paths whole on one line (a person copies them), never wrapped at the console's width
    console.print(f"run folder: {url}{took}", markup=False, soft_wrap=True)
    console.print(f"report: {url}/report.md", markup=False, soft_wrap=True)
    last = (summary["run"].get("flow_runs") or [{}])[-1]
    if api and last.get("url"):  # the flow run to retry, and its subflow with the trial tasks
        console.print(f"Prefect UI: {last.get('experiment_url') or last['url']}", soft_wrap=True)
        if last.get("experiment_url"):
            console.print(f"trial tasks: {last['url']}", soft_wrap=True)

"""What a person reads on the console: the progress (live on a terminal, a few lines elsewhere,
its time left from the share of the work done), which logs reach the console (all of them with
-v; the Prefect API gets them either way), the warning about stored items that cannot be
reused (never about items not computed yet), the hint after a failure, and a whole run's
output: a few dozen lines."""

import io
import json
import logging
import os
import sqlite3
import subprocess
import sys

import pytest
import servers as S
from rich.console import Console

from flows import console
from flows.progress import Tally
from flows.trials import rerun_hint
from ntkflow import report, trial
from ntkflow.config.presets import load_config
from ntkflow.store import Store
from ntkflow.trial import manifest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETS = {"NN1": 100, "NN2": 100}


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _half_done(clock: Clock) -> Tally:
    """4 trials running, kernels done; trials 0 and 1 trained: 2 trials' work of 4 after 10 s."""
    t = Tally(total=4, todo=4, nets=NETS, clock=clock)
    t.running = {0, 1, 2, 3}
    assert t.eta() is None and t.fraction() == 0  # nothing done: no time left to tell
    t.kernels_done.update(range(4))
    for k in (0, 1):
        for n in NETS:
            t.epoch(k, n, 100)
    clock.t = 10.0
    return t


# ---- the time left ----------------------------------------------------------------------------
def test_the_time_left_comes_from_the_share_of_work_done_epochs_included():
    clock = Clock()
    t = _half_done(clock)
    # each trial: kernels, NN1, NN2 and the steps after training, a quarter each
    assert t.trial_fraction(0) == 0.75 and t.trial_fraction(2) == 0.25
    assert t.fraction() == 0.5  # (0.75 + 0.75 + 0.25 + 0.25) / 4, before any trial ended
    assert t.eta() == pytest.approx(10.0)  # half the work in 10 s: 10 s left
    t.ended(0, ok=True)
    t.ended(1, ok=False)
    assert t.fraction() == 0.625 and t.counts() == "1/4 trials done, 1 failed"
    clock.t = 12.5  # 2.5 of 4 trials' work in 12.5 s: 1.5 left at 5 s each
    assert t.eta() == pytest.approx(7.5)
    t.epoch(2, "NN1", 50)  # an epoch older than the last one seen never moves it back
    t.epoch(2, "NN1", 40)
    assert t.epochs[2, "NN1"] == 50


def test_reused_trials_are_done_but_no_work_of_this_run():
    t = Tally(total=10, todo=2, nets={}, clock=Clock())
    assert t.counts() == "8/10 trials done" and t.fraction() == 0 and t.value() == 80.0
    t.running = {3, 7}
    assert t.trial_fraction(3) == 0.0  # kernels only: a trial moves when it ends
    t.ended(3, ok=True)
    assert t.fraction() == 0.5 and t.value() == 90.0
    assert Tally(total=3, todo=0, nets={}).fraction() == 1.0


# ---- the live display (a terminal) ------------------------------------------------------------
def _terminal() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, force_interactive=True, width=100)


def _text(renderable) -> str:
    out = Console(file=io.StringIO(), width=100, color_system=None)
    out.print(renderable)
    return out.file.getvalue()


def test_a_terminal_gets_one_live_display(monkeypatch):
    monkeypatch.setitem(console.state, "logs_on_console", False)
    clock = Clock()
    t = _half_done(clock)
    term = _terminal()
    d = console.display(t, "run abc: 4 trial(s), 4 to compute (84 new items)", term)
    try:
        assert isinstance(d, console.LiveDisplay)
        shown = _text(d.render())
        assert " 50% 0/4 trials done · ETA 10 s" in shown
        assert "trial-000  NN1 100/100 · NN2 100/100" in shown
        assert "trial-003  NN1 0/100 · NN2 0/100" in shown  # kernels done: it has begun
        d.trial_ended(1, False, "trial-001 failed (InjectedFault: injected fault in trial 1)")
        t.ended(1, ok=False)
    finally:
        d.close()
    out = term.file.getvalue()
    assert "ntkflow: run abc: 4 trial(s), 4 to compute (84 new items)" in out
    assert "trial-001 FAILED: InjectedFault: injected fault in trial 1" in out
    assert "0/4 trials done, 1 failed in 10 s" in _text(d.render())  # the last drawing
    d.close()  # twice: nothing more


def test_no_live_display_off_a_terminal_or_with_the_run_logs(monkeypatch):
    t = Tally(total=2, todo=2, nets={}, clock=Clock())
    monkeypatch.setitem(console.state, "logs_on_console", False)
    plain = Console(file=io.StringIO(), width=100)
    assert isinstance(console.display(t, "run", plain), console.LineDisplay)
    monkeypatch.setitem(console.state, "logs_on_console", True)  # -v: logs interleave
    assert isinstance(console.display(t, "run", _terminal()), console.LineDisplay)
    idle = console.display(Tally(total=2, todo=0, nets={}), "run abc: 2 trial(s), 0 to compute")
    assert isinstance(idle, console.NoDisplay)


# ---- lines (off a terminal) -------------------------------------------------------------------
def _lines(todo: int, fail: set[int] = frozenset()) -> list[str]:
    """The lines of a run of ``todo`` trials, its progress polled 20 times per trial."""
    clock, out = Clock(), io.StringIO()
    t = Tally(total=todo, todo=todo, nets={"NN1": 20}, clock=clock)
    t.running = set(range(todo))
    d = console.LineDisplay(t, "run abc", out)
    for k in range(todo):
        t.kernels_done.add(k)
        for e in range(1, 21):
            clock.t += 1
            t.epoch(k, "NN1", e)
            d.tick()
        t.ended(k, ok=k not in fail)
        d.trial_ended(k, k not in fail, f"trial-{k:03d} failed (InjectedFault: x)")
    d.close()
    return out.getvalue().splitlines()


def test_off_a_terminal_a_line_per_tenth_of_the_work_or_per_trial_whichever_is_fewer():
    lines = _lines(3, fail={1})
    assert lines[0] == "ntkflow: run abc" and lines[-1].startswith("ntkflow: trials ended: 2/3")
    ticks = [line for line in lines if "% of the work" in line]
    assert len(ticks) == 2  # at a third and two thirds: no line at 100 %, the end says it
    assert ticks[0].startswith("ntkflow: 33% of the work · 1/3 trials done · ETA")
    assert "ntkflow: trial-001 FAILED: InjectedFault: x" in lines
    assert len(lines) == 5
    many = _lines(50)
    assert len([line for line in many if "% of the work" in line]) == 9  # 10 %, …, 90 %
    assert len(many) == 11


def test_durations_read_as_a_person_writes_them():
    assert [console.duration(s) for s in (0.4, 47, 60, 901, 3600 * 2 + 5 * 60)] == [
        "0 s",
        "47 s",
        "1 min 00 s",
        "15 min 01 s",
        "2 h 05 min",
    ]
    assert console.brief_cause(7, "trial-007 failed (OSError: disk full)") == "OSError: disk full"
    later = "trial-007/train/NN1 failed (InjectedFault: x)"
    assert console.brief_cause(7, later) == later  # it names the step that failed


# ---- after a failure: what to do --------------------------------------------------------------
def test_the_hint_after_a_failure_says_to_drop_a_fault_that_fires_on_every_run():
    def hint(*sets):
        return rerun_hint(load_config("smoke", overrides=list(sets)))

    assert hint().startswith("rerun the same command")
    assert hint("faults.fail_trials=[1]", "faults.fail_once=true").startswith("rerun the same")
    assert hint("faults.fail_trials=[1]") == (
        "faults.fail_trials is set: drop it (--set faults.fail_trials=[]) to recompute them"
    )
    both = hint("faults.fail_trials=[1]", "faults.fail_networks=['0/NN1']")
    assert "faults.fail_trials and faults.fail_networks are set: drop them" in both
    assert "--set faults.fail_trials=[] --set faults.fail_networks=[]" in both


# ---- which logs reach the console -------------------------------------------------------------
HANDLERS = """
import json, logging, sys
from flows.console import configure_logging
configure_logging(sys.argv[1] == "-v")
from prefect import flow  # sets up Prefect's logging
out = {}
for name in ("prefect.flow_runs", "prefect.task_runs", ""):
    log = logging.getLogger(name)
    out[name] = [log.propagate, sorted((type(h).__name__, h.level) for h in log.handlers)]
print(json.dumps(out))
"""


@pytest.mark.parametrize("verbose", [False, True], ids=["plain", "-v"])
def test_run_logs_go_to_the_api_and_to_the_console_only_with_v(tmp_path, verbose):
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING")}
    env |= {"PREFECT_HOME": str(tmp_path), "PYTHONPATH": ROOT}
    res = subprocess.run(
        [sys.executable, "-c", HANDLERS, "-v" if verbose else "-"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    run_console = 0 if verbose else logging.CRITICAL
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        # every level to the API; the console only through its own handler
        assert got[name] == [False, [["APILogHandler", 0], ["PrefectConsoleHandler", run_console]]]
    assert got[""] == [True, [["PrefectConsoleHandler", 0 if verbose else logging.WARNING]]]


def test_a_logging_config_of_the_users_is_left_alone(tmp_path, monkeypatch):
    (tmp_path / "logging.yml").write_text("version: 1\n")
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.delenv("PREFECT_LOGGING_SETTINGS_PATH", raising=False)
    monkeypatch.setitem(console.state, "logs_on_console", False)
    console.configure_logging(False)
    assert "PREFECT_LOGGING_SETTINGS_PATH" not in os.environ
    assert console.state["logs_on_console"]  # its logs may reach the console: no live display


# ---- stored items that cannot be reused: one brief warning; new items: counted ----------------
def test_items_never_computed_are_counted_not_warned_about(tmp_path, caplog):
    sets = ["trials=1", "networks.enabled=false", "kernels=[NTKB1, K1]"]
    store = Store(tmp_path)
    trial.run_trial(load_config("smoke", overrides=sets), store, 0)
    more = load_config("smoke", overrides=[*sets[:2], "kernels=[NTKB1, K1, NTKJ2]"])
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert trial.complete(more, store, 0) is None  # NTKJ2 to compute
    assert caplog.text == ""
    assert report.new_items(more, store, [0]) == 1

    # a damaged Gram of an intact result: named briefly, once per process
    (tmp_path / "trials/000/gram/K1.zarr/test_train/zarr.json").unlink()
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert trial.complete(more, store, 0) is None
        assert trial.complete(more, store, 0) is None
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning == (
        "trial-000: 1 stored item(s) must be recomputed: gram/K1.zarr (files differ from the "
        "manifest)"
    )


def test_a_long_list_of_items_is_cut_short(tmp_path, caplog):
    t = trial.Trial(load_config("smoke"), Store(tmp_path), 0)
    bad = [f"NN{i}: stale (key {i:040d}, current {i + 1:040d})" for i in range(45)]
    with caplog.at_level("WARNING"):
        manifest._warn_recompute(t, bad)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith("trial-000: 45 stored item(s) must be recomputed: NN0 (stale), ")
    assert warning.endswith("NN4 (stale) … and 40 more") and len(warning) < 150


# ---- a whole run ------------------------------------------------------------------------------
# the quick preset at a fifth of its rows and a quarter of its width: the lines, the item count
# and the task runs do not depend on either
QUICK_SET = ["trials=3", "networks.epochs=[20, 20]", "data.n_obs=120", "networks.width=64"]
QUICK = ["run", "--preset", "quick", *(a for s in QUICK_SET for a in ("--set", s))]


@pytest.mark.slow
def test_a_quick_run_prints_a_few_dozen_lines(tmp_path, run_cli):
    """Three trials of the quick preset with short trainings and a fault that fires on every
    run: progress lines, the failed trial in one line, the table, the verdict, the paths and
    what to do, in at most 50 lines; the losses went to the Prefect API. The same command
    again fails the same trial again. (With -v the console has them too:
    tests/test_cli.py::test_sigterm_to_the_process_stops_everything reads them.)"""
    home = S.seed_home(tmp_path / "home")
    env = {"PREFECT_HOME": str(home)}
    faults = ["--set", "faults.fail_trials=[1]", "--set", "compute.n_workers=2"]
    res = run_cli(*QUICK, *faults, "--out", str(tmp_path / "runs"), env=env)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    lines = out.splitlines()
    print(f"{len(lines)} lines:\n{out}")
    assert len(lines) <= 50, out
    cfg = load_config("quick", overrides=QUICK_SET)
    assert f"ntkflow: run {cfg.run_id}: 3 trial(s), 3 to compute (63 new items)" in res.stderr
    (failed,) = [line for line in lines if "FAILED" in line]
    assert failed == "ntkflow: trial-001 FAILED: InjectedFault: injected fault in trial 1 " + (
        "(faults.fail_trials)"
    )
    assert "ntkflow: trials ended: 2/3 trials done, 1 failed in " in res.stderr
    assert "┃ method" in res.stdout and "│ NTKJ1 " in res.stdout  # the table
    assert any(line.startswith("NN1: ") for line in lines)  # the verdict
    assert f"run folder: {tmp_path / 'runs' / cfg.run_id} in " in res.stdout
    assert "drop it (--set faults.fail_trials=[]) to recompute them" in res.stderr
    assert "Traceback" not in out and "epoch" not in out and "Finished in state" not in out
    db = sqlite3.connect(home / "prefect.db")
    (logged,) = db.execute("select count(*) from log where message like '% epoch 20/20:%'")
    assert logged[0] == 4  # two networks of two trials, in their task runs' logs
    # every task run of the run recorded in its final state in the embedded API's database
    states = dict(db.execute("select name, state_name from task_run").fetchall())
    steps = [f"{s}/NN{L}" for s in ("train", "theory") for L in (1, 2)]
    names = [f"trial-{k:03d}{x}" for k in range(3) for x in ("", *(f"/{s}" for s in steps))]
    results = (f"trial-{k:03d}/result" for k in range(3))
    assert set(states) == {*names, *results, "aggregate", "trials-0"}  # trials-0: the subflow
    assert states["trial-001"] == "Failed" and states["trial-001/result"] == "UpstreamFailed"
    assert all(v in ("Completed", "Failed", "UpstreamFailed") for v in states.values()), states

    # The fault has no faults.fail_once: the rerun does not take the failed trial as done, it
    # computes it again and fails it again (exit 1), and records its own flow run.
    run_dir = tmp_path / "runs" / cfg.run_id
    res = run_cli(*QUICK, *faults, "--out", str(tmp_path / "runs"), env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "3 trial(s), 1 to compute" in res.stderr and " FAILED: InjectedFault" in res.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["failed_trials"] == [1] and summary["methods"]["NTKB1"]["n"] == 2
    assert "injected fault in trial 1" in summary["failures"][0]["error"]
    assert len(summary["run"]["flow_runs"]) == 2
    assert not (run_dir / "trials/001/result.json").exists()

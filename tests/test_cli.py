"""The ``ntkflow`` command on bad input: one clear error, exit 2, no traceback, no run folder;
and a clean stop on SIGINT/SIGTERM (no orphaned server or worker).

Usage errors run in this process through ``flows.cli.main(argv)`` (:func:`ntkflow_in_process`,
also used by test_deploy_cli and test_sweep); the console script's own mapping of a usage error
to exit 2 is proven once, in a subprocess (test_the_console_script_exits_2_on_a_usage_error)."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from launch import survivors
from servers import free_port

from ntkflow.config.presets import load_config

ROOT = Path(__file__).resolve().parent.parent
KERNELS_ONLY = ["run", "--preset", "smoke", "--kernels-only"]
HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # what the console script may take over


def ntkflow_in_process(capsys, *argv: str) -> subprocess.CompletedProcess:
    """``ntkflow ARGV`` as ``flows.cli.main(argv)`` in this process, where run_cli would run it
    (the checkout as working folder, a Prefect home of its own, no Prefect API configured), for
    commands that must stop before any work: asserts that the call started no process and left
    the environment, the working folder and the signal handlers as they were."""
    from flows.cli import main

    me = psutil.Process()
    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory() as home:
        mp.chdir(ROOT)
        mp.setenv("PREFECT_HOME", home)
        mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        mp.delenv("PREFECT_API_URL", raising=False)
        env, handlers = dict(os.environ), [signal.getsignal(s) for s in HANDLED]
        children = {p.pid for p in me.children(recursive=True)}
        capsys.readouterr()  # what the test printed before is not the command's
        rc = main(list(argv))
        captured = capsys.readouterr()
        started = [p.cmdline() for p in me.children(recursive=True) if p.pid not in children]
        assert started == [], started  # no server, cluster or worker
        assert dict(os.environ) == env and os.getcwd() == str(ROOT)
        assert [signal.getsignal(s) for s in HANDLED] == handlers
    return subprocess.CompletedProcess(["ntkflow", *argv], rc, captured.out, captured.err)


def _usage_error(res, *words):
    """Exit 2, a short final message naming ``words``, no Python traceback."""
    err = res.stderr
    assert res.returncode == 2, res.stdout + err
    assert "Traceback" not in err + res.stdout, err
    message = err[err.rindex("ntkflow: ") :]  # the last message (a run logs before it)
    for w in words:
        assert w in message, (w, err)
    assert len(message.strip().splitlines()) <= 4, err


def _usage_error_in_process(res, *words):
    """:func:`_usage_error`, and nothing on stdout (an in-process call is captured whole)."""
    _usage_error(res, *words)
    assert res.stdout == "", res.stdout


def _no_run_folder(out: Path):
    assert not out.exists() or not any(p.is_dir() for p in out.iterdir()), list(out.iterdir())


def test_the_console_script_exits_2_on_a_usage_error(tmp_path):
    """The real entry point (process-wide set-up, then main) turns a refused --out into exit
    status 2 with one message; every other usage error is checked in-process. (Not run_cli:
    nothing here reaches Prefect, so the quick tests need no seeded Prefect home.)"""
    import shutil

    f = tmp_path / "a-file"
    f.write_text("x")
    exe = shutil.which("ntkflow", path=str(Path(sys.executable).parent))
    assert exe, "the console script is installed with the package (pip install -e .)"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home")}
    env.pop("PREFECT_API_URL", None)
    cmd = [exe, *KERNELS_ONLY, "--out", str(f)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    _usage_error(res, "--out", str(f), "is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("x")
    res = ntkflow_in_process(capsys, *KERNELS_ONLY, "--out", str(f))
    _usage_error_in_process(res, "--out", str(f), "is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"] and f.read_text() == "x"


def test_out_not_writable(capsys):
    res = ntkflow_in_process(capsys, *KERNELS_ONLY, "--out", "/proc/ntkflow-test/runs")
    _usage_error_in_process(res, "--out", "/proc/ntkflow-test/runs", "cannot write there")
    assert not os.path.exists("/proc/ntkflow-test")


def test_out_read_only_store(tmp_path, capsys):
    """A store opened read-only (a zip archive through fsspec; read-only even for root)."""
    import zipfile

    archive = tmp_path / "runs.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("runs/readme.txt", "x")
    before = archive.read_bytes()
    res = ntkflow_in_process(capsys, *KERNELS_ONLY, "--out", f"zip://runs::{archive}")
    _usage_error_in_process(res, "--out", "cannot write there")
    assert archive.read_bytes() == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_read_only_folder(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        res = ntkflow_in_process(capsys, *KERNELS_ONLY, "--out", str(ro))
        _usage_error_in_process(res, "--out", "cannot write there")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_unreachable_cluster_fails_fast(tmp_path, capsys):
    assert load_config().compute.connect_timeout <= 10  # the default wait is short
    out = tmp_path / "runs"
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    res = ntkflow_in_process(
        capsys,
        *KERNELS_ONLY,
        "--cluster",
        address,
        "--set",
        "compute.connect_timeout=2",
        "--out",
        str(out),
    )
    _usage_error_in_process(res, "--cluster", address, "no Dask scheduler answered within 2 s")
    assert time.monotonic() - t0 < 30  # 2 s of waiting, and no start of a process
    _no_run_folder(out)


def test_cuda_cluster_without_gpu_stack(tmp_path, capsys):
    from importlib.util import find_spec

    import torch

    if find_spec("dask_cuda") is not None and torch.cuda.device_count() > 0:
        pytest.skip("dask-cuda and a GPU are present: --cluster cuda is valid here")
    out = tmp_path / "runs"
    res = ntkflow_in_process(capsys, *KERNELS_ONLY, "--cluster", "cuda", "--out", str(out))
    _usage_error_in_process(res, "--cluster cuda", "--cluster local")
    _no_run_folder(out)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--preset", ""], ["preset", "unknown preset ''"]),
        (["--out", ""], ["--out", "empty"]),
        (["--out", "  "], ["--out", "empty"]),
        (["--cluster", "Local"], ["compute.cluster", "did you mean 'local'"]),
        (["--set", "trials=1e12"], ["trials", "valid integer"]),
        (["--set", "trials=1000000000000"], ["trials", "less than or equal to"]),
        (["--set", "trials=true"], ["trials", "valid integer"]),
        (["--set", "data.noise_std=.inf"], ["data.noise_std", "finite"]),
        (["--set", "krr.ridge=.inf"], ["krr.ridge", "finite"]),
        (["--set", "networks.lr=.inf"], ["networks.lr", "finite"]),
        (["--set", "kernels=[NTKB1000000]"], ["kernels", "depth 1000000 outside 1..64"]),
    ],
)
def test_bad_values_are_usage_errors(tmp_path, capsys, args, words):
    out = tmp_path / "runs"
    res = ntkflow_in_process(capsys, "run", "--preset", "smoke", "--out", str(out), *args)
    _usage_error_in_process(res, *words)
    assert not out.exists()


def test_binary_config_file(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_bytes(bytes(range(256)) * 4)
    out = tmp_path / "runs"
    res = ntkflow_in_process(capsys, *KERNELS_ONLY, "--config", str(f), "--out", str(out))
    _usage_error_in_process(res, "--config", str(f))
    assert not out.exists()


def test_report_on_a_malformed_config_yaml(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("trials: [1, 2\nseed: {\n")
    res = ntkflow_in_process(capsys, "report", str(run_dir))
    _usage_error_in_process(res, "config.yaml", "not a readable YAML config")
    (run_dir / "config.yaml").write_bytes(b"\xff\xfe\x00binary")
    _usage_error_in_process(ntkflow_in_process(capsys, "report", str(run_dir)), "config.yaml")
    (run_dir / "config.yaml").write_text("- just\n- a list\n")
    res = ntkflow_in_process(capsys, "report", str(run_dir))
    _usage_error_in_process(res, "expected a mapping")
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]  # nothing written


# ---- in-process: main(argv) returns the exit status ----------------------------------------
@pytest.mark.parametrize(
    "argv, named",
    [
        (["run", "--set", "trials"], "trials"),  # no =VALUE
        (["run", "--set", "data.noise_std=[1, 2]"], "data.noise_std"),
        (["run", "--set", "nosuchkey=3"], "nosuchkey"),
        (["run", "--preset", "nosuchpreset"], "nosuchpreset"),
        (["run", "--nosuchoption"], "--nosuchoption"),
        (["sweep", "--widths", "64", "--kernels-only"], "--kernels-only"),  # a sweep trains
        (["run", "--formulas", "approximate"], "approximate"),
        (["sweep", "--widths", "64,x"], "64,x"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_usage_errors_in_process(tmp_path, capsys, argv, named):
    """main(argv) returns 2 for a usage error (the config's or argparse's), with the bad value
    named on stderr, and starts nothing: no run folder, nothing on stdout."""
    from flows.cli import main

    out = tmp_path / "runs"
    assert main([*argv, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert named in captured.err, captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert not out.exists()


def _help(capsys, *argv) -> str:
    from flows.cli import main

    assert main([*argv, "--help"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out


def test_help_describes_ntkflow_with_examples(capsys):
    from flows.cli import DESCRIPTION

    text = _help(capsys)
    assert DESCRIPTION in text and "examples:" in text
    assert "ntkflow run --preset smoke --kernels-only" in text
    assert "lives in flows/" not in text  # the module's docstring is no description
    for command in ("run", "sweep", "report", "verify", "presets"):
        assert f"    {command} " in text


@pytest.mark.parametrize(
    "command, words",
    [
        ("run", ["Run an experiment", "ntkflow run --preset smoke", "--kernels-only"]),
        ("sweep", ["several training settings", "ntkflow sweep --preset smoke --widths"]),
        ("report", ["Re-verify and re-aggregate", "ntkflow report runs/<run-id>", "RUN_DIR"]),
        ("verify", ["Deep-check every trial", "ntkflow verify runs/<run-id>", "RUN_DIR"]),
        ("presets", ["List presets", "example:\n  ntkflow presets"]),
    ],
)
def test_each_command_has_a_description_and_an_example(capsys, command, words):
    text = _help(capsys, command)
    assert "example:" in text
    for w in words:
        assert w in " ".join(text.split()) or w in text, (w, text)
    if command in ("report", "verify"):
        assert "<out>/<run-id>" in text and "URL" in text  # what RUN_DIR is


def test_every_option_has_a_help_line_and_sweep_offers_no_kernels_only():
    """Every option of every command says what it does; a sweep, which trains networks, does
    not offer --kernels-only (and refuses it: test_usage_errors_in_process)."""
    import argparse

    from flows.cli import _parser

    subparsers = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in subparsers.choices.items():
        for action in parser._actions:
            assert action.help, (name, action.option_strings or action.dest)
    sweep = {o for a in subparsers.choices["sweep"]._actions for o in a.option_strings}
    assert "--kernels-only" not in sweep and "--widths" in sweep and "--formulas" in sweep


@pytest.mark.slow
def test_store_the_workers_cannot_see(run_cli, shared_api):
    """memory:// lives inside one process: the worker processes' writes are invisible to the
    flow, so the run stops before any work with one clear error (not "FAILED: None")."""
    args = [*KERNELS_ONLY, "--set", "compute.n_workers=2", "--out", "memory://ntkflow-x"]
    res = run_cli(*args, env={"PREFECT_API_URL": shared_api})
    _usage_error(res, "--out memory://", "the Dask workers cannot share this store with the flow")
    assert "None" not in res.stderr and "Traceback" not in res.stderr
    assert "trial-000" not in res.stdout + res.stderr  # no trial was started


# ---- signals ----------------------------------------------------------------------------------
EPOCHS = 50_000  # minutes per network at width 64: still training when the signal comes
RUN_SETTINGS = [
    "compute.n_workers=2",
    "trials=4",
    f"networks.epochs=[{EPOCHS}, {EPOCHS}]",
    "networks.log_every=200",
]


def _progress(lines, tmp_path) -> dict:
    """The run's progress artifact, read from the embedded API the run printed."""
    import json
    import re
    import urllib.request

    from flows.artifacts import artifact_key as _artifact_key

    api = re.search(r"Prefect API (\S+) \(embedded\)", "".join(lines))[1]
    cfg = load_config("smoke", overrides=RUN_SETTINGS)
    key = _artifact_key("progress", cfg, str(tmp_path / "runs" / cfg.run_id))
    req = urllib.request.Request(
        f"{api}/artifacts/filter",
        data=json.dumps({"artifacts": {"key": {"any_": [key]}}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    (art,) = json.loads(urllib.request.urlopen(req, timeout=10).read())
    return art


def _wait_for(lines, proc, text, timeout=300):
    deadline = time.monotonic() + timeout
    while not any(text in line for line in list(lines)):
        assert proc.poll() is None, "".join(lines)
        assert time.monotonic() < deadline, "".join(lines)
        time.sleep(0.5)


def _start_run(tmp_path, prefect_home):
    env = {
        **os.environ,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "run",
        "--preset",
        "smoke",
        *(a for item in RUN_SETTINGS for a in ("--set", item)),
        "--out",
        str(tmp_path / "runs"),
        "-v",  # the epochs on the console: the tests wait for them
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    return proc, lines, reader


@pytest.mark.slow
def test_sigterm_to_the_process_stops_everything(tmp_path, prefect_home):
    """A run that is training gets SIGTERM, the command alone (``kill PID``): meanwhile its
    progress moved with the epochs; it exits within seconds, says how to resume, and no process
    it started (embedded server, Dask nannies and workers) survives. A signal to the whole
    process group: tests/test_endings.py."""
    proc, lines, reader = _start_run(tmp_path, prefect_home)
    try:
        _wait_for(lines, proc, " epoch 200/")
        # -v: the run logs on the console, the task runs' own and Prefect's
        assert any(
            re.search(r"Task run 'trial-00(\d)/train/NN(\d)' - trial-00\1 NN\2 epoch 200/", ln)
            for ln in lines
        ), "".join(lines)[-3000:]
        assert any("Beginning flow run" in ln for ln in lines), "".join(lines)[-3000:]
        # meanwhile, progress moves with epochs, not only trials: the artifact (updated at
        # most once a second) shows some, then more, with no trial done; the signal follows
        # as soon as it has moved (no fixed epoch to wait for while two workers train)
        deadline = time.monotonic() + 60  # the flow polls; a loaded machine is slow
        while (before := _progress(lines, tmp_path))["data"] <= 0:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        while (after := _progress(lines, tmp_path))["data"] <= before["data"]:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert before["description"].startswith("0/4 trials done")
        assert after["description"].startswith("0/4 trials done")
        assert 0 < before["data"] < after["data"] < 100, (before["data"], after["data"])
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert len(tree) >= 3  # the server and the workers
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        took = time.monotonic() - t0
        reader.join(timeout=10)
        out = "".join(lines)
        assert rc == 128 + signal.SIGTERM, out[-3000:]
        assert took < 20, (took, out[-3000:])
        assert "interrupted; rerun to resume" in out
        # the watchdog, spared by the handler, ends once it has cancelled the run's batch jobs
        assert survivors(tree) == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_sigkill_leaves_nothing_running(tmp_path, prefect_home):
    """SIGKILL of the command alone (no handler runs): its watchdog stops the embedded server and
    the Dask processes within seconds, then exits itself."""
    proc, lines, reader = _start_run(tmp_path, prefect_home)
    tree = []
    try:
        _wait_for(lines, proc, " epoch 200/")
        tree = psutil.Process(proc.pid).children(recursive=True)
        names = [" ".join(p.cmdline()) for p in tree]
        assert any("flows.watchdog" in n for n in names), names
        assert len(tree) >= 4  # the watchdog, the server and the workers
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert survivors(tree, timeout=15) == []
    finally:
        for p in tree:  # nothing of this test may linger, whatever happened
            with contextlib.suppress(psutil.Error):
                p.kill()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

"""Where runs are recorded is Prefect's own decision: the API URL (and key) as Prefect resolves
them, from the environment or the active profile; the embedded API only where Prefect has none.
And the local UI cycle of docs/prefect-ui.md, run as a user types it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import servers as S
from prefect.settings import Settings

from flows import server

PROFILE = 'active = "{active}"\n\n[profiles.x]\nPREFECT_API_URL = "{url}"\n\n[profiles.y]\n'
URL = "http://127.0.0.1:9/api"  # never called


def _isolated_env(home: Path) -> dict:
    """This process's environment without any PREFECT_ setting, in the Prefect home ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {
        **env,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(S.ROOT), os.environ.get("PYTHONPATH")])),
    }


WITH_URL = PROFILE.format(active="x", url=URL)  # the active profile names an URL
CASES = {  # case: (files under tmp, environment, the URL Prefect resolves)
    "no profiles file": ({}, {}, None),
    "the active profile names one": ({"home/profiles.toml": WITH_URL}, {}, URL),
    "PREFECT_PROFILE picks one without": (
        {"home/profiles.toml": WITH_URL},
        {"PREFECT_PROFILE": "y"},
        None,
    ),
    "PREFECT_PROFILE picks the one with": (
        {"home/profiles.toml": PROFILE.format(active="y", url=URL)},
        {"PREFECT_PROFILE": "x"},
        URL,
    ),
    "PREFECT_PROFILES_PATH": (
        {"elsewhere.toml": WITH_URL},
        {"PREFECT_PROFILES_PATH": "{tmp}/elsewhere.toml"},
        URL,
    ),
    "an empty PREFECT_API_URL wins": (
        {"home/profiles.toml": WITH_URL},
        {"PREFECT_API_URL": ""},
        None,
    ),
    "a .env file": ({"work/.env": f"PREFECT_API_URL={URL}\n"}, {}, URL),
    "a prefect.toml": ({"work/prefect.toml": f'[api]\nurl = "{URL}"\n'}, {}, URL),
    "the active profile names a key only": (
        {"home/profiles.toml": PROFILE.format(active="y", url=URL) + 'PREFECT_API_KEY = "k"\n'},
        {},
        None,
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_an_url_prefect_would_use_is_never_missed(tmp_path, monkeypatch, case):
    """Prefect's own settings, built afresh from this environment and these files, have an API
    URL exactly where the environment gives one or the cheap look at the files says one may be
    set (an empty PREFECT_API_URL is none, for both); where no file can set one, Prefect is not
    asked (and so not imported by the command)."""
    files, env, expected = CASES[case]
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    for folder in ("home", "work"):
        (tmp_path / folder).mkdir(exist_ok=True)
    for k in [k for k in os.environ if k.startswith("PREFECT_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    for k, v in env.items():
        monkeypatch.setenv(k, v.format(tmp=tmp_path))
    monkeypatch.chdir(tmp_path / "work")
    assert (Settings().api.url or None) == expected
    if "PREFECT_API_URL" in env:
        assert server.configured_api_url() == expected
    else:
        assert server._files_may_set_api() == (expected is not None)


def test_the_command_asks_prefect_only_when_a_profile_names_an_url(tmp_path):
    """In a fresh process (as `ntkflow run` starts): without a profile naming an URL the answer
    is None and Prefect stays unimported; once the active profile names one, Prefect's own
    resolution gives it, with its key, as the workers get them."""
    home = tmp_path / "home"
    home.mkdir()
    code = f"""
import sys
from pathlib import Path
from flows import server
print(server.configured_api_url(), "prefect" in sys.modules)
Path({str(home / "profiles.toml")!r}).write_text({PROFILE.format(active="x", url=URL)!r}
    .replace("[profiles.y]", "") + 'PREFECT_API_KEY = "secret"\\n')
print(server.configured_api_url(), "prefect" in sys.modules)
print(server.api_settings())
"""
    res = subprocess.run(
        [sys.executable, "-c", code],
        env=_isolated_env(home),
        cwd=S.ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    before, after, settings = res.stdout.splitlines()
    assert before == "None False"
    assert after == f"{URL} True"
    assert eval(settings) == {"PREFECT_API_URL": URL, "PREFECT_API_KEY": "secret"}


def test_workers_get_the_api_settings_also_when_they_join_later():
    """prepare_workers exports URL, key and auth string into every Dask worker process, also
    one that joins after it ran (a worker started elsewhere inherits nothing)."""
    from distributed import Client, LocalCluster

    from flows import workers

    api = {"PREFECT_API_URL": URL, "PREFECT_API_KEY": "k", "PREFECT_API_AUTH_STRING": "u:p"}

    def settings():
        return {k: os.environ.get(k) for k in api}

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        assert workers.prepare_workers(client, api) == 1
        cluster.scale(2)
        client.wait_for_workers(2, timeout=120)
        assert list(client.run(settings).values()) == [api, api]


def test_a_profiles_api_that_does_not_answer_is_a_usage_error(tmp_path):
    """The active profile names an API nobody serves: exit 2 before anything starts, naming
    the URL, where it was configured and the way back to the embedded API; no run folder."""
    home = tmp_path / "home"
    home.mkdir()
    url = f"http://127.0.0.1:{S.free_port()}/api"  # free: nothing answers there
    (home / "profiles.toml").write_text(PROFILE.format(active="x", url=url))
    out = tmp_path / "runs"
    res = subprocess.run(
        [str(S.BIN / "ntkflow"), "run", "--preset", "smoke", "--kernels-only", "--out", str(out)],
        env={**_isolated_env(home), "PREFECT_CLIENT_MAX_RETRIES": "0"},
        cwd=S.ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"the Prefect API {url} (the Prefect profile) cannot record this run" in res.stderr
    assert "prefect config unset PREFECT_API_URL" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists() or not any(out.iterdir())  # no run folder in it


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.headers.get("content-type", ""), r.read()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _gone(pid: int, timeout: float = 60) -> bool:
    """Whether process ``pid`` has exited within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _start_background_server(env: dict, home: Path) -> tuple[str, int]:
    """docs/prefect-ui.md's first two commands on a free port: the profile's API URL, then
    `prefect server start --background`; (API URL, server pid) once it answers. A port taken
    between choosing and binding it: the next port."""
    for attempt in range(3):
        port = S.free_port()
        api = f"http://127.0.0.1:{port}/api"
        S.cli(["config", "set", f"PREFECT_API_URL={api}"], env)
        S.cli(["server", "start", "--background", "--port", str(port)], env, check=attempt == 2)
        pid_file = home / "server.pid"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and _alive(pid):
            try:
                if _get(f"{api}/health")[0] == 200:
                    return api, pid
            except OSError:
                pass
            time.sleep(0.5)
        S.cli(["server", "stop"], env, check=False)
    raise RuntimeError("prefect server start --background did not answer on 3 ports")


@pytest.mark.slow
def test_the_documented_ui_cycle_records_the_run_on_the_profiles_server(tmp_path):
    """docs/prefect-ui.md as typed: `prefect config set PREFECT_API_URL=…`, `prefect server
    start --background`, `ntkflow run` (PREFECT_API_URL only in the active profile), the UI,
    `prefect server stop`. The run is on that server (no embedded API started), named and
    tagged, its subflow `<name>/trials`; the UI answers and points at that API; the server is
    gone after the stop."""
    home = S.seed_home(tmp_path / "home")  # a migrated database: the server starts in seconds
    env = _isolated_env(home)
    pid = None
    try:
        api, pid = _start_background_server(env, home)
        assert "PREFECT_API_URL" not in env and f'"{api}"' in (home / "profiles.toml").read_text()
        out = tmp_path / "runs"
        res = subprocess.run(
            [
                str(S.BIN / "ntkflow"),
                "run",
                "--preset",
                "smoke",
                "--kernels-only",
                "--out",
                str(out),
            ],
            env=env,
            cwd=S.ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert res.returncode == 0, res.stdout + res.stderr
        assert api in res.stderr and "embedded" not in res.stderr, res.stderr

        # the run, on the profile's server, found by its tag
        (run_dir,) = out.iterdir()
        run_id = run_dir.name
        runs = S.api_post(
            api, "flow_runs/filter", {"flow_runs": {"tags": {"all_": [f"run:{run_id}"]}}}
        )
        (top,) = [r for r in runs if r["parent_task_run_id"] is None]  # `experiment`
        (sub,) = [r for r in runs if r["parent_task_run_id"] is not None]  # `trials`
        name = f"{run_id}-smoke-exact"
        assert (top["name"], sub["name"]) == (name, f"{name}/trials")
        for r in (top, sub):
            assert r["state_type"] == "COMPLETED"
            assert {f"run:{run_id}", "preset:smoke", "formulas:exact"} <= set(r["tags"])
        tasks = S.api_post(api, "task_runs/filter", {"flow_runs": {"id": {"any_": [sub["id"]]}}})
        assert {"trial-000", "trial-001", "aggregate"} <= {t["name"] for t in tasks}  # workers'
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["run"]["prefect_api"] == api
        assert [r["id"] for r in summary["run"]["flow_runs"]] == [sub["id"]]

        # the UI: its page, and the API it calls (the profile's, not port 4200's)
        base = api.removesuffix("/api")
        status, kind, _ = _get(f"{base}/")
        assert status == 200 and kind.startswith("text/html")
        assert json.loads(_get(f"{base}/ui-settings")[2])["api_url"] == api

        S.cli(["server", "stop"], env)
        assert _gone(pid), (
            f"the background server (pid {pid}) still runs after `prefect server stop`"
        )
        assert not (home / "server.pid").exists()
    finally:
        if (home / "server.pid").exists():
            S.cli(["server", "stop"], env, check=False)
        if pid is not None and not _gone(pid, timeout=10):
            os.kill(pid, signal.SIGKILL)

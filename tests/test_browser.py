"""The Prefect UI tells the truth, checked in a real browser.

A real ``prefect server`` on 127.0.0.1 (UI included), a smoke run with one injected failure
against it, then headless Chromium (Debian's ``chromium`` and ``chromium-driver``; Selenium is
given both paths, so Selenium Manager downloads nothing) opens the flow run, the failed trial's
task run, and the progress, table and report artifacts, and asserts what a user sees there.
Screenshots go to $NTKFLOW_TEST_ARTIFACTS (default tests/artifacts/).
"""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--window-size=1600,1100",
)
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("NTKFLOW_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``prefect server start`` with its UI, on a free port, in a fresh PREFECT_HOME."""
    port = _free_port()
    home = tmp_path_factory.mktemp("prefect-server-home")
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "true",
        "PREFECT_UI_API_URL": api,  # the browser's UI calls this API
    }
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
        + ["--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"{api}/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(
                        f"prefect server did not start: {(home / 'server.log').read_text()}"
                    )
                time.sleep(1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS:
        opts.add_argument(f)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def _api(base: str, path: str, body: dict | None = None):
    req = urllib.request.Request(
        f"{base}/api/{path}",
        data=json.dumps(body or {}).encode(),
        headers={"Content-Type": "application/json"},
    )
    return json.loads(urllib.request.urlopen(req, timeout=30).read())


def _open(driver, url: str, *texts: str, timeout: float = 120) -> str:
    """Load ``url`` and wait until the page's text shows every one of ``texts``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)

    def shown(d):
        body = d.find_element(By.TAG_NAME, "body").text
        return body if all(t in body for t in texts) else False

    try:
        return WebDriverWait(driver, timeout, poll_frequency=1).until(shown)
    except Exception:
        body = driver.find_element(By.TAG_NAME, "body").text
        missing = [t for t in texts if t not in body]
        pytest.fail(f"{url}: never showed {missing}; page text:\n{body[:3000]}")


def _shot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def test_ui_shows_failed_trial_progress_and_report(tmp_path, server, browser, run_cli):
    res = run_cli(
        "run",
        "--preset",
        "smoke",
        "--set",
        "compute.n_workers=2",
        "--set",
        "faults.fail_trials=[1]",
        "--out",
        str(tmp_path / "runs"),
        env={"PREFECT_API_URL": f"{server}/api"},
    )
    assert res.returncode == 1, res.stdout + res.stderr

    # The REST API: one failed flow run, named and tagged; every task run in a final state.
    (fr,) = _api(server, "flow_runs/filter")
    run_id = next(t for t in fr["tags"] if t.startswith("run:"))[4:]
    assert fr["state_type"] == "FAILED" and fr["name"] == f"{run_id}-smoke-exact"
    assert {f"run:{run_id}", "preset:smoke", "formulas:exact"} <= set(fr["tags"])
    tasks = {t["name"]: t for t in _api(server, "task_runs/filter")}
    downstream = [f"trial-001/train/NN{L}" for L in (1, 2)] + ["trial-001/result"]
    assert tasks["trial-001"]["state_type"] == "FAILED"
    assert all(tasks[n]["state_name"] == "UpstreamFailed" for n in downstream)
    not_final = {n: t["state_name"] for n, t in tasks.items() if t["state_type"] in
                 ("PENDING", "RUNNING", "SCHEDULED")}  # fmt: skip
    assert not_final == {}
    # The console and summary.json point at this flow run in the UI.
    flow_url = f"{server}/runs/flow-run/{fr['id']}"
    assert f"Prefect UI: {flow_url}" in res.stdout
    summary = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    assert summary["run"]["flow_runs"][-1]["url"] == flow_url

    # The flow-run page: every trial step by name, the failure, nothing pending.
    names = ["trial-000", "trial-001", *downstream, "trial-000/result", "aggregate"]
    page = _open(browser, flow_url, *names, "Failed")
    shots = [_shot(browser, "flow-run")]
    assert "Pending" not in page and "NotReady" not in page
    assert "not run: trial-001 failed (InjectedFault" in page  # downstream names the cause
    assert "trial-000 NN1 epoch 3/3: train loss" in page  # training logs its losses

    # The failed trial's task-run page: its state and the traceback in its logs.
    page = _open(
        browser,
        f"{server}/runs/task-run/{tasks['trial-001']['id']}",
        "Failed",
        "Traceback (most recent call last)",
        "InjectedFault: injected fault in trial 1",
    )
    shots.append(_shot(browser, "failed-trial-task-run"))
    page = _open(
        browser,
        f"{server}/runs/task-run/{tasks['trial-001/result']['id']}",
        "UpstreamFailed",
        "not run: trial-001 failed",
    )
    shots.append(_shot(browser, "upstream-failed-task-run"))

    arts = {a["type"]: a for a in _api(server, "artifacts/filter") if a["key"]}
    assert {"progress", "table", "markdown"} <= set(arts)  # all keyed: listed in the UI
    # Progress: one of two trials done, the failure counted apart.
    _open(
        browser,
        f"{server}/artifacts/artifact/{arts['progress']['id']}",
        "Progress: 50%",
        "1/2 trials done, 1 failed",
    )
    shots.append(_shot(browser, "progress-artifact"))
    # The table: rounded numbers (at most 4 significant digits).
    page = _open(browser, f"{server}/artifacts/artifact/{arts['table']['id']}", "NTKB1", "K1")
    shots.append(_shot(browser, "table-artifact"))
    assert not re.search(r"\d\.\d{5,}", page), page
    # The report: the box plot is an image the browser loaded.
    _open(browser, f"{server}/artifacts/artifact/{arts['markdown']['id']}", "Test RMSE per method")
    loaded = browser.execute_script(
        "const imgs = Array.from(document.images).filter(i => i.src.startsWith('data:image/png'));"
        "return imgs.map(i => i.complete && i.naturalWidth);"
    )
    assert loaded and all(w > 0 for w in loaded), loaded
    browser.execute_script(
        "Array.from(document.images).find(i => i.src.startsWith('data:image/png'))"
        ".scrollIntoView({block: 'center'});"
    )
    shots.append(_shot(browser, "report-artifact-boxplot"))
    print("screenshots:", *map(str, shots), sep="\n  ")

"""The Prefect UI tells the truth, checked in a real browser.

A real ``prefect server`` on 127.0.0.1 (UI included) and a smoke run with one injected failure
against it (``faulted_smoke`` in conftest.py, the run tests/test_flow.py then reruns: only this
run's flow runs, task runs and artifact versions are looked at). Headless Chromium (Debian's
``chromium`` and ``chromium-driver``; Selenium is given both paths, so Selenium Manager
downloads nothing) opens the flow run, the failed trial's task run, and the progress, table and
report artifacts, and asserts what a user sees there.
Screenshots go to $NTKFLOW_TEST_ARTIFACTS (default tests/artifacts/).
"""

import json
import os
import re
from pathlib import Path

import pytest
import servers as S

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("smoke-story")]

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
    return S.api_post(f"{base}/api", path, body)


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


def test_ui_shows_failed_trial_progress_and_report(ui_server, faulted_smoke, browser):
    server, res, ours = ui_server, faulted_smoke.first, faulted_smoke.flow_runs
    out = faulted_smoke.out
    assert res.returncode == 1, res.stdout + res.stderr

    # The REST API: the flow `experiment` and its subflow `trials`, both failed, named and
    # tagged; every task run in a final state.
    flow_runs = [f for f in _api(server, "flow_runs/filter") if f["id"] in ours]
    (fr,) = [f for f in flow_runs if f["parent_task_run_id"] is not None]  # `trials`
    (top,) = [f for f in flow_runs if f["parent_task_run_id"] is None]  # `experiment`
    run_id = next(t for t in fr["tags"] if t.startswith("run:"))[4:]
    assert (top["name"], fr["name"]) == (f"{run_id}-smoke-exact", f"{run_id}-smoke-exact/trials")
    for f in (fr, top):
        assert f["state_type"] == "FAILED"
        assert {f"run:{run_id}", "preset:smoke", "formulas:exact"} <= set(f["tags"])
    tasks = {t["name"]: t for t in _api(server, "task_runs/filter") if t["flow_run_id"] in ours}
    downstream = [f"trial-001/{step}/NN{L}" for step in ("train", "theory") for L in (1, 2)]
    downstream.append("trial-001/result")
    assert tasks["trial-001"]["state_type"] == "FAILED"
    assert all(tasks[n]["state_name"] == "UpstreamFailed" for n in downstream)
    not_final = {n: t["state_name"] for n, t in tasks.items() if t["state_type"] in
                 ("PENDING", "RUNNING", "SCHEDULED")}  # fmt: skip
    assert not_final == {}
    # The console and summary.json point at these flow runs in the UI.
    flow_url = f"{server}/runs/flow-run/{fr['id']}"
    top_url = f"{server}/runs/flow-run/{top['id']}"
    assert f"Prefect UI: {top_url}" in res.stdout and f"trial tasks: {flow_url}" in res.stdout
    summary = json.loads(next(out.glob("*/summary.json")).read_text())  # the first, a rerun's last
    assert summary["run"]["flow_runs"][0]["url"] == flow_url
    assert summary["run"]["flow_runs"][0]["experiment_url"] == top_url

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

    listed = _api(server, "artifacts/filter")
    arts = {a["type"]: a for a in listed if a["key"] and a["flow_run_id"] in ours}
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
    # The report: every figure of report.md is an image the browser loaded (none left as a path
    # of the run folder, which the UI shows as a broken image).
    _open(browser, f"{server}/artifacts/artifact/{arts['markdown']['id']}", "Test RMSE per method")
    report_md = next(out.glob("*/report.md")).read_text()
    figures = re.findall(r"!\[([^\]]*)\]\(([\w.-]+\.png)\)", report_md)
    assert {f for _, f in figures} >= {"boxplot.png", "verdict.png", "theory.png"}, figures
    images = browser.execute_script(
        "return Array.from(document.images)"
        ".map(i => [i.alt, i.src.slice(0, 22), i.complete && i.naturalWidth]);"
    )
    shown = {alt: (src, w) for alt, src, w in images if alt in {a for a, _ in figures}}
    assert set(shown) == {a for a, _ in figures}, images
    assert all(src == "data:image/png;base64," and w > 0 for src, w in shown.values()), images
    browser.execute_script(
        "Array.from(document.images).find(i => i.src.startsWith('data:image/png'))"
        ".scrollIntoView({block: 'center'});"
    )
    shots.append(_shot(browser, "report-artifact-boxplot"))
    print("screenshots:", *map(str, shots), sep="\n  ")

"""The experiment flow end to end: real Prefect API, real LocalCluster, real stores on disk."""

import json
import os
import subprocess

import pandas as pd
import pytest
import servers as S
import yaml

from ntkflow.config.presets import load_config
from ntkflow.store import Store

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.xdist_group("smoke-story")
def test_smoke_run_fails_one_trial_then_reruns_only_it(faulted_smoke, ui_server, run_cli):
    """The faulted smoke run (conftest.py, against a real ``prefect server``; tests/test_browser.py
    checks its UI), then its rerun there (the flow, its subflow, tasks and artifacts in the API),
    then reruns with nothing to compute and a re-aggregation."""
    args, out, first = faulted_smoke.args, faulted_smoke.out, faulted_smoke.first
    api = f"{ui_server}/api"
    assert first.returncode == 1, first.stdout + first.stderr
    run_dir = out / load_config("smoke").run_id
    done = run_dir / "trials/000/result.json"
    summary = _summary(run_dir)
    assert summary["failed_trials"] == [1]
    assert "injected fault" in summary["failures"][0]["error"]
    assert summary["methods"]["NTKB1"]["n"] == 1
    before = (done.stat().st_mtime_ns, done.read_bytes())

    second = run_cli(*args, env={"PREFECT_API_URL": api})
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 to compute" in second.stdout + second.stderr
    assert api in second.stderr and "embedded" not in second.stderr
    _rerun_in_the_api(api, faulted_smoke.flow_runs, second.stdout)
    assert (done.stat().st_mtime_ns, done.read_bytes()) == before  # not rewritten
    summary = _summary(run_dir)
    assert summary["failed_trials"] == []
    # both flow runs that produced the summary are recorded, the failed one first
    flow_runs = summary["run"]["flow_runs"]
    assert len(flow_runs) == 2 and flow_runs[0]["id"] != flow_runs[1]["id"]
    assert all(r["name"].startswith(load_config("smoke").run_id) for r in flow_runs)
    cfg = load_config("smoke")
    for m in cfg.methods:
        assert summary["methods"][m]["n"] == 2, m
    assert {"NN1", "NN2", "NTKB1", "K1"} <= set(summary["methods"])

    # artifacts of the run
    df = pd.read_parquet(run_dir / "results.parquet")
    assert set(df.method) == set(cfg.methods) and (df.status == "ok").all()
    assert len(df) == 2 * len(cfg.methods)  # NN, LIN and kernel methods of both trials
    assert df.loc[df.method == "NTKB1", "solver"].notna().all()
    assert (run_dir / "boxplot.png").read_bytes()[:4] == b"\x89PNG"
    assert "NTKB2" in (run_dir / "report.md").read_text()
    for k in (0, 1):
        t = run_dir / f"trials/{k:03d}"
        assert (t / "data.zarr/zarr.json").exists() and (t / "gram/NTKJ2.zarr/zarr.json").exists()
        curve = json.loads((t / "nets/NN2_curve.json").read_text())
        assert curve["epoch"][0] == 0 and curve["epoch"][-1] == cfg.networks.epochs[1]
        result = Store(run_dir).read_json(f"trials/{k:03d}/result.json", verify=True)
        assert result["formulas"] == "exact" and result["versions"]["numpy"]
    assert not (run_dir / "trials/001/error.json").exists()
    provenance = yaml.safe_load((run_dir / "config.yaml").read_text())["provenance"]
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    assert provenance["git_commit"] == (head or None)  # the checkout's commit, or None without git
    assert provenance["run_id"] == cfg.run_id

    # nothing left to compute: no Prefect server, no cluster; a current summary is kept as it
    # is, a stale one (a file of it lost) is redone alone
    kept = (run_dir / "summary.json").read_bytes()
    noop = run_cli(*args)
    assert noop.returncode == 0, noop.stdout + noop.stderr
    assert "2 trial(s), 0 to compute; summary current" in noop.stderr
    assert "Prefect API" not in noop.stderr and "NTKB1" in noop.stdout
    assert (run_dir / "summary.json").read_bytes() == kept
    (run_dir / "report.md").unlink()
    noop = run_cli(*args)
    assert noop.returncode == 0 and "summary re-aggregated" in noop.stderr, noop.stderr
    assert (run_dir / "report.md").exists() and _summary(run_dir)["methods"] == summary["methods"]
    assert _summary(run_dir)["run"]["flow_runs"] == flow_runs
    assert (done.stat().st_mtime_ns, done.read_bytes()) == before  # no trial was touched

    # re-aggregation from the store alone gives the same statistics
    again = run_cli("report", str(run_dir))
    assert again.returncode == 0, again.stderr
    assert _summary(run_dir)["methods"] == summary["methods"]
    assert _summary(run_dir)["run"]["flow_runs"] == flow_runs  # the history survives


# A fault that fires on every run fails its trial again on the rerun: tests/test_console.py.


def _rerun_in_the_api(api: str, earlier: set, stdout: str) -> None:
    """The rerun's flow `experiment` and its subflow `trials` completed on the server, with the
    failed trial's task, the aggregation and the artifacts; the console points at the run."""

    def post(path, body=None):
        return S.api_post(api, path, body or {})

    flows = [f for f in post("flow_runs/filter") if f["id"] not in earlier]
    assert [f["state_type"] for f in flows] == ["COMPLETED", "COMPLETED"]
    ours = {f["id"] for f in flows}
    tasks = [t for t in post("task_runs/filter") if t["flow_run_id"] in ours]
    names = {t["name"] for t in tasks}
    assert {"trial-001", "trial-001/train/NN2", "trial-001/result", "aggregate"} <= names
    assert "trial-000" not in names  # done by the first run
    assert all(t["state_type"] == "COMPLETED" for t in tasks)
    listed = post("artifacts/filter")
    keyed = {a["type"]: a for a in listed if a["key"] and a["flow_run_id"] in ours}
    assert {"progress", "table", "markdown"} <= set(keyed)
    assert keyed["progress"]["data"] == 100.0
    assert keyed["progress"]["description"].startswith("2/2 trials done")
    (run,) = [f for f in flows if f["parent_task_run_id"] is None]  # `experiment`
    base = api.removesuffix("/api")
    assert f"Prefect UI: {base}/runs/flow-run/{run['id']}" in stdout

"""The deployment for real: PostgreSQL, `prefect server` on it, a process work pool, `prefect
deploy` of deploy/prefect.yaml, a `prefect worker`, `prefect deployment run` with parameters,
then `prefect flow-run retry` (what the UI's Retry button calls) of the failed run."""

import json
import subprocess
import time

import pytest
import servers as S

from ntkflow.config.presets import load_config

# one xdist worker, so one server (a module fixture) for all of them
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("deploy-e2e")]

POOL = "ntkflow-process"
FAULTS = ["faults.fail_trials=[1]", "faults.fail_once=true"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """PostgreSQL → prefect server → process pool → deployment → worker; all stopped after."""
    if S.postgres_bindir() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are not installed on this machine")
    work = tmp_path_factory.mktemp("deploy-e2e")
    with S.postgres(work) as db, S.prefect_server(work, db) as api:
        env = S.base_env(
            work / "client-home",
            PREFECT_API_URL=api,
            NTKFLOW_ROOT=str(S.ROOT),
            NTKFLOW_STORE=str(work / "runs"),
            PREFECT_WORKER_QUERY_SECONDS="2",
        )
        S.cli(["work-pool", "create", POOL, "--type", "process"], env)
        dep = S.cli(
            ["deploy", "--prefect-file", "deploy/prefect.yaml", "--name", POOL, "--no-prompt"],
            env,
        )
        assert "experiment/ntkflow-process" in dep.stdout
        with S.prefect_worker(work, env, POOL):
            yield {"api": api, "env": env, "work": work, "db": db}


def _task_runs(api, flow_run_ids):
    runs = S.api_post(api, "task_runs/filter", {"flow_runs": {"id": {"any_": flow_run_ids}}})
    return runs


def _subflow_runs(api, parent_id):
    return S.api_post(
        api, "flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [parent_id]}}}
    )


@pytest.mark.parametrize("cluster", ["local", "slurm"])
def test_deployment_run_fails_then_retry_completes_in_place(stack, cluster, request):
    """The README's walk-through, on the default cluster and on Slurm (the shipped GPU spec with
    site fields changed): a failing trial, then `prefect flow-run retry` recomputes only it."""
    api, env, work = stack["api"], stack["env"], stack["work"]
    assert stack["db"].startswith("postgresql+asyncpg://")
    params = {"preset": "smoke", "overrides": FAULTS}
    extra = []
    if cluster == "slurm":  # the flow run (a subprocess of the worker) finds Slurm by SLURM_CONF
        slurm = request.getfixturevalue("slurm_env")
        work = work / "slurm"  # its own store: the same run id as the local case
        work.mkdir()
        params.update(cluster=str(S.slurm_spec(work)), out=str(work / "runs"))
        job_env = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", **slurm}
        extra = ["--job-variable", f"env={json.dumps(job_env)}"]
    t_run = time.time()
    res = S.cli(
        ["deployment", "run", "experiment/ntkflow-process", "--params", json.dumps(params), *extra],
        env,
    )
    flow_run_id = res.stdout.split("UUID: ")[1].split()[0]

    first = S.wait_flow_run(api, flow_run_id, timeout=600)
    assert first["state"]["type"] == "FAILED", first["state"]
    assert "1 trial(s) failed: [1]" in first["state"]["message"]
    assert first["deployment_id"] and first["parameters"]["cluster"] == params.get(
        "cluster", "local"
    )
    # named and tagged as `ntkflow run` names and tags its runs (not Prefect's random name),
    # the deployment's own tag kept
    cfg = load_config("smoke", None, FAULTS)
    name = f"{cfg.run_id}-smoke-exact"
    run_tags = {f"run:{cfg.run_id}", "preset:smoke", "formulas:exact"}
    assert first["name"] == name and {"ntkflow", *run_tags} <= set(first["tags"])

    # the run folder: named by the run id of the same config `ntkflow run` would build
    run_dir = work / "runs" / cfg.run_id
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["failed_trials"] == [1]
    assert "provenance" in (run_dir / "config.yaml").read_text()
    done = run_dir / "trials/000/result.json"
    before = (done.stat().st_mtime_ns, done.read_bytes())

    # the trials ran as Dask tasks of the subflow `trials`, started by the deployment's worker
    subs = _subflow_runs(api, flow_run_id)
    assert [s["name"] for s in subs] == [f"{name}/trials"]
    assert all(s["flow_id"] != first["flow_id"] and run_tags <= set(s["tags"]) for s in subs)
    tasks = _task_runs(api, [s["id"] for s in subs])
    starts = [t["start_time"] for t in tasks if t["name"].startswith("trial-") and t["start_time"]]
    assert starts
    latency = _seconds(min(starts)) - t_run
    (work / "latency.json").write_text(json.dumps({"deployment_run_to_first_trial_s": latency}))
    print(f"deployment run → first trial task running: {latency:.1f} s")

    # the UI's Retry button: the same flow run id is scheduled again and completes
    S.cli(["flow-run", "retry", flow_run_id], env)
    second = S.wait_flow_run(api, flow_run_id, timeout=600, after=first["state"]["id"])
    assert second["id"] == flow_run_id
    assert second["state"]["type"] == "COMPLETED", second["state"]
    assert second["run_count"] >= 2
    assert second["name"] == name and sorted(second["tags"]) == sorted(first["tags"])

    assert (done.stat().st_mtime_ns, done.read_bytes()) == before  # trial 0 not recomputed
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["failed_trials"] == []
    assert all(summary["methods"][m]["n"] == 2 for m in cfg.methods)
    tasks = _task_runs(api, [s["id"] for s in _subflow_runs(api, flow_run_id)])
    computed = sorted(t["name"] for t in tasks if t["name"] in ("trial-000", "trial-001"))
    assert computed == ["trial-000", "trial-001", "trial-001"]  # only trial 1 ran again
    if cluster == "slurm":  # on Slurm jobs, which are all gone
        assert list((work / "spec-logs").glob("*.out"))
        assert subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout == ""


def test_bad_parameters_fail_the_run_before_any_trial(stack):
    """The UI/API path is as strict as the CLI: the run fails at once, naming the field."""
    api, env, work = stack["api"], stack["env"], stack["work"]
    params = {"preset": "smoke", "overrides": ["networks.width=-3"], "out": str(work / "bad")}
    res = S.cli(
        ["deployment", "run", "experiment/ntkflow-process", "--params", json.dumps(params)], env
    )
    run = S.wait_flow_run(api, res.stdout.split("UUID: ")[1].split()[0], timeout=300)
    assert run["state"]["type"] == "FAILED"
    assert "networks.width" in run["state"]["message"]
    assert not _subflow_runs(api, run["id"])  # no trial ran
    assert not (work / "bad").exists()


def _seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize(
    "pool, kind", [("ntkflow-docker", "docker"), ("ntkflow-kubernetes", "kubernetes")]
)
def test_docker_and_kubernetes_deployments_register(stack, pool, kind):
    """The server accepts the other two deployments against real pools of their types (it
    checks job variables against the pool's base job template); nothing runs them here."""
    pytest.importorskip(f"prefect_{kind}", reason=f"needs prefect-{kind} (the cluster extra)")
    api, env = stack["api"], {**stack["env"], "NTKFLOW_IMAGE": "ntkflow:test"}
    S.cli(["work-pool", "create", pool, "--type", kind], env)
    S.cli(["deploy", "--prefect-file", "deploy/prefect.yaml", "--name", pool, "--no-prompt"], env)
    (dep,) = S.api_post(api, "deployments/filter", {"deployments": {"name": {"any_": [pool]}}})
    assert dep["job_variables"]["image"] == "ntkflow:test"
    assert dep["job_variables"]["env"]["PREFECT_API_URL"].startswith("http://prefect-server")
    assert dep["parameters"]["cluster"] != "local"
    assert dep["pull_steps"][0]["prefect.deployments.steps.set_working_directory"] == {
        "directory": "/opt/ntkflow"
    }

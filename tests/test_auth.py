"""A Prefect server with basic auth (PREFECT_SERVER_API_AUTH_STRING), as docker/compose.yaml runs
it: a client without the string is refused, its health probe is not, and `ntkflow run` with
PREFECT_API_AUTH_STRING records its runs there, also from Dask workers started without it.

The compose stack's worker passes its PREFECT_API_AUTH_STRING on to each flow-run container
(tests/test_deploy_static.py checks that with prefect-docker's own job configuration)."""

import json
import urllib.error

import pytest
import servers as S

from ntkflow.config.presets import load_config

# one xdist worker, so one server (a module fixture) for all of them
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("auth-server")]

AUTH = "ntkflow:s3cret-for-this-test"
RUN = ["run", "--preset", "smoke", "--kernels-only"]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    work = tmp_path_factory.mktemp("auth-server")
    with S.prefect_server(work, env={"PREFECT_SERVER_API_AUTH_STRING": AUTH}) as api:
        yield api


def _status(call) -> int:
    with pytest.raises(urllib.error.HTTPError) as err:
        call()
    return err.value.code


def _all_flow_runs(api: str) -> list[dict]:
    return S.api_post(api, "flow_runs/filter", auth=AUTH)


def _assert_recorded(api: str, out) -> None:
    """The run's flow `experiment` and subflow `trials` completed on the server at ``api``, with
    the subflow's trial and aggregate task runs (reported by the Dask workers)."""
    (summary,) = out.glob("*/summary.json")
    this = json.loads(summary.read_text())["run"]["flow_runs"][-1]
    assert this["api"] == api
    for run_id in (this["experiment_id"], this["id"]):
        assert S.api_get(api, f"flow_runs/{run_id}", auth=AUTH)["state_type"] == "COMPLETED"
    body = {"flow_runs": {"id": {"any_": [this["id"]]}}}
    tasks = S.api_post(api, "task_runs/filter", body, auth=AUTH)
    assert {"trial-000", "trial-001", "aggregate"} <= {t["name"] for t in tasks}
    assert all(t["state_type"] == "COMPLETED" for t in tasks)


def test_a_client_without_the_auth_string_is_refused(api):
    filter_runs = "flow_runs/filter"
    assert _status(lambda: S.api_post(api, filter_runs)) == 401
    assert _status(lambda: S.api_post(api, filter_runs, auth="ntkflow:wrong")) == 401
    assert _status(lambda: S.api_post(api, "deployments/filter")) == 401
    assert isinstance(S.api_post(api, filter_runs, auth=AUTH), list)
    # the compose healthcheck's probe needs no credentials (GET /api/health only)
    assert S.api_get(api, "health") is True


def test_the_cli_without_the_auth_string_records_nothing(api, run_cli, tmp_path):
    before = len(_all_flow_runs(api))
    res = run_cli(*RUN, "--out", str(tmp_path / "runs"), env={"PREFECT_API_URL": api})
    assert res.returncode == 2, res.stdout + res.stderr  # a usage error, named in one line
    assert "401 Unauthorized" in res.stderr and "set PREFECT_API_AUTH_STRING" in res.stderr
    assert "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr
    assert len(_all_flow_runs(api)) == before


def test_a_run_with_the_auth_string_is_recorded(api, run_cli, tmp_path):
    env = {"PREFECT_API_URL": api, "PREFECT_API_AUTH_STRING": AUTH}
    res = run_cli(*RUN, "--set", "compute.n_workers=2", "--out", str(tmp_path / "runs"), env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert api in res.stderr and "embedded" not in res.stderr
    _assert_recorded(api, tmp_path / "runs")


def test_a_run_on_an_existing_scheduler_by_address_whose_workers_lack_the_auth_string(
    api, run_cli, tmp_path
):
    """A scheduler and two workers started by hand, without PREFECT_API_AUTH_STRING (as on
    other machines), reached as `--cluster [::1]:PORT` (`tcp://127.0.0.1:PORT` without an IPv6
    loopback): the config accepts the address, the preflight reaches the scheduler, the flow
    connects to the normalized address and the workers compute the run. Each task carries the
    run's Prefect settings, auth string included, so their task runs are recorded on the
    server, and none of them starts a private one."""
    host, port = S.loopback()
    with S.dask_cluster(tmp_path, host, port) as address:
        cluster = f"[::1]:{port}" if host == "::1" else address
        env = {"PREFECT_API_URL": api, "PREFECT_API_AUTH_STRING": AUTH}
        args = [*RUN, "--cluster", cluster, "-v", "--out", str(tmp_path / "runs")]
        res = run_cli(*args, env=env)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert f"2 worker(s) of {address}" in res.stderr, out  # the flow's log: the normalized address
    (summary,) = (tmp_path / "runs").glob("*/summary.json")
    cfg = load_config("smoke")
    methods = json.loads(summary.read_text())["methods"]
    assert {m: methods[m]["n"] for m in cfg.kernels} == dict.fromkeys(cfg.kernels, cfg.trials)
    log = (tmp_path / "dask.log").read_text()
    assert "Starting temporary server" not in log and "Unauthorized" not in log, log[-3000:]
    assert api in res.stderr and "embedded" not in res.stderr
    _assert_recorded(api, tmp_path / "runs")

"""Static checks of what cannot run here (no Docker engine, no Kubernetes): the compose file
against the compose spec (and Debian's docker-compose), the Dockerfile with hadolint, and every
deployment's job variables against its work-pool type's base job template."""

import copy
import ipaddress
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PREFECT_YAML = ROOT / "deploy/prefect.yaml"
COMPOSE = ROOT / "docker/compose.yaml"
ENV_EXAMPLE = ROOT / "docker/.env.example"
AUTH = "ntkflow:test-login"  # what a site writes into docker/.env


def _tool(name: str) -> str:
    exe = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if not exe:
        pytest.skip(f"{name} is not installed (pip install -e '.[cluster]')")
    return exe


# ---- deploy/prefect.yaml ----------------------------------------------------------------------
def _worker_class(pool_type: str):
    if pool_type == "process":
        from prefect.workers.process import ProcessWorker

        return ProcessWorker
    if pool_type == "docker":
        return pytest.importorskip("prefect_docker.worker", reason="docker extra").DockerWorker
    mod = pytest.importorskip("prefect_kubernetes.worker", reason="k8s extra")
    return mod.KubernetesWorker


POOL_TYPES = {
    "ntkflow-process": "process",
    "ntkflow-docker": "docker",
    "ntkflow-kubernetes": "kubernetes",
}


def _deployments() -> list[dict]:
    return yaml.safe_load(PREFECT_YAML.read_text())["deployments"]


def _job_variables_schema(pool_type: str) -> dict:
    """The `variables` schema of the pool type's default base job template, closed to unknown
    keys: Prefect ignores a job variable it does not know, so a typo would silently do nothing."""
    schema = copy.deepcopy(_worker_class(pool_type).get_default_base_job_template()["variables"])
    schema["additionalProperties"] = False
    return schema


def test_each_pool_type_has_a_deployment():
    names = {d["name"]: d["work_pool"]["name"] for d in _deployments()}
    assert set(names.values()) == set(POOL_TYPES)


@pytest.mark.parametrize("dep", _deployments(), ids=lambda d: d["name"])
def test_job_variables_match_the_base_job_template(dep):
    pool = dep["work_pool"]["name"]
    jsonschema.validate(dep["work_pool"]["job_variables"], _job_variables_schema(POOL_TYPES[pool]))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda jv: jv.update(imgae=jv.pop("image")), "'imgae' was unexpected"),
        (lambda jv: jv.update(auto_remove="yes"), "'yes' is not of type 'boolean'"),
        (lambda jv: jv.update(volumes="ntkflow-store:/store"), "is not of type 'array'"),
    ],
)
def test_a_typo_in_job_variables_fails(edit, message):
    (dep,) = [d for d in _deployments() if d["name"] == "ntkflow-docker"]
    jv = copy.deepcopy(dep["work_pool"]["job_variables"])
    edit(jv)
    with pytest.raises(jsonschema.ValidationError, match=message):
        jsonschema.validate(jv, _job_variables_schema("docker"))


@pytest.mark.parametrize("dep", _deployments(), ids=lambda d: d["name"])
def test_parameters_match_the_flow_signature(dep):
    """The deployment's parameters validate against the entrypoint flow's parameter schema."""
    from prefect.utilities.callables import parameter_schema

    from flows.experiment import experiment

    assert dep["entrypoint"] == "flows/experiment.py:experiment"
    schema = parameter_schema(experiment).model_dump_for_openapi()
    schema["additionalProperties"] = False
    jsonschema.validate(dep["parameters"], schema)
    assert set(dep["parameters"]) == set(schema["properties"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**dep["parameters"], "kernel_only": True}, schema)


def test_docker_deployment_uses_the_compose_stack():
    (dep,) = [d for d in _deployments() if d["name"] == "ntkflow-docker"]
    jv = dep["work_pool"]["job_variables"]
    compose = yaml.safe_load(COMPOSE.read_text())
    assert jv["networks"] == [compose["networks"]["default"]["name"]]
    volume, mount = jv["volumes"][0].split(":")
    assert volume == compose["volumes"]["store"]["name"] and mount == dep["parameters"]["out"]
    scheduler = dep["parameters"]["cluster"].removeprefix("tcp://").split(":")[0]
    assert scheduler in compose["services"]
    (gpus,) = jv["container_create_kwargs"]["device_requests"]
    assert gpus["capabilities"] == [["gpu"]] and gpus["count"] == -1


# ---- docker/ ----------------------------------------------------------------------------------
def test_compose_file_against_the_compose_spec():
    res = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_compose_spec_check_catches_a_typo(tmp_path):
    bad = yaml.safe_load(COMPOSE.read_text())
    bad["services"]["dask-gpu-worker"]["deploy"]["resources"]["reservation"] = {}
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(bad))
    res = subprocess.run(
        [
            _tool("check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(tmp_path / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and "reservation" in res.stdout + res.stderr


def _env_file(tmp_path, auth: str | None = AUTH) -> Path:
    """docker/.env.example as a site fills it in (the login set), or as shipped (auth None)."""
    text = ENV_EXAMPLE.read_text()
    if auth is not None:
        text = re.sub(r"(?m)^PREFECT_API_AUTH_STRING=$", f"PREFECT_API_AUTH_STRING={auth}", text)
        assert auth in text
    path = tmp_path / ".env"
    path.write_text(text)
    return path


def _docker_compose_config(env_file: Path):
    exe = shutil.which("docker-compose")
    if not exe:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    # the shell's variables would win over the env file's: none of this project's
    env = {k: v for k, v in os.environ.items() if k not in _env_example()}
    return subprocess.run(
        [exe, "-f", str(COMPOSE), "--env-file", str(env_file), "config"],
        capture_output=True,
        text=True,
        env=env,
    )


def test_compose_file_with_docker_compose_config(tmp_path):
    """Debian's docker-compose (v1.29) resolves the file without a Docker engine."""
    res = _docker_compose_config(_env_file(tmp_path))
    assert res.returncode == 0, res.stderr
    resolved = yaml.safe_load(res.stdout)
    services = resolved["services"]
    assert {
        "postgres",
        "prefect-server",
        "prefect-worker",
        "dask-scheduler",
        "dask-gpu-worker",
    } <= set(services)
    (dev,) = services["dask-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert dev["capabilities"] == ["gpu"]
    db = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert db.startswith("postgresql+asyncpg://prefect:change-me@postgres:5432/")
    images = {s["image"] for n, s in services.items() if n != "postgres"}
    assert images == {"ntkflow:cuda12"}  # one image: the same versions everywhere
    assert "--resources GPU=1" in " ".join(services["dask-gpu-worker"]["command"])
    # as docker-compose resolved it: the login everywhere, every port on 127.0.0.1
    assert services["prefect-server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"] == AUTH
    for name in set(services) - {"postgres"}:
        assert services[name]["environment"]["PREFECT_API_AUTH_STRING"] == AUTH, name
    assert _open_ports(resolved, {}) == []
    published = [p for s in services.values() for p in _published(s, {})]
    assert sorted(published) == [("127.0.0.1", "4200"), ("127.0.0.1", "8787")]


def test_compose_refuses_to_start_without_the_login(tmp_path):
    """docker/.env.example as shipped has no login: compose stops, naming the variable."""
    res = _docker_compose_config(_env_file(tmp_path, auth=None))
    assert res.returncode != 0
    assert "set PREFECT_API_AUTH_STRING (user:password) in docker/.env" in res.stderr


# ---- nobody gets in uninvited -----------------------------------------------------------------
# Whoever reaches the stack's Prefect API can start flow runs, which the worker starts as
# containers through the host's Docker socket: the API asks for a login, and no port is
# published on every interface of the host.
_INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def _interpolate(value, env: dict):
    """Compose's interpolation of ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    ``${VAR:?error}`` and ``${VAR?error}`` in a string (other values as they are); ValueError
    with the error text for a required variable that is missing."""
    if not isinstance(value, str):
        return value

    def one(m):
        name, op, arg = m.groups()
        val = env.get(name)
        missing = val is None or (val == "" and op and op.startswith(":"))
        if op and op.endswith("?") and missing:
            raise ValueError(f"{name}: {arg}")
        if op and op.endswith("-") and missing:
            return arg
        return val or ""

    return _INTERPOLATION.sub(one, value.replace("$$", "\0")).replace("\0", "$")


def _published(service: dict, env: dict) -> list[tuple[str | None, str]]:
    """(host interface or None for every interface, host port) of each published port, in the
    short syntax (``[HOST:]PUBLISHED:TARGET[/proto]``, ``[v6]:…``, a bare ``TARGET``) and the
    long one (``{target, published, host_ip}``)."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            host = _interpolate(port.get("host_ip"), env)
            out.append((host or None, str(_interpolate(port.get("published", ""), env))))
            continue
        spec = str(_interpolate(port, env)).split("/")[0]
        if spec.startswith("["):  # [v6]:published:target
            host, rest = spec[1:].split("]", 1)
            out.append((host, rest.lstrip(":").split(":")[0]))
            continue
        parts = spec.rsplit(":", 2)
        if len(parts) == 3:
            out.append((parts[0] or None, parts[1]))
        else:  # PUBLISHED:TARGET or TARGET alone (a random host port): every interface
            out.append((None, parts[0] if len(parts) == 2 else ""))
    return out


def _every_interface(host: str | None) -> bool:
    if host in (None, "", "*"):
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified  # 0.0.0.0, ::
    except ValueError:
        return False  # a host name: one interface


def _open_ports(compose: dict, env: dict) -> list[str]:
    """``service: host:port`` of every port published on every interface of the host (and
    every service sharing the host's network)."""
    found = []
    for name, service in compose["services"].items():
        if service.get("network_mode") == "host":
            found.append(f"{name}: network_mode host")
        for host, port in _published(service, env):
            if _every_interface(host):
                found.append(f"{name}: {host or '*'}:{port}")
    return found


def _env_example() -> dict:
    lines = ENV_EXAMPLE.read_text().splitlines()
    pairs = [ln.split("=", 1) for ln in lines if ln.strip() and not ln.startswith("#")]
    return {k.strip(): v.strip() for k, v in pairs}


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # `<<: *anchor` merged


def test_no_published_port_listens_on_every_interface():
    compose = _compose()
    assert compose["services"]["prefect-server"]["ports"]  # there is something to check
    for env in ({}, {**_env_example(), "PREFECT_API_AUTH_STRING": AUTH}):  # defaults, example
        assert _open_ports(compose, env) == []
        hosts = {h for s in compose["services"].values() for h, _ in _published(s, env)}
        assert hosts == {"127.0.0.1"}
    # a site names its cluster-facing interface on purpose
    env = {"PREFECT_HOST": "10.1.2.3", "PREFECT_PORT": "4300"}
    assert _published(compose["services"]["prefect-server"], env) == [("10.1.2.3", "4300")]


@pytest.mark.parametrize(
    "port, every",
    [
        ("4200:4200", True),
        ("${PREFECT_PORT:-4200}:4200", True),
        (4200, True),
        ("0.0.0.0:4200:4200", True),
        ("[::]:4200:4200/tcp", True),
        ("${PREFECT_HOST:-0.0.0.0}:4200:4200", True),
        ({"target": 4200, "published": 4200}, True),
        ({"target": 4200, "published": "4200", "host_ip": "0.0.0.0"}, True),
        ("127.0.0.1:4200:4200", False),
        ("${PREFECT_HOST:-127.0.0.1}:${PREFECT_PORT:-4200}:4200", False),
        ("[::1]:4200:4200", False),
        ("10.1.2.3:4200:4200/tcp", False),
        ({"target": 4200, "published": 4200, "host_ip": "127.0.0.1"}, False),
    ],
)
def test_the_port_check_catches_every_interface(port, every):
    compose = copy.deepcopy(_compose())
    compose["services"]["prefect-server"]["ports"] = [port]
    found = _open_ports(compose, {})
    assert len(found) == int(every), found
    assert all(f.startswith("prefect-server: ") for f in found)


def test_the_api_asks_every_client_for_the_login():
    """The server's PREFECT_SERVER_API_AUTH_STRING and every other ntkflow service's
    PREFECT_API_AUTH_STRING are the same required variable of docker/.env (``${VAR:?…}``)."""
    services = _compose()["services"]
    required = (
        "${PREFECT_API_AUTH_STRING:?set PREFECT_API_AUTH_STRING (user:password) in docker/.env}"
    )
    assert services["prefect-server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"] == required
    clients = [n for n, s in services.items() if s.get("image", "").startswith("${NTKFLOW_IMAGE")]
    assert {"prefect-worker", "dask-scheduler", "dask-gpu-worker"} <= set(clients)
    for name in clients:
        assert services[name]["environment"]["PREFECT_API_AUTH_STRING"] == required, name
    assert "PREFECT_API_AUTH_STRING" in _env_example()
    assert _env_example()["PREFECT_API_AUTH_STRING"] == ""  # no working login ships
    env = services["prefect-server"]["environment"]
    with pytest.raises(ValueError, match="set PREFECT_API_AUTH_STRING"):
        _interpolate(env["PREFECT_SERVER_API_AUTH_STRING"], {"PREFECT_API_AUTH_STRING": ""})
    assert (
        _interpolate(env["PREFECT_SERVER_API_AUTH_STRING"], {"PREFECT_API_AUTH_STRING": AUTH})
        == AUTH
    )
    # the healthcheck probes GET /api/health, which Prefect answers without the login
    assert "/api/health" in " ".join(services["prefect-server"]["healthcheck"]["test"])


_FLOW_RUN_ENV = """
import asyncio, json, sys, uuid
import yaml
from prefect.client.schemas.objects import FlowRun
from prefect_docker.worker import DockerWorker, DockerWorkerJobConfiguration

deps = yaml.safe_load(open(sys.argv[1]))["deployments"]
(dep,) = [d for d in deps if d["name"] == "ntkflow-docker"]
values = {**dep["work_pool"]["job_variables"], "image": "ntkflow:cuda12"}
template = DockerWorker.get_default_base_job_template()
job = asyncio.run(DockerWorkerJobConfiguration.from_template_and_values(template, values))
job.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="run"))
print(json.dumps(job.env))
"""


@pytest.mark.parametrize("auth", [AUTH, None], ids=["worker-has-login", "worker-without"])
def test_docker_flow_runs_get_the_workers_login(auth):
    """prefect-docker's job configuration of the `ntkflow-docker` deployment, in the worker's
    environment from compose: each flow-run container gets the worker's login. The login is
    not written into deploy/prefect.yaml, whose job variables every API client can read."""
    pytest.importorskip("prefect_docker.worker", reason="docker extra")
    import json

    for dep in _deployments():
        jv = json.dumps(dep["work_pool"]["job_variables"])
        assert "AUTH_STRING" not in jv, dep["name"]  # neither a key nor a {{ $VAR }} template
    worker = _compose()["services"]["prefect-worker"]["environment"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    if auth is None:
        worker = {k: v for k, v in worker.items() if k != "PREFECT_API_AUTH_STRING"}
    env.update({k: _interpolate(v, {"PREFECT_API_AUTH_STRING": auth}) for k, v in worker.items()})
    res = subprocess.run(
        [sys.executable, "-c", _FLOW_RUN_ENV, str(PREFECT_YAML)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    flow_run_env = json.loads(res.stdout.splitlines()[-1])
    assert flow_run_env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert flow_run_env.get("PREFECT_API_AUTH_STRING") == auth


def test_dockerfile_passes_hadolint(tmp_path):
    hadolint = _tool("hadolint")
    res = subprocess.run(
        [hadolint, str(ROOT / "docker/Dockerfile")], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install python3\n")
    res = subprocess.run([hadolint, str(bad)], capture_output=True, text=True)
    assert res.returncode == 1 and "DL3006" in res.stdout  # untagged base image is flagged

"""Static checks of what cannot run here (no Docker engine, no Kubernetes): the compose file
against the compose spec (and Debian's docker-compose), the Dockerfile with hadolint, and every
deployment's job variables against its work-pool type's base job template."""

import copy
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


def test_compose_file_with_docker_compose_config(tmp_path):
    """Debian's docker-compose (v1.29) resolves the file without a Docker engine."""
    exe = shutil.which("docker-compose")
    if not exe:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    env_file = tmp_path / ".env"
    env_file.write_text((ROOT / "docker/.env.example").read_text())
    res = subprocess.run(
        [exe, "-f", str(COMPOSE), "--env-file", str(env_file), "config"],
        capture_output=True,
        text=True,
    )
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

"""`ntkflow run` and the deployment share one flow: same parameters, same run folder; bad
clusters and stores fail with one clear error, exit status 2 and no run folder."""

import inspect
import json
import sys

import pytest
import yaml
from test_cli import ntkflow_in_process

from flows.cli import _load, _parser, flow_parameters
from flows.experiment import resolve_config
from ntkflow.config import ConfigError
from ntkflow.config.presets import build_config, load_config

SMOKE = ["run", "--preset", "smoke", "--set", "compute.n_workers=1"]


def test_cli_flags_become_flow_parameters_of_the_same_run(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"trials": 3, "networks": {"width": 32}}))
    argv = [
        "run",
        "--preset",
        "smoke",
        "--config",
        str(cfg_file),
        "--set",
        "seed=4",
        "--formulas",
        "published",
        "--workers",
        "2",
        "--kernels-only",
    ]
    args = _parser().parse_args(argv)
    from_cli = _load(args)  # the command line, parsed once
    params = flow_parameters(args, from_cli)
    assert set(params) == {"preset", "out", "cluster", "kernels_only", "config"}
    # what a flow run records and a retry sends back through the API: JSON
    sent = json.loads(json.dumps({**params, "config": params["config"].model_dump(mode="json")}))
    from_flow = resolve_config(
        **{k: sent[k] for k in ("preset", "cluster", "kernels_only")}, config=sent["config"]
    )
    assert from_flow == from_cli and from_flow.run_id == from_cli.run_id
    assert from_flow.trials == 3 and from_flow.compute.n_workers == 2


def test_sweep_flags_reach_the_flow():
    """Every flag that sets a config key (--widths, --vary, --keep-t, --keep-stale, ...) reaches
    the flow's config."""
    argv = ["sweep", "--preset", "smoke", "--widths", "16,32", "--keep-stale", "--workers", "1"]
    argv += ["--vary", "networks.lr=0.01,0.04", "--keep-t"]
    args = _parser().parse_args(argv)
    params = flow_parameters(args, _load(args))
    config = json.loads(params["config"].model_dump_json())
    from_flow = resolve_config(config=config)
    assert from_flow == _load(args)
    assert from_flow.networks.vary == {"width": [16, 32], "lr": [0.01, 0.04]}
    assert from_flow.networks.keep_t and from_flow.compute.keep_stale
    # the same experiment as a deployment's parameters lands in the same run folder
    sets = ["networks.widths=[16, 32]", "compute.keep_stale=true", "compute.n_workers=1"]
    sets += ["networks.vary.lr=[0.01, 0.04]", "networks.keep_t=true"]
    assert build_config("smoke", sets).run_id == from_flow.run_id


def test_overrides_as_strings_or_mapping_mean_the_same():
    as_strings = build_config("smoke", ["faults.fail_trials=[1]", "networks.width=16"])
    nested = build_config("smoke", {"faults": {"fail_trials": [1]}, "networks.width": 16})
    assert as_strings == nested and as_strings.networks.width == 16
    with pytest.raises(ConfigError, match="overrides: expected a list"):
        build_config("smoke", "trials=3")
    with pytest.raises(ConfigError, match="networks.width"):
        build_config("smoke", {"networks": {"width": -1}})
    assert build_config("smoke", None, "cuda", True).compute.cluster == "cuda"
    assert not build_config("smoke", None, None, True).networks.enabled


def _refused(res, out, *needles):
    assert res.returncode == 2, res.stdout + res.stderr
    err = res.stderr
    for n in needles:
        assert n in err, err
    assert "Traceback" not in err
    assert not (out / load_config("smoke").run_id).exists()  # no half-written run folder


def test_unknown_cluster_spec_file(tmp_path, capsys):
    out = tmp_path / "runs"
    res = ntkflow_in_process(capsys, *SMOKE, "--out", str(out), "--cluster", "deploy/nope.yaml")
    _refused(res, out, "cluster: unknown cluster 'deploy/nope.yaml'", "deploy/slurm-gpu.yaml")


def test_spec_of_a_missing_extra(tmp_path, capsys, monkeypatch):
    """dask-jobqueue absent: its import fails as a package that is not installed fails."""
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # ModuleNotFoundError on import
    with pytest.raises(ModuleNotFoundError):
        import dask_jobqueue  # noqa: F401
    out = tmp_path / "runs"
    spec = "deploy/slurm-gpu.yaml"
    res = ntkflow_in_process(capsys, *SMOKE, "--out", str(out), "--cluster", spec)
    _refused(res, out, "dask_jobqueue is not installed", "pip install 'ntkflow[slurm]'")


def test_store_that_cannot_be_opened(capsys):
    res = ntkflow_in_process(capsys, *SMOKE, "--out", "nosuchfs://bucket/runs")
    assert res.returncode == 2, res.stderr
    assert "--out 'nosuchfs://bucket/runs': not a folder or URL that can be opened" in res.stderr


@pytest.mark.slow
def test_gpu_trainings_on_a_cluster_without_gpus(tmp_path, run_cli, shared_api):
    """A spec whose trainings need GPU=1 but whose workers declare none: refused, not a hang
    (on the shared Prefect server: the refusal is the cluster's, whatever the API)."""
    spec = tmp_path / "cpu-only.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "class": "distributed.LocalCluster",
                "kwargs": {"n_workers": 1, "threads_per_worker": 1, "dashboard_address": ":0"},
                "train_resources": {"GPU": 1},
            }
        )
    )
    out = tmp_path / "runs"
    api = {"PREFECT_API_URL": shared_api}
    res = run_cli(*SMOKE, "--out", str(out), "--cluster", str(spec), env=api, timeout=300)
    _refused(res, out, "need Dask resources {'GPU': 1}", "declared: none")


def test_flow_parameters_defaults_are_the_cli_defaults():
    from flows.experiment import experiment

    args = _parser().parse_args(["run"])
    params = flow_parameters(args, _load(args))
    defaults = {k: v.default for k, v in inspect.signature(experiment.fn).parameters.items()}
    assert params["preset"] == defaults["preset"] and params["out"] == defaults["out"]

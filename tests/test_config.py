"""Config: presets, YAML and --set overrides, run id, and errors that name every bad field."""

import pytest
import yaml

from flows.cli import main
from ntkflow.config import Config, ConfigError, test_size, validate
from ntkflow.config.presets import PRESETS, load_config, parse_set


def test_presets_resolve_to_spec_values():
    paper = load_config("paper")
    assert paper.formulas == "published" and paper.trials == 50 and paper.data.n_obs == 1000
    n = paper.networks
    assert (n.width, n.epochs, n.batch_size, n.lr, n.depths) == (
        10_000,
        [3000, 6000],
        8,
        0.002,
        [1, 2],
    )
    corrected = load_config("paper-corrected")
    assert corrected.formulas == "exact"
    assert corrected.result_dict() | {"formulas": "x"} == paper.result_dict() | {"formulas": "x"}
    assert load_config().trials == 8 and load_config().formulas == "exact"  # quick is the default
    smoke = load_config("smoke")
    assert smoke.trials == 2 and smoke.data.n_obs <= 150
    assert set(PRESETS) == {"paper", "paper-corrected", "quick", "smoke"}


def test_split_sizes_from_fraction():
    assert test_size(1000, 0.33) == 330  # 0.33 * 1000 is 330.00000000000006 in floating point
    assert test_size(1001, 0.33) == 331
    assert test_size(10, 0.5) == 5


def test_set_overrides_parse_yaml_values():
    cfg = load_config(
        "smoke",
        overrides=[
            "trials=4",
            "faults.fail_trials=[1, 3]",
            "networks.enabled=false",
            "kernels=[NTKB3, K1]",
        ],
    )
    assert cfg.trials == 4 and cfg.faults.fail_trials == [1, 3]
    assert cfg.networks.enabled is False and cfg.kernels == ["NTKB3", "K1"]
    assert parse_set("a.b.c=1.5") == {"a": {"b": {"c": 1.5}}}


def test_yaml_file_then_set(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"trials": 3, "data": {"n_obs": 200}}))
    cfg = load_config("quick", f, ["trials=5"])
    assert cfg.trials == 5 and cfg.data.n_obs == 200 and cfg.data.d_in == 15


def test_run_id_hashes_only_what_changes_results():
    base = load_config("smoke")
    same = load_config(
        "smoke",
        overrides=[
            "compute.gram_block=32",
            "faults.fail_trials=[0]",
            "compute.cluster=tcp://1.2.3.4:8786",
        ],
    )
    assert base.run_id == same.run_id
    assert base.run_id != load_config("smoke", overrides=["seed=1"]).run_id
    assert base.run_id != load_config("smoke", overrides=["formulas=published"]).run_id
    off1 = load_config("smoke", overrides=["networks.enabled=false"])
    off2 = load_config("smoke", overrides=["networks.enabled=false", "networks.width=7"])
    assert off1.run_id == off2.run_id  # network settings are irrelevant without networks


INVALID = [
    ("trials=0", "trials"),
    ("trials=-3", "trials"),
    ("trials=abc", "trials"),
    ("seed=-1", "seed"),
    ("formulas=approx", "formulas"),
    ("data.n_obs=-5", "data.n_obs"),
    ("data.d_in=0", "data.d_in"),
    ("data.test_fraction=0", "data.test_fraction"),
    ("data.test_fraction=1.5", "data.test_fraction"),
    ("data.noise_std=-0.1", "data.noise_std"),
    ("data.kernel=NTKX1", "data.kernel"),
    ("kernels=[NTKB1, FOO2]", "kernels"),
    ("kernels=[]", "kernels"),
    ("kernels=[NTKB0]", "kernels"),
    ("krr.ridge=-1", "krr.ridge"),
    ("networks.width=0", "networks.width"),
    ("networks.parameterization=xavier", "networks.parameterization"),
    ("networks.lr=0", "networks.lr"),
    ("networks.batch_size=0", "networks.batch_size"),
    ("networks.validation_split=1", "networks.validation_split"),
    ("networks.epochs=[10]", "networks"),
    ("networks.dtype=float16", "networks.dtype"),
    ("compute.gram_block=1", "compute.gram_block"),
    ("nonsense=1", "nonsense"),
    ("data.colour=red", "data.colour"),
    ("faults.fail_trials=[99]", "faults.fail_trials"),
    # non-finite numbers give NaN or constant results counted as successful trials
    ("data.noise_std=.inf", "data.noise_std"),
    ("data.noise_std=.nan", "data.noise_std"),
    ("krr.ridge=.inf", "krr.ridge"),
    ("networks.lr=.inf", "networks.lr"),
    ("data.test_fraction=.nan", "data.test_fraction"),
    ("compute.memory_budget_gb=.inf", "compute.memory_budget_gb"),
    # strict integers and booleans: YAML true, 1.0 or "1e12" are not silently converted
    ("trials=true", "trials"),
    ("trials=1.0", "trials"),
    ("trials=1e12", "trials"),
    ("seed=false", "seed"),
    ("networks.enabled=1", "networks.enabled"),
    ("networks.depths=[true]", "networks.depths"),
    ("faults.fail_once=0", "faults.fail_once"),
    ("faults.fail_trials=[1.0]", "faults.fail_trials"),
    # bounds: sizes no run can finish are refused up front, with the reason
    ("trials=1000000000000", "trials"),
    ("data.n_obs=10000000", "data.n_obs"),
    ("networks.width=100000000", "networks.width"),
    ("networks.depths=[1, 1000]", "networks.depths"),
    ("kernels=[NTKB1000000]", "kernels"),
    ("data.kernel=GP500", "data.kernel"),
    ("compute.connect_timeout=0", "compute.connect_timeout"),
    ("compute.cluster=Local", "compute.cluster"),
    ("compute.cluster=my scheduler", "compute.cluster"),
]


@pytest.mark.parametrize("item, field", INVALID)
def test_invalid_inputs_name_the_field(item, field):
    with pytest.raises(ConfigError) as e:
        load_config("smoke", overrides=[item])
    assert any(f == field or f.startswith(field) for f, _ in e.value.errors), e.value.errors
    assert field in str(e.value)


def test_valid_edges_still_accepted():
    cfg = load_config(
        "smoke",
        overrides=[
            "networks.lr=1",  # an int where a float is expected is exact
            "data.noise_std=0",
            "kernels=[NTKB64, GP64, K1]",
            "compute.cluster=tcp://10.0.0.1:8786",
            "trials=10000",
        ],
    )
    assert cfg.networks.lr == 1.0 and cfg.kernels[0] == "NTKB64" and cfg.trials == 10_000
    for address in ("127.0.0.1:8786", "tls://sched.example.org:8786", "tcp://[::1]:8786"):
        assert load_config("smoke", overrides=[f"compute.cluster={address}"])


def test_bound_messages_say_why():
    with pytest.raises(ConfigError, match=r"depth 1000000 outside 1\.\.64 \(deeper ReLU"):
        load_config("smoke", overrides=["kernels=[NTKB1000000]"])
    with pytest.raises(ConfigError, match="did you mean 'local'"):
        load_config("smoke", overrides=["compute.cluster=Local"])
    with pytest.raises(ConfigError, match="finite"):
        load_config("smoke", overrides=["networks.lr=.inf"])


def test_empty_preset_is_not_the_default():
    with pytest.raises(ConfigError, match="unknown preset ''"):
        load_config("")


def test_binary_config_file_is_a_config_error(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match="--config"):
        load_config("smoke", f)


def test_published_ntkj3_rejected_but_exact_ok():
    load_config("smoke", overrides=["kernels=[NTKJ3]"])
    with pytest.raises(ConfigError, match="NTKJ3"):
        load_config("smoke", overrides=["kernels=[NTKJ3]", "formulas=published"])


def test_every_bad_field_reported_at_once():
    with pytest.raises(ConfigError) as e:
        validate({"trials": -1, "data": {"n_obs": -2, "kernel": "BAD"}, "bogus": 1})
    fields = {f for f, _ in e.value.errors}
    assert {"trials", "data.n_obs", "data.kernel", "bogus"} <= fields


def test_bad_set_syntax_and_unknown_preset():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config("smoke", overrides=["trials"])
    with pytest.raises(ConfigError, match="preset"):
        load_config("nope")


def test_cli_exits_2_before_any_work(tmp_path, capsys):
    out = tmp_path / "runs"
    rc = main(
        [
            "run",
            "--preset",
            "smoke",
            "--out",
            str(out),
            "--set",
            "trials=0",
            "--set",
            "data.test_fraction=2",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "trials" in err and "data.test_fraction" in err
    assert not out.exists()


def test_cli_presets_lists_all(capsys):
    assert main(["presets"]) == 0
    text = capsys.readouterr().out
    for name in PRESETS:
        assert f"# {name}:" in text
    docs = [d for d in yaml.safe_load_all(text.replace("\n# ", "\n---\n# ")) if d]
    assert all(Config.model_validate(d) for d in docs)

"""Run configuration: pydantic models, presets, YAML files, ``--set`` overrides, the run id.

Every key of ARCHITECTURE.md ("Config keys") is a field here. Validation collects *every* bad
field in one pass and raises :class:`ConfigError`, whose message names each field and value, so a
user fixes a config file once rather than once per error. Kernel names are checked against the
run's formula variant through pydantic's validation context (published NTKJ exists for L = 1, 2).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ntkflow.kernels import parse_kernel_name

PAPER_KERNELS = ["NTKB1", "NTKB2", "NTKJ1", "NTKJ2", "NTKA1", "NTKA2", "GP1", "GP2", "K1"]


class ConfigError(ValueError):
    """Invalid configuration; ``errors`` holds one ``(field, message)`` pair per problem."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        lines = [f"  {field}: {msg}" for field, msg in errors]
        super().__init__(f"invalid configuration ({len(errors)} problem(s)):\n" + "\n".join(lines))

    def __reduce__(self):  # unpickles from its errors (a failed flow run's state keeps it)
        return (ConfigError, (self.errors,))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_kernel(name: str, info: ValidationInfo) -> str:
    formulas = (info.context or {}).get("formulas", "exact")
    parse_kernel_name(name, formulas)  # ValueError names the bad value and the valid forms
    return name


class DataConfig(_Strict):
    """SPEC §3: trial data simulated from a GP whose covariance is ``kernel``."""

    d_in: int = Field(15, ge=1)
    n_obs: int = Field(1000, ge=4)
    test_fraction: float = Field(0.33, gt=0.0, lt=1.0)
    noise_std: float = Field(0.0, ge=0.0)
    kernel: str = "NTKB1"

    _kernel = field_validator("kernel")(_check_kernel)


class KrrConfig(_Strict):
    """SPEC §4: ridge λ added to K(X, X); 0 reproduces the paper."""

    ridge: float = Field(0.0, ge=0.0)


class NetworksConfig(_Strict):
    """SPEC §5: wide ReLU networks, one per depth; ``epochs[i]`` belongs to ``depths[i]``."""

    enabled: bool = True
    depths: list[int] = Field(default_factory=lambda: [1, 2], min_length=1)
    width: int = Field(10_000, ge=1)
    parameterization: Literal["ntkj", "ntkb", "standard"] = "ntkj"
    epochs: list[int] = Field(default_factory=lambda: [3000, 6000], min_length=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(0.002, gt=0.0)
    validation_split: float = Field(0.3, ge=0.0, lt=1.0)
    dtype: Literal["float32", "float64"] = "float32"
    log_every: int = Field(10, ge=1)

    @field_validator("depths", "epochs")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        bad = [x for x in v if x < 1]
        if bad:
            raise ValueError(f"entries must be >= 1, got {bad}")
        return v

    @model_validator(mode="after")
    def _epochs_per_depth(self) -> NetworksConfig:
        if len(self.epochs) != len(self.depths):
            raise ValueError(
                f"epochs: {self.epochs} must give one entry per depth in depths {self.depths}"
            )
        return self


class ComputeConfig(_Strict):
    """Where the work runs; not part of the run id (it does not change results)."""

    cluster: str = "local"
    gram_block: int = Field(2048, ge=16)
    n_workers: int | None = Field(None, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    memory_budget_gb: float = Field(8.0, gt=0.0)  # largest Gram solved in memory


class FaultsConfig(_Strict):
    """Fault injection for tests: raise inside these trials (only on the first attempt if
    ``fail_once``). Not part of the run id, so a rerun without faults reuses the run folder."""

    fail_trials: list[int] = Field(default_factory=list)
    fail_once: bool = False


class Config(_Strict):
    formulas: Literal["exact", "published"] = "exact"
    trials: int = Field(8, ge=1)
    seed: int = Field(0, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    kernels: list[str] = Field(default_factory=lambda: list(PAPER_KERNELS), min_length=1)
    krr: KrrConfig = Field(default_factory=KrrConfig)
    networks: NetworksConfig = Field(default_factory=NetworksConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    faults: FaultsConfig = Field(default_factory=FaultsConfig)

    @field_validator("kernels")
    @classmethod
    def _kernels(cls, v: list[str], info: ValidationInfo) -> list[str]:
        for name in v:
            _check_kernel(name, info)
        dup = sorted({n for n in v if v.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate kernels {dup}")
        return v

    @model_validator(mode="after")
    def _cross(self) -> Config:
        n_test = test_size(self.data.n_obs, self.data.test_fraction)
        if not 2 <= self.data.n_obs - n_test:
            raise ValueError(
                f"data.n_obs: {self.data.n_obs} rows with test_fraction "
                f"{self.data.test_fraction} leave fewer than 2 training rows"
            )
        bad = [k for k in self.faults.fail_trials if not 0 <= k < self.trials]
        if bad:
            raise ValueError(f"faults.fail_trials: {bad} outside 0..{self.trials - 1}")
        return self

    # ---- derived values -------------------------------------------------------------------
    def result_dict(self) -> dict[str, Any]:
        """The part of the config that changes results (hashed into the run id)."""
        d = self.model_dump(mode="json", exclude={"compute", "faults"})
        if not d["networks"]["enabled"]:
            d["networks"] = {"enabled": False}
        return d

    @property
    def run_id(self) -> str:
        blob = json.dumps(self.result_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def methods(self) -> list[str]:
        nets = [f"NN{L}" for L in self.networks.depths] if self.networks.enabled else []
        return nets + list(self.kernels)


def test_size(n_obs: int, test_fraction: float) -> int:
    """SPEC §3: ceil(test_fraction · n_obs), robust to float noise (0.33·1000 → 330)."""
    return math.ceil(round(test_fraction * n_obs, 9))


test_size.__test__ = False  # not a pytest test despite its name


# ---- presets ----------------------------------------------------------------------------------
_PAPER_NETS = {"width": 10_000, "epochs": [3000, 6000], "batch_size": 8, "lr": 0.002}

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"formulas": "published", "trials": 50, "networks": _PAPER_NETS},
    "paper-corrected": {"formulas": "exact", "trials": 50, "networks": _PAPER_NETS},
    "quick": {
        "formulas": "exact",
        "trials": 8,
        "networks": {"width": 512, "epochs": [800, 800], "log_every": 20},
    },
    "smoke": {
        "formulas": "exact",
        "trials": 2,
        "data": {"n_obs": 120},
        "networks": {"width": 64, "epochs": [3, 3], "log_every": 1},
        "compute": {"gram_block": 64},
    },
}
PRESET_HELP = {
    "paper": "the paper's table: published formulas, 50 trials, width-10,000 networks (GPUs)",
    "paper-corrected": "as paper with the exact kernel formulas",
    "quick": "default: exact formulas, 8 trials, small networks; minutes on 2 CPU cores",
    "smoke": "tiny, for tests: 2 trials of 120 rows, networks of width 64",
}
DEFAULT_PRESET = "quick"


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_set(item: str) -> dict[str, Any]:
    """``a.b=VALUE`` → ``{"a": {"b": VALUE}}`` with VALUE parsed as YAML."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise ConfigError([(item, "expected KEY=VALUE with a dotted KEY, e.g. trials=4")])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError([(key, f"value {raw!r} is not valid YAML: {e}")]) from e
    return _nest(key, value)


def _field_name(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith("function-")) or "(config)"


def validate(raw: dict[str, Any]) -> Config:
    """Validate a raw mapping, reporting every bad field at once as a ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError([("(config)", f"expected a mapping, got {type(raw).__name__}")])
    formulas = raw.get("formulas", "exact")
    ctx = {"formulas": formulas if formulas in ("exact", "published") else "exact"}
    try:
        return Config.model_validate(raw, context=ctx)
    except ValidationError as e:
        errors = []
        for err in e.errors():
            field, msg = _field_name(err["loc"]), err["msg"].removeprefix("Value error, ")
            cross = re.match(r"([a-z_.]+): (.*)", msg, re.S)
            if cross:  # a model-level check names its field itself: "networks.epochs: ..."
                prefix = field + "." if field != "(config)" else ""
                field, msg = prefix + cross[1], cross[2]
            elif err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif "input" in err and err["type"] != "missing":
                msg = f"{msg} (got {err['input']!r})"
            errors.append((field, msg))
        raise ConfigError(errors) from None


def load_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    **explicit: Any,
) -> Config:
    """preset ← YAML file ← ``--set`` overrides ← explicit keyword values (CLI flags)."""
    name = preset or DEFAULT_PRESET
    if name not in PRESETS:
        raise ConfigError([("preset", f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")])
    raw = copy.deepcopy(PRESETS[name])
    if config_file is not None:
        path = Path(config_file)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError([("--config", f"cannot read {str(path)!r}: {e}")]) from e
        if not isinstance(loaded, dict):
            raise ConfigError([("--config", f"{str(path)!r} must hold a mapping")])
        raw = _merge(raw, loaded)
    errors = []
    for item in overrides:
        try:
            raw = _merge(raw, parse_set(item))
        except ConfigError as e:
            errors += e.errors
    if errors:
        raise ConfigError(errors)
    for key, value in explicit.items():
        if value is not None:
            raw = _merge(raw, _nest(key, value))
    return validate(raw)


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    node: dict[str, Any] = {}
    cur = node
    parts = dotted.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return node


def to_yaml(cfg: Config, provenance: dict | None = None) -> str:
    """The resolved config as YAML; ``provenance`` (versions, commit, run id) under its own key."""
    d = cfg.model_dump(mode="json")
    if provenance is not None:
        d["provenance"] = {"run_id": cfg.run_id, **provenance}
    return yaml.safe_dump(d, sort_keys=False)

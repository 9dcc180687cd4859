"""Run configuration: pydantic models, presets, YAML files, ``--set`` overrides, the run id.

Every key of ARCHITECTURE.md ("Config keys") is a field here. Validation collects *every* bad
field in one pass and raises :class:`ConfigError`, whose message names each field and value, so a
user fixes a config file once rather than once per error. Kernel names are checked against the
run's formula variant through pydantic's validation context (published NTKJ exists for L = 1, 2).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ntkflow.kernels import parse_kernel_name
from ntkflow.names import (
    MAX_GRID_POINTS,
    NETWORK_REF,
    SWEEP_KEYS,
    kept_t_epochs,
    network_depths,
    network_specs,
)

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
    # allow_inf_nan=False: an infinite noise, ridge or learning rate gives NaN or constant
    # results that would be counted as successful trials; reject them with the field named.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# Sizes beyond what any run can finish are rejected up front with the reason, instead of
# failing hours later (or allocating a list of 10¹² trials). Raise them here if needed.
MAX_DEPTH = 64  # ReLU kernels converge to a constant with depth; cost grows linearly
MAX_TRIALS = 10_000  # trials are listed, scheduled and aggregated one by one in memory
MAX_N_OBS = 200_000  # a Gram matrix of n_obs² float64 (320 GB at the bound) per kernel
MAX_D_IN = 100_000
MAX_WIDTH = 100_000  # a width² weight matrix (40 GB in float32 at the bound)
MAX_EPOCHS = 10_000_000
MAX_WORKERS = 4096


def _int(default, **bounds):
    """A strict integer field: YAML ``true`` or ``1.0`` is not silently taken for 1."""
    return Field(default, strict=True, **bounds)


def _check_kernel(name: str, info: ValidationInfo) -> str:
    formulas = (info.context or {}).get("formulas", "exact")
    parsed = parse_kernel_name(name, formulas)  # ValueError names the bad value and valid forms
    if parsed.depth is not None and not 1 <= parsed.depth <= MAX_DEPTH:
        raise ValueError(
            f"kernel {name!r}: depth {parsed.depth} outside 1..{MAX_DEPTH} (deeper ReLU kernels "
            "converge to a constant and cost grows with depth)"
        )
    return name


class DataConfig(_Strict):
    """SPEC §3: trial data simulated from a GP whose covariance is ``kernel``."""

    d_in: int = _int(15, ge=1, le=MAX_D_IN)
    n_obs: int = _int(1000, ge=4, le=MAX_N_OBS)
    test_fraction: float = Field(0.33, gt=0.0, lt=1.0)
    noise_std: float = Field(0.0, ge=0.0)
    kernel: str = "NTKB1"

    _kernel = field_validator("kernel")(_check_kernel)


class KrrConfig(_Strict):
    """SPEC §4: ridge λ added to K(X, X); 0 reproduces the paper."""

    ridge: float = Field(0.0, ge=0.0)


# the type of each sweepable setting's values (ints strict: YAML ``1.0`` is not a width)
_SWEEP_TYPES = {
    "width": int,
    "lr": float,
    "epochs": int,
    "batch_size": int,
    "parameterization": str,
    "depths": int,
}


def _sweep_value(key: str, v: Any):
    want = _SWEEP_TYPES[key]
    ok = (int, float) if want is float else want
    if isinstance(v, bool) or not isinstance(v, ok):
        what = "a number" if want is float else f"of type {want.__name__}"
        raise ValueError(f"{key}: value {v!r} is not {what}")
    return float(v) if want is float else v


class NetworksConfig(_Strict):
    """SPEC §5: wide ReLU networks, one per depth; ``epochs[i]`` belongs to the i-th depth."""

    enabled: bool = Field(True, strict=True)
    depths: list[StrictInt] = Field(default_factory=lambda: [1, 2], min_length=1)
    width: int = _int(10_000, ge=1, le=MAX_WIDTH)
    parameterization: Literal["ntkj", "ntkb", "standard"] = "ntkj"
    epochs: list[StrictInt] = Field(default_factory=lambda: [3000, 6000], min_length=1)
    batch_size: int = _int(8, ge=1)
    lr: float = Field(0.002, gt=0.0)
    validation_split: float = Field(0.3, ge=0.0, lt=1.0)
    dtype: Literal["float32", "float64"] = "float32"
    log_every: int = _int(10, ge=1)
    # Sweep (`ntkflow sweep --vary networks.lr=...`): one network per depth and grid point of
    # these settings (their values replace the ones above; ``depths`` replaces ``depths``).
    # The key ``widths`` of older configs (`--widths`) is read as ``vary: {width: ...}``.
    vary: dict[str, list[Any]] = Field(default_factory=dict)
    # in a learning-rate sweep, scale each network's epochs to keep t = 2ηE/B of lr and epochs
    keep_t: bool = Field(False, strict=True)
    # SPEC §6 lazy-training diagnostics: fit points of the kernel drift / init error subsample.
    ntk_subsample: int = _int(256, ge=2, le=MAX_N_OBS)

    @model_validator(mode="before")
    @classmethod
    def _widths(cls, data: Any) -> Any:
        """``widths: [W, ...]`` (older configs, ``--widths``) is ``vary: {width: [W, ...]}``."""
        if not isinstance(data, dict) or "widths" not in data:
            return data
        data = dict(data)
        widths = data.pop("widths")
        if widths is not None:
            vary = data.get("vary") or {}
            if not isinstance(vary, dict) or "width" in vary:
                raise ValueError("widths: give the widths once, as networks.vary.width")
            data["vary"] = {"width": widths, **vary}
        return data

    @field_validator("depths", "epochs")
    @classmethod
    def _positive(cls, v: list[int], info: ValidationInfo) -> list[int]:
        bad = [x for x in v if x < 1]
        if bad:
            raise ValueError(f"entries must be >= 1, got {bad}")
        top = MAX_DEPTH if info.field_name == "depths" else MAX_EPOCHS
        big = [x for x in v if x > top]
        if big:
            raise ValueError(f"entries must be <= {top}, got {big}")
        return v

    @field_validator("vary")
    @classmethod
    def _grid(cls, vary: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """Known keys, non-empty lists of distinct values of the setting's type, a bounded
        number of grid points (each value's range is checked by :meth:`_grid_values`)."""
        points, out = 1, {}
        for key, values in vary.items():
            if key not in SWEEP_KEYS:
                raise ValueError(f"{key}: unknown key (a sweep varies {', '.join(SWEEP_KEYS)})")
            if not values:
                raise ValueError(f"{key}: an empty list of values")
            out[key] = values = [_sweep_value(key, v) for v in values]
            if len(set(values)) != len(values):
                raise ValueError(f"{key}: values must be distinct, got {values}")
            points *= len(values)
        if points > MAX_GRID_POINTS:
            raise ValueError(
                f"{', '.join(vary)}: {points} grid points, more than {MAX_GRID_POINTS} "
                "(each is a network trained in every trial)"
            )
        return out

    @model_validator(mode="after")
    def _grid_values(self) -> NetworksConfig:
        """Every swept value is one this section accepts in place of its base value."""
        base = self.model_dump(exclude={"vary", "keep_t"})
        depths = network_depths(self)
        for key, values in self.vary.items():
            for v in values:
                if key == "depths":
                    i = depths.index(v)
                    one = {"depths": [v], "epochs": base["epochs"][i : i + 1] or [1]}
                elif key == "epochs":
                    one = {"epochs": [v] * len(base["depths"])}
                else:
                    one = {key: v}
                if key == "lr" and self.keep_t:
                    one["epochs"] = [kept_t_epochs(e, self.lr, v) for e in base["epochs"]]
                try:
                    NetworksConfig.model_validate({**base, **one})
                except ValidationError as e:
                    msg = e.errors()[0]["msg"].removeprefix("Value error, ")
                    raise ValueError(f"vary.{key}: value {v!r}: {msg}") from None
        if self.keep_t and ("lr" not in self.vary or "epochs" in self.vary):
            raise ValueError(
                "keep_t: keeping t = 2ηE/B scales the epochs of a learning-rate sweep: "
                "vary networks.lr, not networks.epochs"
            )
        return self

    @model_validator(mode="after")
    def _epochs_per_depth(self) -> NetworksConfig:
        depths = network_depths(self)
        if "epochs" not in self.vary and len(self.epochs) != len(depths):
            raise ValueError(f"epochs: {self.epochs} must give one entry per depth in {depths}")
        return self


class ComputeConfig(_Strict):
    """Where the work runs; not part of the run id (it does not change results)."""

    cluster: str = "local"
    gram_block: int = _int(2048, ge=16, le=1 << 20)
    n_workers: int | None = _int(None, ge=1, le=MAX_WORKERS)
    # threads (Dask and math libraries) per worker; None: the cluster's own (local: 1; a spec:
    # its cores / processes and its prologue)
    threads_per_worker: int | None = _int(None, ge=1, le=1024)
    # seconds to wait for a started cluster's first worker (a Slurm job still pending after it
    # stops the run, with squeue's reason, and its jobs are cancelled)
    start_timeout: float = Field(600.0, gt=0.0, le=7 * 86400.0)
    memory_budget_gb: float = Field(8.0, gt=0.0)  # largest Gram solved in memory
    # a trial's lease expires this long after its holder's last heartbeat (ntkflow.lease)
    lease_seconds: float = Field(60.0, gt=0.0)
    # reuse items computed by another code version (listed in summary.json) instead of redoing them
    keep_stale: bool = Field(False, strict=True)
    connect_timeout: float = Field(10.0, gt=0.0, le=600.0)  # seconds to reach --cluster ADDRESS

    @field_validator("cluster")
    @classmethod
    def _cluster(cls, v: str) -> str:
        """local, cuda, a scheduler address (``tcp://host:port``, ``host:port``) or a cluster
        spec file (``deploy/*.yaml``, checked by :func:`ntkflow.compute.resolve_cluster`)."""
        if (
            v in ("local", "cuda")
            or v.endswith((".yaml", ".yml"))
            or re.fullmatch(r"([a-z][a-z0-9+]*://)?(\[[0-9a-fA-F:.]+\]|[^\s/:\[\]]+):\d+/?", v)
        ):
            return v
        hint = (
            f"; did you mean {v.strip().lower()!r}?"
            if v.strip().lower() in ("local", "cuda")
            else ""
        )
        raise ValueError(
            f"{v!r} is neither local, cuda, a scheduler address like tcp://host:8786 nor a "
            f"cluster spec file (deploy/*.yaml){hint}"
        )


class FaultsConfig(_Strict):
    """Fault injection for tests: raise inside these trials (only on the first attempt if
    ``fail_once``). Not part of the run id, so a rerun without faults reuses the run folder."""

    fail_trials: list[StrictInt] = Field(default_factory=list)
    fail_once: bool = Field(False, strict=True)
    # one network of one trial, "K/NAME" (e.g. "1/NN1@w64"): raise inside its training only
    fail_networks: list[str] = Field(default_factory=list)

    @field_validator("fail_networks")
    @classmethod
    def _network_refs(cls, v: list[str]) -> list[str]:
        bad = [r for r in v if not NETWORK_REF.fullmatch(r)]
        if bad:
            raise ValueError(
                f"expected entries like '1/NN1', '1/NN1@w64' or '1/NN1@lr=0.02', got {bad}"
            )
        return v


class Config(_Strict):
    formulas: Literal["exact", "published"] = "exact"
    trials: int = _int(8, ge=1, le=MAX_TRIALS)
    seed: int = _int(0, ge=0, lt=2**63)
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
        if self.networks.vary and not self.networks.enabled:
            raise ValueError(
                f"networks.vary: a sweep ({', '.join(self.networks.vary)}) trains networks, "
                "but networks.enabled is false"
            )
        bad = [k for k in self.faults.fail_trials if not 0 <= k < self.trials]
        if bad:
            raise ValueError(f"faults.fail_trials: {bad} outside 0..{self.trials - 1}")
        return self

    # ---- derived values -------------------------------------------------------------------
    def result_dict(self) -> dict[str, Any]:
        """What determines a trial's data (hashed into the run id): seed, formulas, data.*.

        Not ``trials`` (trial k's data does not depend on how many there are), not the kernels
        or networks (each item is keyed on its own: :mod:`ntkflow.trial.items`), not compute, output
        location or faults.
        """
        data = self.data.model_dump(mode="json")
        return {"seed": self.seed, "formulas": self.formulas, "data": data}

    @property
    def run_id(self) -> str:
        blob = json.dumps(self.result_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def methods(self) -> list[str]:
        specs = network_specs(self)
        nets = [s.name for s in specs]
        theory = [m for s in specs for m in s.theory_methods()]
        return nets + theory + list(self.kernels)

    @property
    def gram_kernels(self) -> list[str]:
        """Kernels whose Grams a trial stores: ``kernels`` plus the analytic NTK of each network's
        family and depth (SPEC §6), computed once per trial and shared by every width. With
        published formulas the networks' NTKs are not those kernels: the theory evaluates the
        exact ones itself."""
        extra = []
        if self.formulas == "exact":
            for s in network_specs(self):
                name = s.kernel
                if name and name not in self.kernels and name not in extra:
                    extra.append(name)
        return list(self.kernels) + extra


def test_size(n_obs: int, test_fraction: float) -> int:
    """SPEC §3: ceil(test_fraction · n_obs), robust to float noise (0.33·1000 → 330)."""
    return math.ceil(round(test_fraction * n_obs, 9))


test_size.__test__ = False  # not a pytest test despite its name


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


def to_yaml(cfg: Config, provenance: dict | None = None) -> str:
    """The resolved config as YAML; ``provenance`` (versions, commit, run id) under its own key."""
    d = cfg.model_dump(mode="json")
    if provenance is not None:
        d["provenance"] = {"run_id": cfg.run_id, **provenance}
    return yaml.safe_dump(d, sort_keys=False)

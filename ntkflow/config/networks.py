"""The ``networks`` section (docs/formulas.md): the trained networks and the grid of a sweep."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ntkflow.config.base import MAX_DEPTH, MAX_EPOCHS, MAX_N_OBS, MAX_WIDTH, Strict, strict_int
from ntkflow.names import MAX_GRID_POINTS, SWEEP_KEYS, kept_t_epochs, network_depths
from ntkflow.parameterizations import PARAMETERIZATION_NAMES

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


class NetworksConfig(Strict):
    """Wide ReLU networks (docs/formulas.md), one per depth; ``epochs[i]`` is the i-th depth's."""

    enabled: bool = Field(True, strict=True)
    depths: list[StrictInt] = Field(default_factory=lambda: [1, 2], min_length=1)
    width: int = strict_int(10_000, ge=1, le=MAX_WIDTH)
    parameterization: Literal[PARAMETERIZATION_NAMES] = "ntkj"  # ntkflow.parameterizations
    epochs: list[StrictInt] = Field(default_factory=lambda: [3000, 6000], min_length=1)
    batch_size: int = strict_int(8, ge=1)
    lr: float = Field(0.002, gt=0.0)
    validation_split: float = Field(0.3, ge=0.0, lt=1.0)
    dtype: Literal["float32", "float64"] = "float32"
    log_every: int = strict_int(10, ge=1)
    # Sweep (`ntkflow sweep --vary networks.lr=...`): one network per depth and grid point of
    # these settings (their values replace the ones above; ``depths`` replaces ``depths``).
    # The key ``widths`` of older configs (`--widths`) is read as ``vary: {width: ...}``.
    vary: dict[str, list[Any]] = Field(default_factory=dict)
    # in a learning-rate sweep, scale each network's epochs to keep t = 2ηE/B of lr and epochs
    keep_t: bool = Field(False, strict=True)
    # lazy-training diagnostics (docs/theory.md): fit points of the drift / init error subsample
    ntk_subsample: int = strict_int(256, ge=2, le=MAX_N_OBS)

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

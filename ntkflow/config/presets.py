"""Presets, and a config from what a person types: preset ← ``--config`` YAML file ← ``--set``
overrides ← explicit values (the CLI's flags). This module is the one reader of ``--config``."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ntkflow.config.base import ConfigError
from ntkflow.config.loading import validate
from ntkflow.config.models import Config

# ---- presets ----------------------------------------------------------------------------------
_PAPER_NETS = {"width": 10_000, "epochs": [3000, 6000], "batch_size": 8, "lr": 0.002}

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"formulas": "published", "trials": 50, "networks": _PAPER_NETS},
    "paper-corrected": {"formulas": "exact", "trials": 50, "networks": _PAPER_NETS},
    "quick": {
        "formulas": "exact",
        "trials": 8,
        # the paper's linearized times t = 2ηE/B = 1.5 (NN1) and 3 (NN2) with 10× its lr
        # (benchmarks/theory_trajectory.py: same trajectory as η/4 with 4× the epochs)
        "networks": {"width": 512, "lr": 0.02, "epochs": [300, 600], "log_every": 10},
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
    "quick": "default: exact formulas, 8 trials, width-512 networks trained to the paper's t",
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


def parse_vary(items: list[str] | tuple[str, ...]) -> dict[str, list[Any]]:
    """``--vary networks.lr=0.005,0.02`` (repeatable) → ``{"lr": [0.005, 0.02]}``, each value
    parsed as YAML; which keys and values a sweep accepts is the config's to say."""
    out: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.startswith("networks.") or key.count(".") != 1:
            why = "expected networks.KEY=V1,V2,... (a sweep varies networks.* settings)"
            raise ConfigError([(f"--vary {key or item}", why)])
        name = key.removeprefix("networks.")
        if name in out:
            raise ConfigError([(f"--vary {key}", "given twice; list its values once")])
        try:
            out[name] = [yaml.safe_load(v) for v in raw.split(",") if v.strip()]
        except yaml.YAMLError as e:
            raise ConfigError([(f"--vary {key}", f"values {raw!r} are not valid YAML")]) from e
    return out


def load_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    **explicit: Any,
) -> Config:
    """preset ← YAML file ← ``--set`` overrides ← explicit keyword values (CLI flags)."""
    name = DEFAULT_PRESET if preset is None else preset  # "" is an error, not the default
    if name not in PRESETS:
        raise ConfigError([("preset", f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")])
    raw = copy.deepcopy(PRESETS[name])
    if config_file is not None:
        path = Path(config_file)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ConfigError(
                [("--config", f"cannot read {str(path)!r}: {yaml_error_text(e)}")]
            ) from e
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


def yaml_error_text(e: Exception) -> str:
    """A YAML (or decoding) error in one line: the problem and where, without the echo."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(e).split())


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    node: dict[str, Any] = {}
    cur = node
    parts = dotted.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return node


# ---- a deployment's parameters --------------------------------------------------------------
Overrides = list[str] | Mapping[str, Any] | None


def override_strings(overrides: Overrides) -> list[str]:
    """``--set`` strings from ``a.b=VALUE`` strings or a mapping (nested or dotted keys).

    A mapping is flattened to its leaves and each value written as JSON, which is YAML, so
    ``{"faults": {"fail_trials": [1]}}`` and ``["faults.fail_trials=[1]"]`` mean the same.
    """
    if overrides is None:
        return []
    if isinstance(overrides, str):
        why = f"expected a list of KEY=VALUE strings or a mapping, got the string {overrides!r}"
        raise ConfigError([("overrides", why)])
    if isinstance(overrides, Mapping):
        return [f"{k}={json.dumps(v)}" for k, v in _leaves(overrides)]
    bad = [o for o in overrides if not isinstance(o, str)]
    if bad:
        raise ConfigError([("overrides", f"entries must be KEY=VALUE strings, got {bad!r}")])
    return list(overrides)


def _leaves(m: Mapping, prefix: str = ""):
    for k, v in m.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            yield from _leaves(v, key + ".")
        else:
            yield key, v


def build_config(
    preset: str | None = None,
    overrides: Overrides = None,
    cluster: str | None = None,
    kernels_only: bool = False,
) -> Config:
    """The validated config of a deployment run from its parameters (ConfigError names each
    bad field)."""
    explicit: dict[str, Any] = {"compute.cluster": cluster}
    if kernels_only:
        explicit["networks.enabled"] = False
    return load_config(preset, None, override_strings(overrides), **explicit)

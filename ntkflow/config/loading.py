"""A config from a raw mapping (every bad field reported at once), and back to YAML."""

from __future__ import annotations

import re
from typing import Any

import yaml
from pydantic import ValidationError

from ntkflow.config.base import ConfigError
from ntkflow.config.models import Config


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

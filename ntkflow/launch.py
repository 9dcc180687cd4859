"""What a run needs before its first trial, shared by ``ntkflow run`` and a deployment run.

Both start the flow ``experiment`` with the same parameters (preset, overrides, out, cluster,
kernels_only); the flow builds the config, checks the cluster plan and the store, and writes the
run folder's ``config.yaml`` through these functions, so both paths fail the same way on bad
input and land in the same run folder (named by the run id) for the same experiment.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import yaml

from ntkflow.config import Config, ConfigError, load_config, to_yaml
from ntkflow.store import Store

Overrides = list[str] | Mapping[str, Any] | None


def override_strings(overrides: Overrides) -> list[str]:
    """``--set`` strings from ``a.b=VALUE`` strings or a mapping (nested or dotted keys).

    A mapping is flattened to its leaves and each value written as JSON, which is YAML, so
    ``{"faults": {"fail_trials": [1]}}`` and ``["faults.fail_trials=[1]"]`` mean the same.
    """
    if overrides is None:
        return []
    if isinstance(overrides, str):
        raise ConfigError(
            [
                (
                    "overrides",
                    f"expected a list of KEY=VALUE strings or a mapping, "
                    f"got the string {overrides!r}",
                )
            ]
        )
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


def file_overrides(path: str) -> list[str]:
    """A ``--config`` YAML file as ``--set`` strings (so the CLI can pass it to the flow)."""
    try:
        loaded = yaml.safe_load(open(path).read()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError([("--config", f"cannot read {path!r}: {e}")]) from e
    if not isinstance(loaded, dict):
        raise ConfigError([("--config", f"{path!r} must hold a mapping")])
    return override_strings(loaded)


def build_config(
    preset: str | None = None,
    overrides: Overrides = None,
    cluster: str | None = None,
    kernels_only: bool = False,
) -> Config:
    """The validated config of a run from the flow's parameters (ConfigError names each field)."""
    explicit = {"compute.cluster": cluster}
    if kernels_only:
        explicit["networks.enabled"] = False
    return load_config(preset, None, override_strings(overrides), **explicit)


def open_store(out: str) -> Store:
    """The store at ``out``; ConfigError (field ``out``) when it cannot be opened."""
    try:
        return Store(out)
    except (ImportError, ValueError, OSError) as e:
        raise ConfigError([("out", f"cannot open the store {out!r}: {e}")]) from e


def write_run_config(cfg: Config, out: str) -> Store:
    """Create ``<out>/<run-id>/config.yaml`` (config + provenance); the run folder's store.

    The file is written atomically and rewritten on every launch (it records the versions and
    commit of the latest launch); it never marks anything as done.
    """
    from ntkflow.report import versions

    store = open_store(out).child(cfg.run_id)
    try:
        store.write_text("config.yaml", to_yaml(cfg, provenance=versions()))
    except OSError as e:
        raise ConfigError([("out", f"cannot write to the store {store.url!r}: {e}")]) from e
    return store


def _sees(url: str, rel: str) -> bool:
    return Store(url).exists(rel)


def check_workers_see(client, store: Store, rel: str = "config.yaml") -> None:
    """ConfigError unless every connected Dask worker can read ``rel`` in the store.

    A local path on the flow's machine is not a shared filesystem: workers elsewhere would
    write their trials where nobody reads them. Asking each worker catches that before any trial.
    """
    try:
        seen = client.run(_sees, store.url, rel, on_error="return")
    except Exception as e:  # noqa: BLE001 - reported as the store problem it is
        raise ConfigError([("out", f"cannot check the store from the workers: {e}")]) from e
    blind = {w: r for w, r in seen.items() if r is not True}
    if blind:
        first = next(iter(blind.items()))
        raise ConfigError(
            [
                (
                    "out",
                    f"{len(blind)} of {len(seen)} Dask worker(s) cannot reach the store "
                    f"{store.url!r} (e.g. {first[0]}: {first[1]!r}); use a filesystem every "
                    f"worker mounts or an fsspec URL (s3://, gcs://, ...)",
                )
            ]
        )

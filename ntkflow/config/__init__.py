"""Run configuration: pydantic models, presets, YAML files, ``--set`` overrides, the run id.

base      ConfigError (every bad field in one message), strict models, size limits
networks  the ``networks`` section and a sweep's grid
models    the other sections and :class:`Config` with its derived values (run id, methods)
loading   :func:`validate` (a raw mapping → Config) and :func:`to_yaml`
presets   presets, and a config from what a person types (preset ← YAML ← ``--set``)
"""

from ntkflow.config.base import ConfigError
from ntkflow.config.loading import to_yaml, validate
from ntkflow.config.models import (
    PAPER_KERNELS,
    ComputeConfig,
    Config,
    DataConfig,
    FaultsConfig,
    KrrConfig,
)
from ntkflow.config.networks import NetworksConfig
from ntkflow.split import test_size

__all__ = [
    "PAPER_KERNELS",
    "ComputeConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "FaultsConfig",
    "KrrConfig",
    "NetworksConfig",
    "test_size",
    "to_yaml",
    "validate",
]

"""What every config section shares: the error that lists every bad field, strict models, limits.

Validation collects *every* bad field in one pass and raises :class:`ConfigError`, whose message
names each field and value, so a user fixes a config file once rather than once per error.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo

from ntkflow.kernels import parse_kernel_name


class ConfigError(ValueError):
    """Invalid configuration; ``errors`` holds one ``(field, message)`` pair per problem."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        lines = [f"  {field}: {msg}" for field, msg in errors]
        super().__init__(f"invalid configuration ({len(errors)} problem(s)):\n" + "\n".join(lines))

    def __reduce__(self):  # unpickles from its errors (a failed flow run's state keeps it)
        return (ConfigError, (self.errors,))


class Strict(BaseModel):
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


def strict_int(default, **bounds):
    """A strict integer field: YAML ``true`` or ``1.0`` is not silently taken for 1."""
    return Field(default, strict=True, **bounds)


def check_kernel(name: str, info: ValidationInfo) -> str:
    formulas = (info.context or {}).get("formulas", "exact")
    parsed = parse_kernel_name(name, formulas)  # ValueError names the bad value and valid forms
    if parsed.depth is not None and not 1 <= parsed.depth <= MAX_DEPTH:
        raise ValueError(
            f"kernel {name!r}: depth {parsed.depth} outside 1..{MAX_DEPTH} (deeper ReLU kernels "
            "converge to a constant and cost grows with depth)"
        )
    return name

"""The run configuration: its sections and the derived values (run id, methods, Grams).

Every key of ARCHITECTURE.md ("Config keys") is a field here or in :mod:`.networks`. Kernel names
are checked against the run's formula variant through pydantic's validation context (published
NTKJ exists for L = 1, 2).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field, StrictInt, ValidationInfo, field_validator, model_validator

from ntkflow.cluster.address import parse_address
from ntkflow.config.base import (
    MAX_D_IN,
    MAX_N_OBS,
    MAX_TRIALS,
    MAX_WORKERS,
    Strict,
    check_kernel,
    strict_int,
)
from ntkflow.config.networks import NetworksConfig
from ntkflow.names import NETWORK_REF, network_specs
from ntkflow.split import test_size

PAPER_KERNELS = ["NTKB1", "NTKB2", "NTKJ1", "NTKJ2", "NTKA1", "NTKA2", "GP1", "GP2", "K1"]


class DataConfig(Strict):
    """docs/formulas.md: trial data simulated from a GP whose covariance is ``kernel``."""

    d_in: int = strict_int(15, ge=1, le=MAX_D_IN)
    n_obs: int = strict_int(1000, ge=4, le=MAX_N_OBS)
    test_fraction: float = Field(0.33, gt=0.0, lt=1.0)
    noise_std: float = Field(0.0, ge=0.0)
    kernel: str = "NTKB1"

    _kernel = field_validator("kernel")(check_kernel)


class KrrConfig(Strict):
    """docs/formulas.md: ridge λ added to K(X, X); 0 reproduces the paper."""

    ridge: float = Field(0.0, ge=0.0)


class ComputeConfig(Strict):
    """Where the work runs; not part of the run id (it does not change results)."""

    cluster: str = "local"
    gram_block: int = strict_int(2048, ge=16, le=1 << 20)
    n_workers: int | None = strict_int(None, ge=1, le=MAX_WORKERS)
    # threads (Dask and math libraries) per worker; None: the cluster's own (local: 1; a spec:
    # its cores / processes and its prologue)
    threads_per_worker: int | None = strict_int(None, ge=1, le=1024)
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
        spec file (``deploy/*.yaml``, checked by :func:`ntkflow.cluster.plans.resolve_cluster`)."""
        if (
            v in ("local", "cuda")
            or v.endswith((".yaml", ".yml"))
            or parse_address(v)  # ValueError for a bad scheme or port, naming it
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


class FaultsConfig(Strict):
    """Fault injection for tests: raise inside these trials (only on the first attempt if
    ``fail_once``). Not part of the run id, so a rerun without faults reuses the run folder."""

    fail_trials: list[StrictInt] = Field(default_factory=list)
    fail_once: bool = Field(False, strict=True)
    # one network of one trial, "K/NAME" (e.g. "1/NN1@w64"): raise inside its training only
    fail_networks: list[str] = Field(default_factory=list)
    fail_aggregate: bool = Field(False, strict=True)  # raise in the aggregation, after the trials

    @field_validator("fail_networks")
    @classmethod
    def _network_refs(cls, v: list[str]) -> list[str]:
        bad = [r for r in v if not NETWORK_REF.fullmatch(r)]
        if bad:
            raise ValueError(
                f"expected entries like '1/NN1', '1/NN1@w64' or '1/NN1@lr=0.02', got {bad}"
            )
        return v


class Config(Strict):
    formulas: Literal["exact", "published"] = "exact"
    trials: int = strict_int(8, ge=1, le=MAX_TRIALS)
    seed: int = strict_int(0, ge=0, lt=2**63)
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
            check_kernel(name, info)
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
        family and depth (docs/theory.md), computed once per trial and shared by every width. With
        published formulas the networks' NTKs are not those kernels: the theory evaluates the
        exact ones itself."""
        extra = []
        if self.formulas == "exact":
            for s in network_specs(self):
                name = s.kernel
                if name and name not in self.kernels and name not in extra:
                    extra.append(name)
        return list(self.kernels) + extra

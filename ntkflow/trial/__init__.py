"""One trial, step by step, against an artifact store (no Prefect here: flows/ wraps these).

    context.py   Trial: paths, data verified once, leases held, fault hook, error record
    items.py     Item and RecordItem; run(): reuse → lease → compute → atomic save → manifest
    data.py      the data item (data.zarr)
    groups.py    Zarr groups written atomically; the data group read back and verified
    gram.py      Gram items (gram/<KERNEL>.zarr)
    kernel.py    kernel-regression items
    network.py   network items (training, initial empirical NTK, lazy-training diagnostics)
    theory.py    theory items (the linearized predictors, docs/theory.md)
    manifest.py  result.json and its manifest: completeness, verification, quarantine, sweep
    steps.py     the leased steps a flow task calls, and run_trial (all steps in one process)

The functions below take ``(cfg, store, k)`` for callers that hold no :class:`Trial`.
"""

from __future__ import annotations

from ntkflow.gram import CorruptArtifact
from ntkflow.trial import manifest
from ntkflow.trial.context import InjectedFault, Trial, load_result, recorded_error, trial_dir
from ntkflow.trial.data import ensure_data
from ntkflow.trial.groups import load_data
from ntkflow.trial.items import COMPUTED, ELSEWHERE, REUSED, item_of, method_key
from ntkflow.trial.steps import finish_part, kernel_part, network_part, run_trial, theory_part

__all__ = [
    "COMPUTED",
    "ELSEWHERE",
    "REUSED",
    "CorruptArtifact",
    "InjectedFault",
    "Trial",
    "check",
    "complete",
    "ensure_data",
    "finish_part",
    "item_of",
    "kernel_part",
    "load_data",
    "load_result",
    "method_key",
    "recorded_error",
    "network_part",
    "run_trial",
    "theory_part",
    "trial_dir",
]


def complete(cfg, store, k: int, deep: bool = False, quiet: bool = False) -> dict | None:
    """Trial k's result when it is complete and intact for ``cfg`` (see manifest.problems)."""
    return manifest.complete(Trial(cfg, store, k), deep, quiet)


def check(cfg, store, k: int, deep: bool = True) -> tuple[dict | None, list[str]]:
    """Trial k's result and its problems; ``deep`` removes what is corrupt (manifest.check)."""
    return manifest.check(Trial(cfg, store, k), deep)

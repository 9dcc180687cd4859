"""What a run folder holds, whichever command computed it: the report covers every verified
item of the requested trials, not only the methods of the command that aggregates.

Commands with different settings share a run folder when their data are the same (``quick``
and ``paper-corrected``, a kernels-only run after a networks run, a sweep and a plain run):
each trial's result.json keeps the records of methods the latest command did not ask for. To
say which settings computed which rows, every aggregation records each of its methods' key
with the settings it hashes (and a network's spec) in ``methods/<key>.json``; a record another
command left is reported with the settings recorded under its key, or as of unknown settings.

A key's entry is written once and never changes (the key hashes the settings), so
aggregations running at once never lose each other's entries: each creates the files it lacks
(:meth:`Store.create_exclusive`) and reads only those it needs. Older folders keep their
``methods.json`` (method → key → entry), still read.
"""

from __future__ import annotations

from typing import NamedTuple

from ntkflow.names import NetSpec, network_specs, parse_method
from ntkflow.store import Store
from ntkflow.trial import Trial, item_of

REGISTRY = "methods"  # <key>.json: {"method", "settings", "spec" (networks)}
OLD_REGISTRY = "methods.json"  # method → key → {"settings", "spec"}: folders before methods/
KIND_ORDER = {"network": 0, "linearized": 1, "kernel": 2}


class Holdings(NamedTuple):
    methods: list[str]  # the command's methods, then the others the results hold
    specs: list[NetSpec]  # the networks among them whose settings are known (the theory's)
    computed_with: dict[str, dict]  # method → {"settings", "by": "this command" | "earlier"}


def _settings(cfg, store: Store) -> dict[str, dict]:
    """Per method of ``cfg``: its key, the settings its key hashes and a network's spec."""
    t = Trial(cfg, store, 0)
    specs = {s.name: s for s in network_specs(cfg)}
    out = {}
    for m in cfg.methods:
        item = item_of(t, m)
        entry = {"key": item.key(m), "settings": _shown(cfg, m, item.section(m), specs)}
        if m in specs:
            entry["spec"] = specs[m]._asdict()
        out[m] = entry
    return out


def _shown(cfg, method: str, section: dict, specs: dict) -> dict:
    """The settings a reader compares: a network's or LIN's training settings, a kernel's."""
    m = parse_method(method)
    if m.kind == "kernel":  # the same for every kernel of a command (the name is the row's)
        return {k: v for k, v in section.items() if k != "kernel"}
    s = specs[m.network]
    return {**{k: v for k, v in s._asdict().items() if k != "tag"}, "formulas": cfg.formulas}


def holdings(cfg, store: Store, results: dict[int, dict | None]) -> Holdings:
    """The methods and networks to report for ``cfg`` given the trials' verified ``results``
    (None: failed), recording this command's settings in ``methods.json``."""
    current = _settings(cfg, store)
    for m, entry in current.items():
        if not store.exists(f"{REGISTRY}/{entry['key']}.json"):
            store.create_exclusive(f"{REGISTRY}/{entry['key']}.json", _entry(m, entry))
    computed = {m: {"settings": e["settings"], "by": "this command"} for m, e in current.items()}
    extra: dict[str, dict] = {}
    for res in results.values():
        for m, rec in ((res or {}).get("methods") or {}).items():
            if m in current or m in extra:
                continue
            known = _recorded(store, m, rec.get("key"))
            extra[m] = known or {}
            computed[m] = {"settings": (known or {}).get("settings"), "by": "an earlier command"}
    known = [NetSpec(**extra[m]["spec"]) for m in sorted(extra) if "spec" in extra[m]]
    # as a command lists them: networks, their linearized predictors, kernels
    order = [s.name for s in known] + [m for s in known for m in s.theory_methods() if m in extra]
    rest = sorted(set(extra) - set(order), key=lambda m: (KIND_ORDER[parse_method(m).kind], m))
    order += rest
    specs = network_specs(cfg) + known
    return Holdings(cfg.methods + order, specs, {m: computed[m] for m in cfg.methods + order})


def _entry(method: str, entry: dict) -> dict:
    return {"method": method, **{k: v for k, v in entry.items() if k != "key"}}


def _recorded(store: Store, method: str, key: str | None) -> dict | None:
    """The settings recorded under ``key`` for ``method`` (``methods/<key>.json``, else an
    older folder's ``methods.json``), or None."""
    if not key:
        return None
    entry = store.read_json(f"{REGISTRY}/{key}.json")
    if entry is not None and entry.get("method") == method:
        return entry
    return ((store.read_json(OLD_REGISTRY) or {}).get(method) or {}).get(key)

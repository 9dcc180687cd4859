"""Items: what a trial stores, each reused, leased, computed and saved the same way.

An item declares
- what it produces (``methods``: records ``items/<METHOD>.json``, or a Zarr group),
- its key: the config section it depends on (:meth:`Item.section`) and the code version of its
  module with everything that module imports (:func:`ntkflow.keys.code_version`), hashed by
  :func:`ntkflow.keys.item_key`,
- its lease (``lease``: a part under ``lease/``; items sharing one are computed under it
  together),
- and a ``compute`` that writes its output atomically and returns it.

:func:`run` does, for every kind of item: reuse check → lease → compute → atomic save → the
record's manifest (its artifacts' files and sizes, checked on every reuse). An item whose key,
data digest, checksum or files are not what the current config and code give is recomputed
(logged), or with ``compute.keep_stale`` kept and listed by the report.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from ntkflow import keys
from ntkflow.gram import CorruptArtifact
from ntkflow.names import parse_method
from ntkflow.trial.context import Trial

log = logging.getLogger("ntkflow.trial")

REUSED, COMPUTED, ELSEWHERE = "reused", "ok", "finished by another run"

KINDS: dict[str, str] = {}  # kind of item → the module defining it (its code's root)

# (field naming an artifact of the trial, field with its SHA-256) in item records
ARTIFACT_FIELDS = (
    ("gram", "gram_sha256"),
    ("predictions", "predictions_sha256"),
    ("ntk0", "ntk0_sha256"),
    ("ntkT", "ntkT_sha256"),
)


class Item:
    """Something trial ``t`` stores. Subclasses set ``kind`` and ``lease`` and implement
    :meth:`section`, :meth:`stored` and :meth:`compute`."""

    kind: ClassVar[str]
    lease: str = "trial"

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "kind" in cls.__dict__:
            if KINDS.setdefault(cls.kind, cls.__module__) != cls.__module__:
                raise TypeError(f"item kind {cls.kind!r} is defined twice")

    def __init__(self, t: Trial):
        self.t = t

    @property
    def cfg(self):
        return self.t.cfg

    def section(self, method: str | None = None) -> dict:
        """The config section that determines the item (``method``: one of its records)."""
        raise NotImplementedError

    @property
    def code(self) -> str:
        """The version of the code computing this item (its module and what it imports)."""
        return code_version(self.kind)

    def key(self, method: str | None = None) -> str:
        return keys.item_key(self.kind, self.section(method), self.code)

    def stored(self, quiet: bool = False) -> Any | None:
        """The verified stored output, or None (why is logged unless ``quiet``)."""
        raise NotImplementedError

    def compute(self) -> Any:
        """Compute and save atomically; returns what :meth:`stored` would now return."""
        raise NotImplementedError


class RecordItem(Item):
    """An item whose output is one verified record per method (``items/<METHOD>.json``); its
    artifacts (Grams, predictions) are named in the record with their files and sizes."""

    methods: list[str]

    def make(self) -> list[dict]:
        """The records of :attr:`methods`, artifacts written (saved by :meth:`compute`)."""
        raise NotImplementedError

    def stored(self, quiet: bool = False) -> list[dict] | None:
        records = [self.record(m, quiet) for m in self.methods]
        return records if all(r is not None for r in records) else None

    def compute(self) -> list[dict]:
        return [self.save(r) for r in self.make()]

    def problem(self, record: dict | None, method: str, data_sha: str | None) -> str:
        """Why a record cannot stand for ``method`` under this config ('' if it can)."""
        if record is None:
            return "missing or unreadable"
        if record.get("method") != method:
            return f"holds {record.get('method')!r}"
        if record.get("data_sha256") != data_sha:
            return "computed from other data"
        key = self.key(method)
        if record.get("key") != key and not self.cfg.compute.keep_stale:
            return f"stale (key {record.get('key')}, current {key})"
        return ""

    def record(self, method: str, quiet: bool = False) -> dict | None:
        """The stored record of ``method`` if it can be reused as it is, else None."""
        t = self.t
        rel = t.item_path(method)
        rec = t.store.read_json(rel, verify=True)
        try:
            problem = self.problem(rec, method, t.data_sha)
        except CorruptArtifact as e:
            problem = f"no valid data ({e})"
        for path, files in (rec or {}).get("artifacts", {}).items():
            if not problem and t.store.files(path) != files:
                problem = f"{path} was changed or removed"
        if problem and rec is not None and not quiet:
            log.warning("recomputing %s: %s", rel, problem)
        return None if problem else rec

    def save(self, record: dict) -> dict:
        """Write a record with its key, code version, data digest and artifacts' files."""
        t, method = self.t, record["method"]
        paths = [record[f] for f, _ in ARTIFACT_FIELDS if f in record]
        record = {
            **record,
            "kind": self.kind,
            "artifacts": {path: t.store.files(path) for path in paths},  # files and sizes
            "key": self.key(method),
            "code": self.code,
            "data_sha256": t.data_sha,
        }
        t.store.write_json(t.item_path(method), record, checksum=True)
        return record


def code_version(kind: str) -> str:
    """The code version of items of ``kind``."""
    return keys.code_version(KINDS[kind])


def code_versions() -> dict[str, str]:
    """The code version of every kind of item (of the item modules imported)."""
    return {kind: code_version(kind) for kind in sorted(KINDS)}


def failed_record(method: str, exc: BaseException, **extra) -> dict:
    """The record of a method that failed deterministically (e.g. diverged) in this trial."""
    error = f"{type(exc).__name__}: {exc}"
    return {"method": method, "status": "failed", "error": error, "rmse": None, **extra}


def run(items: list[Item], on_wait=None, before=None) -> tuple[list, str]:
    """The outputs of ``items`` (which share one trial and one lease) and how they were had:
    REUSED (all stored), COMPUTED (what was missing, under the lease) or ELSEWHERE (another run
    computed them while this one waited for its lease). ``before()`` runs once the lease is held
    and something is to be computed (fault hooks, the stale sweep)."""
    found = [item.stored() for item in items]
    if all(f is not None for f in found):
        return found, REUSED
    t = items[0].t

    def done() -> bool:
        return all(item.stored(quiet=True) is not None for item in items)

    with t.leased(items[0].lease, done, on_wait) as held:
        if not held:
            return [item.stored() for item in items], ELSEWHERE
        if before is not None:
            before()
        out, computed = [], False
        for item, f in zip(items, found, strict=True):
            # what an earlier holder finished while this run waited is reused; once an item
            # was computed here, the later ones are judged again: they may have been computed
            # from what it replaced (the data, which precedes the kernels)
            if f is None or computed:
                f = item.stored(quiet=f is None)
            if f is None:
                f, computed = item.compute(), True
            out.append(f)
        return out, COMPUTED


def get(item: Item, on_wait=None, before=None):
    """The output of one item (see :func:`run`)."""
    return run([item], on_wait, before)[0][0]


# ---- which item produces a method --------------------------------------------------------------
PRODUCERS: dict[str, Any] = {}  # method kind (ntkflow.names) → item factory (t, Method) → item


def producer(kind: str):
    """Register the item factory of methods of ``kind`` ("kernel", "network", "linearized")."""

    def register(factory):
        PRODUCERS[kind] = factory
        return factory

    return register


def item_of(t: Trial, method: str) -> RecordItem:
    """The item that produces ``method`` in trial ``t``."""
    m = parse_method(method)
    return PRODUCERS[m.kind](t, m)


def method_key(t: Trial, method: str) -> str:
    return item_of(t, method).key(method)

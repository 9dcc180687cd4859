"""A trial's result: ``result.json`` with its manifest, how complete and intact it is,
deep verification, quarantine of what is corrupt, and the sweep of what does not belong."""

from __future__ import annotations

import hashlib
import platform

from ntkflow import gram
from ntkflow.gram import CorruptArtifact
from ntkflow.trial.context import Trial
from ntkflow.trial.groups import load_data
from ntkflow.trial.items import ARTIFACT_FIELDS, Item, code_versions, item_of, log


class ResultItem(Item):
    """``result.json``: every method's record and the manifest (files, sizes, SHA-256 of every
    artifact), written atomically and last, so its presence marks the trial complete. It has
    no key of its own: it is current when every method's record is (:func:`problems`)."""

    kind = "result"

    def stored(self, quiet: bool = False) -> dict | None:
        return complete(self.t, quiet=quiet)

    def compute(self, records: list[dict] | None = None) -> dict:
        """Assemble result.json from ``records`` or from the stored, verified item records."""
        t = self.t
        if records is None:
            records = [item_of(t, m).record(m) for m in t.cfg.methods]
            missing = [m for m, r in zip(t.cfg.methods, records, strict=True) if r is None]
            if missing:
                raise CorruptArtifact(f"trial {t.k}: no valid record for {missing}")
        return finish(t, records)


def finish(t: Trial, records: list[dict]) -> dict:
    """Write result.json (atomically, last) from the trial's item records.

    Methods of an earlier result that this config does not ask for (another kernel list) are
    kept, with their manifest entries, so runs with different kernel lists share a trial.
    """
    cfg, store, d = t.cfg, t.store, t.data
    old = t.result() or {}
    keep = {m: it for m, it in (old.get("methods") or {}).items() if m not in cfg.methods}
    methods = {**keep, **{r["method"]: r for r in records}}
    if any(it.get("data_sha256") != d.info["sha256"] for it in methods.values()):
        methods = {r["method"]: r for r in records}  # older items of other data: drop
    data = {"sha256": d.info["sha256"], "files": store.files(t.path("data.zarr"))}
    manifest = {"data.zarr": data}
    for item in methods.values():
        for field, sha in ARTIFACT_FIELDS:
            if field in item:
                rel = item[field].removeprefix(t.dir + "/")
                files = item.get("artifacts", {}).get(item[field])
                manifest[rel] = {"sha256": item.get(sha), "files": files}
    result = {
        "trial": t.k,
        "status": "ok",
        "seed": {"base": cfg.seed, "spawn_key": [t.k]},
        "formulas": cfg.formulas,
        "run_id": cfg.run_id,
        "data": d.info,
        "methods": methods,
        "manifest": manifest,
        "versions": t.versions,
        "code": code_versions(),
        "host": platform.node(),
    }
    store.write_json(t.path("result.json"), result, checksum=True)
    store.remove(t.path("error.json"))
    return result


# ---- completeness and verification ------------------------------------------------------------
def _foreign(t: Trial, result: dict) -> list[str]:
    """A result of another run id or formula variant: reported, never relabelled or removed."""
    out = []
    if result.get("run_id") != t.cfg.run_id:
        out.append(f"result of run {result.get('run_id')}, not of this run {t.cfg.run_id}")
    if result.get("formulas") != t.cfg.formulas:
        out.append(f"formulas {result.get('formulas')!r}, config says {t.cfg.formulas!r}")
    return out


NOT_COMPUTED = "not computed yet"  # a method the result lacks: counted as new, not warned about


def _methods(t: Trial, result: dict) -> list[str]:
    """Methods of the config that the result lacks or holds under another key or data."""
    methods = result.get("methods") or {}
    sha = (result.get("data") or {}).get("sha256")
    out = []
    for m in t.cfg.methods:
        if methods.get(m) is None:
            out.append(f"{m}: {NOT_COMPUTED}")
            continue
        why = item_of(t, m).problem(methods.get(m), m, sha)
        if why:
            out.append(f"{m}: {why}")
    return out


def _damaged(t: Trial, result: dict) -> dict[str, str]:
    """Artifacts whose files differ from the manifest (missing, extra or resized): noticed
    without reading any data."""
    out = {}
    for rel, entry in (result.get("manifest") or {}).items():
        if not isinstance(entry, dict):
            out[rel] = "manifest entry of an older format"
        elif t.store.files(t.path(rel)) != entry.get("files"):
            out[rel] = "files differ from the manifest (missing, extra or resized)"
    return out


def problems(t: Trial, result: dict | None, deep: bool = False) -> list[str]:
    """What is wrong with the trial's result for its config (empty: complete and intact).

    Always: the record verifies, belongs to this run id and variant, holds every method of the
    config with its current key, and every artifact of its manifest has exactly its files and
    sizes. ``deep``: also the SHA-256 of every array and file (what ``ntkflow verify`` does).
    """
    if result is None:
        return ["no result.json (or it fails its checksum)"]
    out = _foreign(t, result) + _methods(t, result)
    out += [f"{rel}: {msg}" for rel, msg in _damaged(t, result).items()]
    if deep and not out:
        out += [f"{rel}: {msg}" for rel, msg in corrupt_artifacts(t, result).items()]
    return out


def complete(t: Trial, deep: bool = False, quiet: bool = False) -> dict | None:
    """The trial's result when it is complete and intact (see :func:`problems`)."""
    result = t.result()
    if result is None:
        return None
    bad = problems(t, result, deep)
    if bad:
        if not quiet:
            _warn_recompute(t, [p for p in bad if not p.endswith(f": {NOT_COMPUTED}")])
        return None
    return result


_warned: set[tuple[str, str]] = set()  # (trial folder, warning): each said once per process
SHOWN = 5  # problems named in a warning


def _warn_recompute(t: Trial, bad: list[str]) -> None:
    """One warning naming, briefly, what the trial stores that cannot be reused (methods never
    computed are no problem: the run counts them as new)."""
    if not bad:
        return
    brief = [p.split(" (", 1)[0].replace(": ", " (", 1) + ")" if ": " in p else p for p in bad]
    more = f" … and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
    named = ", ".join(brief[:SHOWN]) + more
    msg = f"{t.name}: {len(bad)} stored item(s) must be recomputed: {named}"
    if (t.store.url + t.dir, msg) not in _warned:
        _warned.add((t.store.url + t.dir, msg))
        log.warning("%s", msg)


def new_methods(t: Trial) -> list[str]:
    """The config's methods with no record in the trial's folder: computed for the first time."""
    stored = set(t.store.listdir(t.path("items")))
    return [m for m in t.cfg.methods if f"{m}.json" not in stored]


def check(t: Trial, deep: bool = True) -> tuple[dict | None, list[str]]:
    """The trial's result and its problems; with ``deep``, every damaged or corrupt artifact
    (and what was computed from it) is removed so that the next run recomputes exactly that.
    A result of another run id or variant is only reported."""
    result = t.result()
    if result is None or not deep or _foreign(t, result):
        return result, problems(t, result)
    bad = _damaged(t, result)
    bad.update({r: m for r, m in corrupt_artifacts(t, result).items() if r not in bad})
    if bad:
        quarantine(t, result, list(bad))
    return result, _methods(t, result) + [f"{rel}: {msg}" for rel, msg in bad.items()]


def corrupt_artifacts(t: Trial, result: dict) -> dict[str, str]:
    """What is wrong with every manifest artifact that fails its checksums."""
    out = {}
    for rel, entry in (result.get("manifest") or {}).items():
        full = t.path(rel)
        try:
            sha = entry["sha256"]
            if rel == "data.zarr":
                if load_data(t.store, t.k).info["sha256"] != sha:
                    raise CorruptArtifact("data differ from the manifest")
            elif rel.endswith(".zarr"):
                group, attrs = gram.open_gram(t.store.zarr_store(full, read_only=True))
                if attrs["sha256"] != sha:
                    raise CorruptArtifact("checksums differ from the manifest")
                for name in gram.ARRAYS:
                    gram.verify_array(group, name, attrs)
            elif hashlib.sha256(t.store.read_bytes(full)).hexdigest() != sha:
                raise CorruptArtifact("checksum mismatch")
        except Exception as e:  # noqa: BLE001 - whatever the reason, the artifact is bad
            out[rel] = f"{type(e).__name__}: {e}"
    return out


def quarantine(t: Trial, result: dict, bad: list[str]) -> None:
    """Remove corrupted artifacts (trial-relative paths), the item records computed from them
    and result.json, so the next run recomputes exactly those (logged)."""
    for method, item in (result.get("methods") or {}).items():
        used = {item.get(field) for field, _ in ARTIFACT_FIELDS}
        if used & {t.path(rel) for rel in bad} or "data.zarr" in bad:
            t.store.remove(t.item_path(method))
    for rel in bad:
        log.warning("removing corrupted %s: the next run recomputes it", t.path(rel))
        t.store.remove(t.path(rel))
    t.store.remove(t.path("result.json"))


# ---- what does not belong ---------------------------------------------------------------------
STALE_AGE = 3600.0  # temporary files older than this belong to dead writers


def sweep(t: Trial) -> None:
    """Remove what cannot belong in the trial's folder (logged): anything in ``gram/`` that is
    not a ``<KERNEL>.zarr`` group (e.g. a ``gram/zarr.json`` group with arrays ``train_train``
    beside the kernels, left by an interrupted writer of an old version), a ``zarr.json`` at the
    trial's top level, leftovers of replaced artifacts and old temporary files."""
    store, base = t.store, t.dir
    strays = [t.path("zarr.json")] if store.exists(t.path("zarr.json")) else []
    for sub in ("", "/gram", "/items", "/nets"):
        for name in store.listdir(base + sub):
            rel = f"{base}{sub}/{name}"
            if name.startswith(".trash-"):
                strays.append(rel)
            elif name.startswith(".tmp-"):
                age = store.age(rel)
                if age is not None and age > STALE_AGE:
                    strays.append(rel)
            elif sub == "/gram" and not name.endswith(".zarr"):
                strays.append(rel)
    for rel in strays:
        log.warning("removing %s: it does not belong there", rel)
        store.remove(rel)

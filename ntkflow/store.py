"""Artifact store: one interface over a local folder or any fsspec URL.

Files are written atomically (temporary name, then rename), so a reader never sees half a file;
JSON records carry a SHA-256 of their content and are verified on read, so a truncated or edited
``result.json`` is treated as missing (logged) and recomputed, never used.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from typing import Any

import fsspec

log = logging.getLogger(__name__)
_MEMORY_LOCK = threading.Lock()  # memory:// checks-then-creates: serialise exclusive creates
# S3's LastModified has whole-second resolution (AWS and moto_server list ``…T10:14:34.000Z``):
# an object may be up to 1 s younger than its stamp, so object-store ages (Store.age) count from
# the end of the stamp's second, never more than the truth.
STAMP_RESOLUTION = 1.0


def _canonical(payload: dict) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()


class Store:
    """Paths are relative to the store's root, with ``/`` separators."""

    def __init__(self, root: str | os.PathLike):
        root = str(root)
        self.fs, path = fsspec.core.url_to_fs(root, **_fs_options(root))
        self.local = "file" in _protocols(self.fs)
        self.root = os.path.abspath(path) if self.local else path.rstrip("/")
        self.url = self.root if self.local else f"{_protocols(self.fs)[0]}://{self.root}"

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}".rstrip("/") if rel else self.root

    def child(self, rel: str) -> Store:
        return Store(self.url + "/" + rel)

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Atomic: on a filesystem a temporary sibling, fsync'ed, then renamed over the target;
        on an object store one PUT, which readers see whole or not at all."""
        target = self.path(rel)
        parent = target.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        if self.local:
            tmp = _durable_temp(parent, data, "-" + target.rsplit("/", 1)[1])
            try:
                os.replace(tmp, target)
            except IsADirectoryError:  # a folder where this file belongs: never ours, replace it
                log.warning("replacing the folder %s by a file", target)
                shutil.rmtree(target, ignore_errors=True)
                os.replace(tmp, target)
        else:
            self.fs.pipe_file(target, data)

    def write_folder(self, rel: str, files: dict) -> None:
        """Write ``files`` (path under ``rel`` → bytes or any contiguous buffer, written without
        a copy on a filesystem) into the folder ``rel``, which has a unique temporary name until
        :meth:`commit_dir` (so no file needs its own atomic write): plain writes on a
        filesystem, one batch of PUTs on an object store."""
        base = self.path(rel)
        if not self.local:
            self.fs.pipe({f"{base}/{name}": bytes(data) for name, data in files.items()})
            return
        for name, data in files.items():
            path = f"{base}/{name}"
            os.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def write_json(self, rel: str, payload: dict, checksum: bool = False, sort_keys=True) -> None:
        if checksum:
            payload = {**payload, "sha256": hashlib.sha256(_canonical(payload)).hexdigest()}
        self.write_bytes(
            rel, json.dumps(payload, indent=1, sort_keys=sort_keys, default=str).encode()
        )

    def read_json(self, rel: str, verify: bool = False) -> dict[str, Any] | None:
        """The record at ``rel``, or None when it is missing or fails verification (logged)."""
        if not self.exists(rel):
            return None
        try:
            payload = json.loads(self.read_bytes(rel))
        except (ValueError, OSError) as e:  # not JSON, a folder, vanished meanwhile, …
            log.warning("unreadable %s in %s (%s): ignoring it", rel, self, e)
            return None
        if verify:
            digest = payload.pop("sha256", None) if isinstance(payload, dict) else None
            if digest != hashlib.sha256(_canonical(payload)).hexdigest():
                log.warning("checksum mismatch for %s in %s: ignoring it", rel, self)
                return None
        return payload

    def listdir(self, rel: str = "") -> list[str]:
        if not self.exists(rel):
            return []
        return sorted(
            p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path(rel), detail=False)
        )

    def remove(self, rel: str, missing_ok: bool = True) -> None:
        try:
            if self.local and not os.path.isdir(self.path(rel)):
                os.remove(self.path(rel))
            elif self.local:
                shutil.rmtree(self.path(rel))
            else:
                self.fs.rm(self.path(rel), recursive=True)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def create_exclusive(self, rel: str, payload: dict) -> bool:
        """Create the JSON record ``rel`` only if nothing is there; False if something is.

        Atomic and complete when it succeeds: on a filesystem a fully written temporary file is
        hard-linked to the target (``link`` fails if the target exists, also on NFS); elsewhere
        fsspec's exclusive open ``xb`` (s3fs: a conditional PUT, ``If-None-Match: *``; the
        in-process memory filesystem: under a lock). README, "Several runs on one store".
        """
        data = json.dumps(payload, indent=1, sort_keys=True).encode()
        target = self.path(rel)
        parent = target.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        if self.local:
            tmp = _durable_temp(parent, data)
            try:
                os.link(tmp, target)
                return True
            except FileExistsError:
                return False
            finally:
                os.remove(tmp)
        try:
            with _MEMORY_LOCK if "memory" in _protocols(self.fs) else contextlib.nullcontext():
                with self.fs.open(target, "xb") as f:
                    f.write(data)
            return True
        except FileExistsError:
            return False

    def files(self, rel: str) -> dict[str, int]:
        """Every file under ``rel`` (relative path → size in bytes); {} if there is none."""
        base = self.path(rel)
        if self.local:  # os.walk: a tenth of fsspec's find (a stat per entry, no info dicts)
            return _local_files(base)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        return {
            p[len(base) :].lstrip("/"): int(info["size"])
            for p, info in found.items()
            if (p == base or p.startswith(base + "/")) and info.get("type") != "directory"
        }

    def age(self, rel: str) -> float | None:
        """Seconds since ``rel`` was last modified, never more than the truth (clocks in sync),
        so what a sweep finds older than a threshold is (None if the store cannot say). On
        object stores a folder is a prefix with no date of its own: its newest object's age,
        from the end of its stamp's second (STAMP_RESOLUTION)."""
        try:
            if self.local:
                return time.time() - os.lstat(self.path(rel)).st_mtime
            found = self.fs.find(self.path(rel), detail=True, withdirs=False)
        except FileNotFoundError:
            return None
        stamps = [_stamp(info) for info in found.values()]
        stamps = [s for s in stamps if s is not None]
        return max(0.0, time.time() - max(stamps) - STAMP_RESOLUTION) if stamps else None

    def commit_dir(self, tmp: str, rel: str) -> None:
        """Move the folder ``tmp`` (written under a unique temporary name) to ``rel``,
        replacing whatever is there. On a filesystem a directory rename (atomic); on object
        stores the files are copied in parallel (lists of paths: no listing per file), the
        root ``zarr.json`` last, so a partly copied group never opens, then ``tmp`` is removed
        in one batch. Readers never see a half-written folder at ``rel``."""
        target, src = self.path(rel), self.path(tmp)
        if self.local:
            for _ in range(5):
                if os.path.lexists(target):  # a stale, corrupt or foreign artifact
                    trash = f"{target.rsplit('/', 1)[0]}/.trash-{uuid.uuid4().hex}"
                    try:
                        os.rename(target, trash)
                    except FileNotFoundError:
                        pass
                    else:
                        self.remove_abs(trash)
                try:
                    os.rename(src, target)
                    return
                except OSError as e:  # another writer committed in between: replace it again
                    if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
                        raise
            raise OSError(f"could not commit {rel}: it keeps being replaced")
        self.remove(rel)
        files = self.files(tmp)
        root = ["zarr.json"] if "zarr.json" in files else []
        for batch in ([n for n in files if n != "zarr.json"], root):  # the group's root last
            if batch:  # path lists: no listing or lookup per file, copies in parallel
                self.fs.copy([f"{src}/{n}" for n in batch], [f"{target}/{n}" for n in batch])
        self.remove(tmp)

    def remove_abs(self, path: str) -> None:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    def temp_name(self, rel: str) -> str:
        """A unique sibling of ``rel`` for writing it before :meth:`commit_dir`."""
        parent, _, name = rel.rpartition("/")
        tmp = f".tmp-{uuid.uuid4().hex}-{name}"
        return f"{parent}/{tmp}" if parent else tmp

    def zarr_store(self, rel: str, read_only: bool = False):
        """A Zarr v3 store for the group at ``rel``."""
        import zarr.storage

        if self.local:
            return zarr.storage.LocalStore(self.path(rel), read_only=read_only)
        url = self.url + "/" + rel
        return zarr.storage.FsspecStore.from_url(
            url, storage_options=_fs_options(url), read_only=read_only
        )


def _fs_options(url: str) -> dict:
    """How the store's filesystems (its own and Zarr's) are opened. No cached listings: other
    runs and workers write here all the time, and s3fs keeps a listing for good. On S3, one
    GET per object: by default s3fs asks its size first (a HEAD, plus a listing if missing) to
    read objects over 50 MiB in parallel ranges (a Gram chunk: 32 MiB at the default block)."""
    options: dict = {"use_listings_cache": False}
    if fsspec.core.split_protocol(url)[0] in ("s3", "s3a"):
        options["max_concurrency"] = 1
    return options


def _durable_temp(parent: str, data: bytes, suffix: str = "") -> str:
    """A new temporary file ``parent/.tmp-<uuid><suffix>`` holding ``data``, flushed and
    fsync'ed: whole on disk before it is renamed or linked into place, so a crash leaves either
    nothing or a complete file at the target (and a ``.tmp-`` file that sweeps remove)."""
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}{suffix}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _local_files(base: str) -> dict[str, int]:
    if os.path.isfile(base):
        return {"": os.path.getsize(base)}
    out = {}
    for folder, _, names in os.walk(base):
        prefix = folder[len(base) :].strip("/")
        for name in names:
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile (a lease, a commit)
                size = os.stat(os.path.join(folder, name)).st_size
                out[f"{prefix}/{name}" if prefix else name] = size
    return out


def _stamp(info: dict) -> float | None:
    stamp = info.get("mtime") or info.get("LastModified") or info.get("created")
    if hasattr(stamp, "timestamp"):
        stamp = stamp.timestamp()
    return float(stamp) if stamp else None


def _protocols(fs) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)

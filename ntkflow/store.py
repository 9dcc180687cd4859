"""Artifact store: one interface over a local folder or any fsspec URL.

Files are written atomically (temporary name, then rename), so a reader never sees half a file;
JSON records carry a SHA-256 of their content and are verified on read, so a truncated or edited
``result.json`` is treated as missing (logged) and recomputed, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from typing import Any

import fsspec

log = logging.getLogger(__name__)


def _canonical(payload: dict) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()


class Store:
    """Paths are relative to the store's root, with ``/`` separators."""

    def __init__(self, root: str | os.PathLike):
        root = str(root)
        self.fs, path = fsspec.core.url_to_fs(root)
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
        """Atomic: write a temporary sibling, then rename it over the target."""
        target = self.path(rel)
        parent = target.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{target.rsplit('/', 1)[1]}"
        if self.local:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        else:
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, target)

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
        except (ValueError, UnicodeDecodeError) as e:
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

    def remove(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.rm(self.path(rel), recursive=True)

    def zarr_store(self, rel: str, read_only: bool = False):
        """A Zarr v3 store for the group at ``rel``."""
        import zarr.storage

        if self.local:
            return zarr.storage.LocalStore(self.path(rel), read_only=read_only)
        return zarr.storage.FsspecStore.from_url(self.url + "/" + rel, read_only=read_only)


def _protocols(fs) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)

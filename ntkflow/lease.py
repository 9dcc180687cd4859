"""Per-trial leases: at most one live run computes a given trial (or network) at a time.

A lease is a folder of generation files ``<rel>/00000007.json`` in the artifact store; the
highest generation is the current lease. Each file records its holder (owner id, host, pid),
a heartbeat time and an expiry. Taking a lease is one *create-if-absent* of the next generation
(:meth:`Store.create_exclusive`: ``os.link`` on a filesystem, a conditional PUT on object
stores), so of two runs racing for the same trial — or for the same expired lease — exactly
one wins; the loser sees a live holder and waits. A background thread renews the heartbeat
every ``ttl / 4`` seconds while the holder computes; a holder that dies stops renewing, and its
lease is taken over once it expires (at once when the holder ran on this host and its process is
gone). Leases only prevent duplicate work: correctness never depends on them, since every
artifact is committed atomically under a unique temporary name and verified on reuse, so even
two holders (a holder paused beyond its expiry) cannot corrupt the store.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import threading
import time
import uuid

from ntkflow.store import Store

log = logging.getLogger(__name__)
_GEN = re.compile(r"^(\d{8})\.json$")
_ACTIVE: set[str] = set()  # owner ids of leases held by live threads of this process


def enabled() -> bool:
    """Leases can be switched off (``NTKFLOW_LEASES=0``) only to measure their overhead."""
    return os.environ.get("NTKFLOW_LEASES", "1") != "0"


def host_id() -> str:
    """This machine's name in lease records (``NTKFLOW_HOST_ID`` overrides it, e.g. for
    containers that share a host name but not a process table)."""
    return os.environ.get("NTKFLOW_HOST_ID") or platform.node()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) is dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def expired(record: dict | None, now: float | None = None) -> bool:
    """Whether a lease record no longer protects its trial: unreadable, released, past its
    expiry, or held by a process of this host that is gone."""
    if not isinstance(record, dict) or record.get("released"):
        return True
    try:
        if (now or time.time()) > float(record["expires"]):
            return True
        if record.get("host") == host_id():
            pid = int(record["pid"])
            if pid == os.getpid():
                return record.get("owner") not in _ACTIVE
            return not _alive(pid)
    except (KeyError, TypeError, ValueError):
        return True
    return False


class Lease:
    """A held lease; renews itself in a thread until :meth:`release` (or ``with`` exits)."""

    def __init__(self, store: Store, rel: str, gen: int, record: dict, ttl: float):
        self.store, self.rel, self.gen, self.record, self.ttl = store, rel, gen, record, ttl
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease {rel}", daemon=True)
        _ACTIVE.add(record["owner"])
        self._thread.start()

    @property
    def path(self) -> str:
        return f"{self.rel}/{self.gen:08d}.json"

    def _write(self, **changes) -> None:
        self.record = {**self.record, **changes}
        self.store.write_json(self.path, self.record)

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                if max(_generations(self.store, self.rel), default=-1) > self.gen:
                    log.warning("lease %s was taken over by another run", self.rel)
                    self.lost.set()
                    return
                now = time.time()
                self._write(heartbeat=now, expires=now + self.ttl)
            except Exception as e:  # noqa: BLE001 - the next beat retries
                log.warning("lease %s: heartbeat failed: %s", self.rel, e)

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        _ACTIVE.discard(self.record["owner"])
        if not self.lost.is_set():
            try:
                self._write(released=True, expires=0.0)
            except Exception as e:  # noqa: BLE001 - an unreleased lease simply expires
                log.warning("lease %s: release failed: %s", self.rel, e)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class _NoLease:
    lost = threading.Event()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def release(self):
        pass


def _generations(store: Store, rel: str) -> list[int]:
    return [int(m[1]) for name in store.listdir(rel) if (m := _GEN.match(name))]


def try_acquire(store: Store, rel: str, ttl: float) -> tuple[Lease | None, dict | None]:
    """(the lease, None) if taken now, else (None, the live holder's record)."""
    holder = None
    for _ in range(8):
        gens = _generations(store, rel)
        gen = max(gens, default=-1)
        if gen >= 0:
            holder = store.read_json(f"{rel}/{gen:08d}.json")
            if holder is None and not store.exists(f"{rel}/{gen:08d}.json"):
                continue  # removed while we looked: look again
            if not expired(holder):
                return None, holder
            if holder is not None and not holder.get("released"):
                log.warning(
                    "lease %s of %s (host %s, pid %s) expired: taking the work over",
                    rel,
                    holder.get("owner"),
                    holder.get("host"),
                    holder.get("pid"),
                )
        now = time.time()
        record = {
            "owner": uuid.uuid4().hex,
            "host": host_id(),
            "pid": os.getpid(),
            "acquired": now,
            "heartbeat": now,
            "expires": now + ttl,
            "ttl": ttl,
        }
        _ACTIVE.add(record["owner"])  # before it exists: other threads of this process see it live
        if store.create_exclusive(f"{rel}/{gen + 1:08d}.json", record):
            for old in gens:  # superseded generations: nobody reads them any more
                store.remove(f"{rel}/{old:08d}.json", missing_ok=True)
            return Lease(store, rel, gen + 1, record, ttl), None
        _ACTIVE.discard(record["owner"])
        # another run created that generation first: look again
    return None, holder


def acquire_or_wait(
    store: Store, rel: str, ttl: float, done, what: str = "", poll=None, on_wait=None
):
    """The lease at ``rel``, or None once ``done()`` says another run finished the work.

    While a live holder has the lease, poll (every ``poll`` seconds) until the work is done
    elsewhere (→ None) or the lease expires (→ taken over). Never fails because of a holder.
    ``on_wait(message)`` is told once that the work is running elsewhere (default: logged).
    """
    if not enabled():
        return _NoLease()
    poll = poll or max(0.2, min(2.0, ttl / 10))
    said = False
    while True:
        lease, holder = try_acquire(store, rel, ttl)
        if lease is not None:
            return lease
        if done():
            return None
        if not said:
            h = holder or {}
            msg = f"{what or rel} is running elsewhere (host {h.get('host')}, pid {h.get('pid')})"
            (on_wait or log.info)(msg + ": waiting for it")
            said = True
        time.sleep(poll)

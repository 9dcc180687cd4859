"""The one reading of a Dask scheduler address, shared by the config, the preflight and the
cluster plan (no import from the rest of ntkflow, so the config can use it).

Accepted as Dask accepts them: ``host:port``, ``[v6]:port`` and either with a scheme
(``tcp://``, ``tls://``, ``ucx://``, ``ws://``, ``wss://``); a missing scheme means ``tcp://``,
as in :func:`distributed.comm.addressing.parse_address`. A port is required: a scheduler always
has one, and a bare word is a cluster name or a spec file instead.
"""

from __future__ import annotations

import ipaddress
import re

SCHEMES = ("tcp", "tls", "ucx", "ws", "wss")

_SCHEME = r"[a-z][a-z0-9+]*"
_ADDRESS = re.compile(
    rf"(?:(?P<scheme>{_SCHEME})://)?"
    r"(?:\[(?P<v6>[^\[\]/\s]+)\]|(?P<host>[A-Za-z0-9_.-]+))"
    # a trailing slash, as in a URL copied from a browser, is dropped
    r":(?P<port>\d{1,5})/?"
)


def parse_address(text: str) -> str | None:
    """``text`` as ``scheme://host:port`` if it is a scheduler address, else None.

    ``"[::1]:8786"`` → ``"tcp://[::1]:8786"``; ``"local"``, ``"deploy/slurm.yaml"`` → None. An
    address with an unknown scheme, no port, a port above 65535 or something other than an IPv6
    address in brackets is a ValueError naming it.
    """
    m = _ADDRESS.fullmatch(text)
    if m is None:
        if re.match(_SCHEME + "://", text):
            raise ValueError(
                f"{text!r} is not a scheduler address: expected SCHEME://HOST:PORT, "
                f"e.g. tcp://127.0.0.1:8786 or tcp://[::1]:8786"
            )
        return None
    scheme = m["scheme"] or "tcp"
    if scheme not in SCHEMES:
        raise ValueError(
            f"unknown scheme {scheme!r} in scheduler address {text!r}: "
            f"expected one of {', '.join(s + '://' for s in SCHEMES)}"
        )
    port = int(m["port"])
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range in scheduler address {text!r}")
    if m["v6"]:
        try:
            ipaddress.IPv6Address(m["v6"])  # a zone is allowed: [fe80::1%eth0]
        except ValueError as e:
            raise ValueError(f"[{m['v6']}] in scheduler address {text!r}: {e}") from e
    host = f"[{m['v6']}]" if m["v6"] else m["host"]
    return f"{scheme}://{host}:{port}"

"""The Prefect API of one command: the one Prefect has configured (the environment, else the
active profile, Prefect Cloud included), else Prefect's embedded server (:mod:`flows.embedded`),
with a one-certificate CA file for its clients."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from flows.embedded import EmbeddedAPI
from flows.internals import flush_logs

# The settings a Prefect client needs to reach its API, as environment variables: the field of
# Prefect's ``settings.api`` each one sets.
API_SETTINGS = {
    "PREFECT_API_URL": "url",
    "PREFECT_API_KEY": "key",
    "PREFECT_API_AUTH_STRING": "auth_string",
    "PREFECT_API_SSL_CERT_FILE": "ssl_cert_file",
    "PREFECT_API_TLS_INSECURE_SKIP_VERIFY": "tls_insecure_skip_verify",
}


def configured_api_url() -> str | None:
    """The API URL as Prefect resolves it, None when it has none (it would run an ephemeral
    server): PREFECT_API_URL in the environment (an empty one is none, as for Prefect), else
    what its settings read from the files it reads.

    Importing Prefect costs ~0.8 s, before the embedded server could start booting, so Prefect
    is asked only when a file it reads could set the URL (:func:`_files_may_set_api`); where
    none can (no profile names an URL), the answer is None without importing it."""
    if "PREFECT_API_URL" in os.environ:
        return os.environ["PREFECT_API_URL"] or None
    if not _files_may_set_api():
        return None
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


def _files_may_set_api() -> bool:
    """Whether a file Prefect 3 reads besides the environment may set its API URL: a ``.env``
    naming a PREFECT_ setting, a ``prefect.toml``, or a ``pyproject.toml`` with a
    ``[tool.prefect]`` table in the working folder (either may also move the profiles file); or
    the active profile (PREFECT_PROFILE, else the file's ``active``) of the profiles file
    (PREFECT_PROFILES_PATH, else PREFECT_HOME/profiles.toml, else ~/.prefect/profiles.toml)
    sets PREFECT_API_URL, as ``prefect config set`` and ``prefect cloud login`` write it.
    A yes only means Prefect is asked; a file that cannot be read is a yes."""
    import tomllib

    def toml(path: Path) -> dict:
        with open(path, "rb") as f:
            return tomllib.load(f)

    if any(os.environ.get(f"PREFECT_TESTING_{m}TEST_MODE") for m in ("", "UNIT_")):
        return True  # Prefect's test mode reads another profiles file
    try:
        cwd = Path.cwd()
        if (cwd / "prefect.toml").is_file():
            return True
        if (cwd / ".env").is_file() and "PREFECT_" in (cwd / ".env").read_text(errors="replace"):
            return True
        if (cwd / "pyproject.toml").is_file() and "prefect" in toml(cwd / "pyproject.toml").get(
            "tool", {}
        ):
            return True
        if os.environ.get("PREFECT_PROFILES_PATH"):
            path = Path(os.environ["PREFECT_PROFILES_PATH"])
        elif os.environ.get("PREFECT_HOME"):
            path = Path(os.environ["PREFECT_HOME"]) / "profiles.toml"
        else:
            path = Path.home() / ".prefect" / "profiles.toml"
        if not path.exists():
            return False  # Prefect's own default profile: no URL
        profiles = toml(path)
    except (OSError, ValueError):  # tomllib.TOMLDecodeError is a ValueError
        return True
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active")
    profile = profiles.get("profiles", {}).get(active)
    return isinstance(profile, dict) and "PREFECT_API_URL" in profile


def api_settings() -> dict[str, str]:
    """The API settings of this process's Prefect (:data:`API_SETTINGS`, those set: from the
    environment or the active profile), as the environment variables that give a worker the
    same API: URL, key, auth string, CA file, TLS check. Secrets included: they travel as the
    settings shipped with every task already do."""
    from prefect.settings import get_current_settings

    api = get_current_settings().api
    out = {}
    for var, field in API_SETTINGS.items():
        value = getattr(api, field)
        if field not in api.model_fields_set or value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        out[var] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def check_api(url: str) -> None:
    """PlaceError (a usage error: exit status 2) naming ``url`` and where it was configured
    when that API fails Prefect's own check of a server (it answers, with a compatible
    version; not made for Prefect Cloud), which the flow would otherwise fail with a traceback.
    Prefect makes the check once per process and API: the flow's client does not repeat it."""
    from prefect import get_client

    from ntkflow.preflight import PlaceError

    try:
        with get_client(sync_client=True) as client:
            client.raise_for_api_version_mismatch_once()
    except Exception as e:  # noqa: BLE001 - unreachable, unauthorized, incompatible: all named
        if os.environ.get("PREFECT_API_URL"):
            where, unset = "PREFECT_API_URL", "unset PREFECT_API_URL"
        else:
            where, unset = "the Prefect profile", "`prefect config unset PREFECT_API_URL`"
        cause = f": {e.__cause__}" if e.__cause__ else ""
        if "401" in f"{e}{cause}":  # it answers, and wants a login
            advice = (
                "It requires a login: set PREFECT_API_AUTH_STRING (a server started with "
                "PREFECT_SERVER_API_AUTH_STRING) or PREFECT_API_KEY (Prefect Cloud)"
            )
        else:
            advice = f"Start that server, or {unset} to run on an embedded API"
        raise PlaceError(
            f"the Prefect API {url} ({where}) cannot record this run: {e}{cause}. {advice}"
        ) from None


@contextlib.contextmanager
def prefect_api(api: str | None = None):
    """Use the API Prefect has configured (``api``, else :func:`configured_api_url`); when it
    has none, start Prefect's embedded server for this run.

    Yields ``(url, server)``: ``server`` is the :class:`EmbeddedAPI` (None for a configured
    API), already starting; call its ``wait()`` before the first API call. Its URL is exported
    at once, so the worker processes report to it instead of each starting an ephemeral server
    of its own; a configured URL is never replaced. The first start on 2 cores (database
    migrations) can take a minute: the timeout is generous.
    """
    api = api or configured_api_url()
    if api:
        yield api, None
        return
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    server = EmbeddedAPI()
    os.environ["PREFECT_API_URL"] = server.url
    cert = _one_certificate() if "PREFECT_API_SSL_CERT_FILE" not in os.environ else None
    try:
        yield server.url, server
    finally:
        if server.process.poll() is None:
            flush_logs()
        del os.environ["PREFECT_API_URL"]
        server.stop()
        if cert:
            del os.environ["PREFECT_API_SSL_CERT_FILE"]


def _one_certificate() -> str:
    """A CA file of one certificate, exported as PREFECT_API_SSL_CERT_FILE for this command
    and its workers. The embedded API is plain HTTP on 127.0.0.1, so no certificate is ever
    checked, yet every Prefect client (two per task run) loads its CA file into a TLS context:
    ~50 ms for the whole certifi bundle, ~1 ms for one certificate.

    The file lives in the Prefect home, written once (atomically) and reused by every later
    command: nothing to remove, so a command killed at any moment leaves nothing behind."""
    from prefect.settings import PREFECT_HOME

    path = ca_file(PREFECT_HOME.value())
    os.environ["PREFECT_API_SSL_CERT_FILE"] = path
    return path


def ca_file(folder) -> str:
    """``folder/ntkflow-api-ca.pem``: the first certificate of certifi's bundle, written if
    missing or different (a temporary sibling renamed over it)."""
    import re
    import uuid

    import certifi

    bundle = Path(certifi.where()).read_text()
    cert = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", bundle, re.S)
    path = Path(folder).expanduser() / "ntkflow-api-ca.pem"
    if not path.is_file() or path.read_text() != cert.group(0):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        tmp.write_text(cert.group(0))
        os.replace(tmp, path)
    return str(path)

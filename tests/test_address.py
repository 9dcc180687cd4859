"""The one reading of a scheduler address (ntkflow.cluster.address): what Dask accepts, read as
Dask reads it, in the config, the cluster plan and the preflight; the hand-started scheduler and
workers that tests/test_auth.py runs `--cluster [::1]:PORT` on end to end (on the IPv6
loopback, 127.0.0.1 where there is none)."""

import contextlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from distributed.comm.addressing import parse_address as dask_parse_address
from distributed.comm.addressing import parse_host_port
from servers import base_env, stop

from ntkflow.cluster.address import SCHEMES, parse_address
from ntkflow.cluster.errors import ClusterError
from ntkflow.cluster.plans import resolve_cluster
from ntkflow.config import ConfigError
from ntkflow.config.presets import build_config
from ntkflow.preflight import PlaceError, check_cluster

HOSTS = ["127.0.0.1", "10.0.0.1", "localhost", "scheduler", "node-01.cluster.local", "my_host"]
HOSTS += ["[::1]", "[fe80::1%eth0]", "[2001:db8::8a2e:370:7334]", "[::ffff:10.0.0.1]"]
ACCEPTED = [
    f"{scheme}{host}:{port}"
    for scheme in ("", *(s + "://" for s in SCHEMES))
    for host in HOSTS
    for port in ("1", "8786", "08786", "65535")
]
NOT_ADDRESSES = ["local", "cuda", "Local", "deploy/slurm.yaml", "slurm-gpu", "spec.yml", "my box"]
NOT_ADDRESSES += ["", ":8786", "::1:8786", "host:port", " host:8786", "C:/specs/x.yaml"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[::1]:8786", "tcp://[::1]:8786"),
        ("tcp://[::1]:8786", "tcp://[::1]:8786"),
        ("tls://host:1", "tls://host:1"),
        ("ucx://10.0.0.1:13337", "ucx://10.0.0.1:13337"),
        ("scheduler:8786", "tcp://scheduler:8786"),
        ("tcp://10.0.0.1:8786/", "tcp://10.0.0.1:8786"),  # copied from a browser
        ("h:08786", "tcp://h:8786"),
    ],
)
def test_addresses_are_normalized(text, expected):
    assert parse_address(text) == expected
    assert parse_address(expected) == expected  # normalized once and for all


@pytest.mark.parametrize("text", NOT_ADDRESSES)
def test_names_and_spec_files_are_not_addresses(text):
    assert parse_address(text) is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("foo://h:1", "unknown scheme 'foo'"),
        ("inproc://10.0.0.1/1/2", "not a scheduler address"),
        ("tcp://host", "not a scheduler address"),
        ("tcp://[::1]", "not a scheduler address"),
        ("h:0", "port 0 out of range"),
        ("h:65536", "port 65536 out of range"),
        ("[not-v6]:8786", r"\[not-v6\] in scheduler address"),
    ],
)
def test_bad_addresses_are_errors_naming_them(text, message):
    with pytest.raises(ValueError, match=message):
        parse_address(text)


@pytest.mark.parametrize("text", ACCEPTED)
def test_every_accepted_address_means_to_dask_what_it_means_here(text):
    """Dask reads the input (scheme, host, port) as this parser does, and the normalized
    address as the input."""
    normalized = parse_address(text)
    assert normalized is not None and normalized.startswith(tuple(s + "://" for s in SCHEMES))
    scheme, loc = dask_parse_address(normalized, strict=True)
    assert (scheme, *parse_host_port(loc)) == _as_dask_reads(text)


def _as_dask_reads(text: str) -> tuple[str, str, int]:
    scheme, loc = dask_parse_address(text)
    return (scheme, *parse_host_port(loc))


def test_the_config_and_the_plan_read_addresses_alike():
    for text in ("[::1]:8786", "tcp://[::1]:8786", "tls://host:1", "ucx://10.0.0.1:13337"):
        assert build_config("smoke", cluster=text).compute.cluster == text  # as --cluster gives it
        plan = resolve_cluster(text)
        assert plan.address == parse_address(text) and plan.train_resources is None
    with pytest.raises(ConfigError, match="unknown scheme 'foo'") as e:
        build_config("smoke", cluster="foo://h:1")
    assert [field for field, _ in e.value.errors] == ["compute.cluster"]
    with pytest.raises(ClusterError, match="port 70000 out of range"):
        resolve_cluster("h:70000")


def test_preflight_connects_to_the_normalized_address():
    port = _free_port(socket.AF_INET)  # nothing listens there
    with pytest.raises(PlaceError, match=rf"--cluster 127.0.0.1:{port} \(tcp://127.0.0.1:{port}\)"):
        check_cluster(f"127.0.0.1:{port}", 1)


def _free_port(family=socket.AF_INET6) -> int:
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _loopback() -> tuple[str, int]:
    """Host and free port for a hand-started scheduler: the IPv6 loopback where this machine
    has one, else 127.0.0.1 (a run on an existing cluster is then still tested, only the
    IPv6 reading of the address is not)."""
    if socket.has_ipv6:
        with contextlib.suppress(OSError):  # no IPv6 loopback here
            return "::1", _free_port(socket.AF_INET6)
    return "127.0.0.1", _free_port(socket.AF_INET)


@contextlib.contextmanager
def _dask_cluster(workdir: Path, host: str, port: int):
    """`dask scheduler` on host:port and `dask worker --nworkers 2` of it, as a user starts
    them (a Prefect home of their own, as workers elsewhere have, and no Prefect API), until
    both workers answer; their output goes to workdir/dask.log. Yields the scheduler's
    address."""
    from distributed import Client

    env = base_env(workdir / "worker-home", seeded=False)
    dask = Path(sys.executable).parent / "dask"
    log = (workdir / "dask.log").open("w")
    bracketed = f"[{host}]" if ":" in host else host
    address = f"tcp://{bracketed}:{port}"
    commands = [
        [dask, "scheduler", "--host", bracketed, "--port", port, "--dashboard-address", ":0"],
        [dask, "worker", address, "--nworkers", 2, "--nthreads", 1, "--no-dashboard"],
    ]
    procs = []
    try:
        for cmd in commands:
            procs.append(
                subprocess.Popen(
                    [str(c) for c in cmd],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # stopped as a group (servers.stop)
                )
            )
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for p in reversed(procs):
            stop(p)
        log.close()


# A run on a scheduler started by hand, reached by its address (IPv6 where there is a loopback):
# test_a_run_on_an_existing_scheduler_by_address_whose_workers_lack_the_auth_string in
# tests/test_auth.py, with the workers' Prefect settings (one command for both).

"""The one reading of a scheduler address (ntkflow.cluster.address): what Dask accepts, read as
Dask reads it, in the config, the cluster plan and the preflight; the hand-started scheduler and
workers that tests/test_auth.py runs `--cluster [::1]:PORT` on end to end (on the IPv6
loopback, 127.0.0.1 where there is none)."""

import pytest
from distributed.comm.addressing import parse_address as dask_parse_address
from distributed.comm.addressing import parse_host_port
from servers import free_port

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
    port = free_port()  # nothing listens there
    with pytest.raises(PlaceError, match=rf"--cluster 127.0.0.1:{port} \(tcp://127.0.0.1:{port}\)"):
        check_cluster(f"127.0.0.1:{port}", 1)


# A run on a scheduler started by hand, reached by its address (IPv6 where there is a loopback):
# test_a_run_on_an_existing_scheduler_by_address_whose_workers_lack_the_auth_string in
# tests/test_auth.py, with the workers' Prefect settings (one command for both).

"""Shared fixtures. Real throwaway hosts (local provider, needs root) are here; tests using them are
marked `@pytest.mark.realhost`.

Example::

    @pytest.mark.realhost
    def test_something(local_fleet_factory):
        spec, hosts = local_fleet_factory("t-mine", shards=1)
        code, out, err = ssh_run(hosts[0], "systemctl is-system-running")
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/standins importable as `standins`

from standins.acme import acme_factory  # noqa: E402,F401  (fixture: the Let's Encrypt stand-in)

# Where test fleets live: apart from a real fleet's default /run/ensemble.
TEST_STATE_DIR = os.environ.get("ENSEMBLE_TEST_STATE_DIR", "/run/ensemble-test")


def local_spec(fleet: str, shards: int = 1, os_profile: str = "debian-bookworm", **settings):
    """A spec of a local test fleet named `fleet` (<= 31 chars), domain `<fleet>.test`.

    Extra `settings` are merged into the spec dict, e.g. tls={"mode": "letsencrypt"}.

    Example::

        spec = local_spec("t-deploy", shards=2, jitsi={"apt_repo": "http://10.1.2.1:8080/"})
    """
    from ensemble.spec import spec_from_dict

    data = {"fleet": {"name": fleet, "domain": f"{fleet}.test", "shards": shards, "os": os_profile},
            "provider": {"kind": "local", "local": {"state_dir": TEST_STATE_DIR}}}
    for key, value in settings.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return spec_from_dict(data, source=f"<test fleet {fleet}>")


def ssh_client(host):
    """A paramiko client connected to `host` with its key and STRICT checking of its pinned host key."""
    import paramiko

    client = paramiko.SSHClient()
    client.load_host_keys(host.known_hosts)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(host.address, port=host.ssh_port, username=host.ssh_user, key_filename=host.ssh_key,
                   timeout=10, allow_agent=False, look_for_keys=False)
    return client


def ssh_run(host, command: str, timeout: float = 300) -> tuple[int, str, str]:
    """Run `command` on `host` over real SSH; return (exit code, stdout, stderr).

    Example::

        code, out, _ = ssh_run(host, "systemctl is-system-running")
    """
    client = ssh_client(host)
    try:
        _stdin, stdout, stderr = client.exec_command(command, timeout=timeout)
        code = stdout.channel.recv_exit_status()
        return code, stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace")
    finally:
        client.close()


@pytest.fixture(scope="session")
def local_provider():
    """The local provider, after removing what dead runs left behind (needs root)."""
    from ensemble.providers.local import LocalProvider

    provider = LocalProvider()
    provider.cleanup_stale()
    return provider


@pytest.fixture(scope="module")
def local_fleet_factory(local_provider):
    """Create local fleets: `factory(name, shards=1, os_profile=..., **settings) -> (spec, hosts)`.

    Every fleet made is destroyed (hosts, proxies, bridge, tmpfs) when the module's tests are done.
    """
    made = []

    def factory(fleet: str, shards: int = 1, os_profile: str = "debian-bookworm", **settings):
        spec = local_spec(fleet, shards, os_profile, **settings)
        made.append(spec)
        local_provider.destroy_all(spec)  # a fleet of the same name left by an earlier run
        return spec, local_provider.ensure_hosts(spec)

    yield factory
    for spec in made:
        local_provider.destroy_all(spec)

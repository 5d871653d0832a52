"""Shared fixtures. Real throwaway hosts (local provider, needs root) are here; tests using them are
marked `@pytest.mark.realhost` (collection refuses an unmarked one).

Missing tools never pass silently: `require_tool`, `require_root` and the markers `needs_tool` /
`needs_root` skip with the reason on a developer's machine, and FAIL when the environment variable
`CI` is set (.ci/run sets it): a CI machine without nginx must not go green without testing nginx.

Example::

    @pytest.mark.realhost
    def test_something(local_fleet_factory):
        spec, hosts = local_fleet_factory("t-mine", shards=1)
        code, out, err = ssh_run(hosts[0], "systemctl is-system-running")

    @pytest.mark.needs_tool("nginx", "openssl")
    def test_site(tmp_path): ...

    def test_other():
        luac = require_tool("luac5.4")  # its path, or skip (fail under CI)
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/standins importable as `standins`

from standins.acme import acme_factory  # noqa: E402,F401  (fixture: the Let's Encrypt stand-in)

# Where test fleets live: apart from a real fleet's default /run/ensemble.
TEST_STATE_DIR = os.environ.get("ENSEMBLE_TEST_STATE_DIR", "/run/ensemble-test")

# The Debian package of each tool the tests run (all listed in .ci/apt-packages.txt).
TOOL_PACKAGES = {
    "nginx": "nginx-light", "openssl": "openssl", "curl": "curl", "node": "nodejs", "java": "default-jre-headless",
    "/usr/share/java/typesafe-config.jar": "libtypesafe-config-java", "luac5.4": "lua5.4", "prosody": "prosody",
    "prosodyctl": "prosody", "systemd-analyze": "systemd", "nft": "nftables", "sshd": "openssh-server",
    "/usr/sbin/sshd": "openssh-server", "ssh-keygen": "openssh-client", "chromium": "chromium",
    "/usr/bin/chromedriver": "chromium-driver", "unshare": "util-linux", "nsenter": "util-linux", "ip": "iproute2",
    "ss": "iproute2", "pebble": "pebble", "pebble-challtestsrv": "pebble", "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap", "zstd": "zstd", "apt-cacher-ng": "apt-cacher-ng", "tinyproxy": "tinyproxy",
    "hocon": "ruby-hocon",
}
# What the local provider runs to make real throwaway hosts (tests marked `realhost`).
REALHOST_TOOLS = ("systemd-nspawn", "debootstrap", "zstd", "apt-cacher-ng", "tinyproxy", "ip", "ssh-keygen",
                  "unshare", "nsenter")


def in_ci() -> bool:
    """True when the environment variable CI is set (to anything but "", 0, false, no)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(reason: str) -> NoReturn:
    """Skip the current test for `reason` here; fail it under CI, where nothing may be missing.

    Example::

        if not lists:
            missing("this machine has no Debian package lists (run apt-get update)")
    """
    if in_ci():
        pytest.fail(f"{reason} [CI is set: a missing requirement fails instead of skipping]", pytrace=False)
    pytest.skip(reason)


def require_tool(tool: str, package: str | None = None) -> str:
    """The path of `tool` (a command name, looked up on PATH and in the sbin folders, or an absolute
    path); without it the test is skipped here and fails under CI, naming the Debian package.

    Example::

        nginx = require_tool("nginx")  # "/usr/sbin/nginx"
    """
    if os.path.isabs(tool):
        found = tool if os.path.exists(tool) else None
    else:
        found = shutil.which(tool) or shutil.which(tool, path="/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin")
    if found:
        return found
    package = package or TOOL_PACKAGES.get(tool) or os.path.basename(tool)
    missing(f"needs {tool} (apt-get install {package}; see .ci/apt-packages.txt)")


def require_root(why: str) -> None:
    """Skip here / fail under CI unless this process runs as root (CI runs as root)."""
    if os.geteuid() != 0:
        missing(f"needs root: {why}")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Markers `needs_root(why)`, `needs_tool(*tools)` and `realhost` checked before any fixture runs."""
    if item.get_closest_marker("realhost"):
        require_root("real throwaway hosts are systemd-nspawn containers on bridges")
        for tool in REALHOST_TOOLS:
            require_tool(tool)
    for mark in item.iter_markers("needs_root"):
        require_root(*mark.args or ("this test",))
    for mark in item.iter_markers("needs_tool"):
        for tool in mark.args:
            require_tool(tool)


HOST_FIXTURES = {"local_provider", "local_fleet_factory"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that makes real hosts (through the local provider fixtures) must say so: `realhost`."""
    unmarked = [item.nodeid for item in items
                if HOST_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("realhost")]
    if unmarked:
        raise pytest.UsageError("tests using real throwaway hosts must be marked @pytest.mark.realhost: "
                                + ", ".join(unmarked))


def local_spec_toml(fleet: str, shards: int, *, header: str = "", domain: str = "", tls: str = "self-signed",
                    tail: str = "[jitsi]\netherpad = false\n") -> str:
    """The spec file of a local test fleet as a user writes it (for tests that drive the real CLI).

    `tail` holds the sections after [tls] (Etherpad off unless given).

    Example::

        local_spec_toml("t-chain", 2, header="# test fleet of tests/test_lifecycle_chains.py\n",
                        tail="[jitsi]\netherpad = false\n\n[frontdoor]\nrefresh_interval = 5\n")
    """
    return f"""{header}[fleet]
name = "{fleet}"
domain = "{domain or fleet + '.test'}"
shards = {shards}

[provider]
kind = "local"

[provider.local]
state_dir = "{TEST_STATE_DIR}"

[tls]
mode = "{tls}"

{tail}"""


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


def ensemble_json(*args: str, timeout: float = 1200) -> tuple[int, dict, str]:
    """Run the real `ensemble` CLI with --json, as a user does; (exit code, parsed stdout, stderr).

    Example::

        code, out, err = ensemble_json("deploy", "--config", str(config))
    """
    import json
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "ensemble.cli", *args, "--json"], cwd=Path(__file__).parent.parent,
                          capture_output=True, text=True, timeout=timeout)
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        data = {}
    return proc.returncode, data, proc.stderr


def ssh_client(host):
    """A paramiko client connected to `host` with its key and STRICT checking of its pinned host key
    (ensemble.ssh.Connection; an unknown or changed key is an EnsembleError naming the host).

    Example::

        client = ssh_client(host)
        client.get_transport().open_channel("direct-tcpip", ("127.0.0.1", 5280), ("127.0.0.1", 0))
    """
    from ensemble.ssh import Connection

    return Connection(host).open().client


def ssh_run(host, command: str, timeout: float = 300) -> tuple[int, str, str]:
    """Run `command` on `host` over real SSH; return (exit code, stdout, stderr).

    Example::

        code, out, _ = ssh_run(host, "systemctl is-system-running")
    """
    from ensemble.ssh import Connection

    with Connection(host) as conn:
        return conn.run(command, timeout=timeout)


def wait_jicofo_healthy(shards, seconds: int = 90) -> None:
    """Wait until each shard's jicofo answers its health check (it logs in to prosody after the deploy).

    Example::

        wait_jicofo_healthy(shards.values())
    """
    for shard in shards:
        code, out, err = ssh_run(shard, f"for i in $(seq {seconds}); do curl -fs -o /dev/null "
                                        "http://127.0.0.1:8888/about/health && exit 0; sleep 1; done; exit 1")
        assert code == 0, f"{shard.name}: jicofo never became healthy: {out}{err}"


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

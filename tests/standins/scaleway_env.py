"""Test fixtures around the Scaleway STAND-IN: the API server, real sshd per server, credentials.

Every server the stand-in boots gets a real OpenSSH sshd on its 127.0.10.x address, port 22,
with its own host key; the authorized key is read from the server's cloud-init user data, so
a test that reaches SSH also proves the user data carried the ops key.

Each sshd runs in a private mount namespace whose /var/lib is the server's own folder
(`<root>/<address>/var-lib`): what ensemble writes "on the server" over SSH (the drain flag in
/var/lib/ensemble/state.json...) lands in the test's temporary folder, never on this machine.

Example (in a test module)::

    from standins.scaleway_env import scw  # noqa: F401  (the fixture)

    def test_x(scw):
        provider = scw.provider()
        provider.ensure_hosts(scw.spec)
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from standins.scaleway_api import ScalewayStandIn

ACCESS_KEY = "SCWTESTSTANDIN000001"
SECRET_KEY = "11111111-2222-4333-8444-555555555555"
PROJECT_ID = "66666666-7777-4888-9999-000000000000"
SSHD = "/usr/sbin/sshd"
# Where the stand-in's servers answer SSH. Several checkouts on one machine may run these tests at once:
# each test process takes a /24 of its own (the first 127.1.N. whose lock no live process holds;
# ENSEMBLE_SCW_STANDIN_NET=127.0.77. picks one) so their sshds never answer for each other (seen: "host
# key changed" when two runs shared 127.0.10.x). The lock is held until the process exits.
_NET_LOCKS: list = []


def _claim_address_prefix() -> str:
    if os.environ.get("ENSEMBLE_SCW_STANDIN_NET"):
        return os.environ["ENSEMBLE_SCW_STANDIN_NET"]
    for n in range(250):
        handle = open(f"/tmp/ensemble-scw-standin-net-{n}.lock", "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _NET_LOCKS.append(handle)
        return f"127.1.{n}."
    raise RuntimeError("no free 127.1.N.0/24 for the Scaleway stand-in's sshds (250 test processes?)")


ADDRESS_PREFIX = _claim_address_prefix()


@dataclass
class SshdFarm:
    """One real sshd per stand-in server address (started on `running`, stopped on deletion)."""

    root: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    keys: dict[str, bytes] = field(default_factory=dict)

    def start(self, address: str, user_data: bytes) -> None:
        config = yaml.safe_load(user_data.decode()) if user_data else {}
        authorized = "\n".join((config or {}).get("ssh_authorized_keys") or []) + "\n"
        self.keys[address] = user_data
        folder = self.root / address
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "authorized_keys").write_text(authorized)
        host_key = folder / "host_key"
        given = ((config or {}).get("ssh_keys") or {}).get("ed25519_private")
        if given:  # as cloud-init's ssh module does: the user data's host key, the image's deleted
            host_key.unlink(missing_ok=True)
            host_key.touch(mode=0o600)
            host_key.write_text(given)
            (folder / "host_key.pub").write_text(config["ssh_keys"]["ed25519_public"] + "\n")
        elif not host_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        self._run(address, folder)

    def var_lib(self, address: str) -> Path:
        """The server's /var/lib, as its sshd's sessions see it."""
        return self.root / address / "var-lib"

    def _run(self, address: str, folder: Path) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        self.var_lib(address).mkdir(exist_ok=True)
        # unshare execs (no fork): the Popen pid is sshd's, so stop() still signals sshd itself
        self.procs[address] = subprocess.Popen([
            "unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount --bind "$0" /var/lib && exec "$@"',
            str(self.var_lib(address)),
            SSHD, "-D", "-e", "-f", "/dev/null", "-o", f"ListenAddress={address}:22",
            "-o", f"HostKey={folder / 'host_key'}", "-o", f"AuthorizedKeysFile={folder / 'authorized_keys'}",
            "-o", "PidFile=none", "-o", "StrictModes=no", "-o", "UsePAM=no",
            "-o", "PermitRootLogin=prohibit-password", "-o", "PasswordAuthentication=no",
        ], stdout=subprocess.DEVNULL, stderr=(folder / "sshd.log").open("ab"))

    def stop(self, address: str) -> None:
        proc = self.procs.pop(address, None)
        if proc:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)

    def rekey(self, address: str) -> None:
        """The server comes back with a new host key (what a man in the middle would look like)."""
        folder = self.root / address
        self.stop(address)
        for name in ("host_key", "host_key.pub"):
            (folder / name).unlink()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "host_key")], check=True)
        self._run(address, folder)

    def stop_all(self) -> None:
        for address in list(self.procs):
            self.stop(address)


@dataclass
class ScwEnv:
    api: ScalewayStandIn
    farm: SshdFarm
    tmp: Path
    config: Path
    spec: object

    def provider(self, spec=None, **kwargs):
        from ensemble.providers.retry import RetryPolicy
        from ensemble.providers.scaleway import ScalewayProvider

        kwargs.setdefault("retry", RetryPolicy(attempts=5, base=0.05, cap=0.5))
        kwargs.setdefault("poll_interval", 0.1)
        return ScalewayProvider(spec or self.spec, **kwargs)


def write_spec(path: Path, tmp: Path, shards: int = 2, name: str = "demo", extra: str = "",
               api_timeout: int = 10) -> Path:
    path.write_text(f"""
[fleet]
name = "{name}"
domain = "meet.example.org"
shards = {shards}

[provider]
kind = "scaleway"

[provider.scaleway]
zone = "fr-par-1"
ssh_public_key = "{tmp / 'ops_key.pub'}"
ssh_private_key = "{tmp / 'ops_key'}"
ssh_allowed_cidrs = ["198.51.100.0/24"]
ssh_timeout = 30
api_timeout = {api_timeout}
{extra}
""")
    return path


def _port22_free() -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((f"{ADDRESS_PREFIX}1", 22))
        except OSError:
            return False
    return True


@pytest.fixture
def scw(tmp_path, monkeypatch):
    """A running stand-in + sshd farm, SCW_* env pointing at it, an ops key, a 2-shard spec."""
    from conftest import require_root, require_tool

    from ensemble.spec import load_spec

    require_root("the stand-in servers' sshd listen on 127.0.10.x:22, each in a mount namespace of its own")
    for tool in (SSHD, "ssh-keygen", "unshare"):
        require_tool(tool)
    assert re.fullmatch(r"127\.\d{1,3}\.\d{1,3}\.", ADDRESS_PREFIX), "ENSEMBLE_SCW_STANDIN_NET: like 127.0.77."
    assert _port22_free(), f"something listens on port 22 of every address; stand-in hosts need {ADDRESS_PREFIX}x:22"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ops@test", "-f",
                    str(tmp_path / "ops_key")], check=True)
    api = ScalewayStandIn(secret_key=SECRET_KEY, project_id=PROJECT_ID, address_prefix=ADDRESS_PREFIX).start()
    farm = SshdFarm(tmp_path / "sshd")
    api.on_running = farm.start
    api.on_gone = farm.stop
    for key in ("SCW_PROFILE", "SCW_DEFAULT_ORGANIZATION_ID", "SCW_DEFAULT_ZONE", "SCW_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SCW_ACCESS_KEY", ACCESS_KEY)
    monkeypatch.setenv("SCW_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("SCW_DEFAULT_PROJECT_ID", PROJECT_ID)
    monkeypatch.setenv("SCW_API_URL", api.url)
    monkeypatch.setenv("SCW_CONFIG_PATH", str(tmp_path / "no-scw-config.yaml"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    config = write_spec(tmp_path / "ensemble.toml", tmp_path)
    env = ScwEnv(api=api, farm=farm, tmp=tmp_path, config=config, spec=load_spec(config))
    try:
        yield env
    finally:
        api.on_running = None
        api.stop()
        farm.stop_all()
        shutil.rmtree(tmp_path / "sshd", ignore_errors=True)
        time.sleep(0)

"""Drain flag and emptiness over real SSH (OpenSSH sshd on loopback, pinned host key, strict):
the state file is written atomically, the census and JVB stats are read through direct-tcpip
channels to the host's loopback services, and an unknown host key is refused."""

from __future__ import annotations

import functools
import json
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers.ports import free_port
from standins.shard_occupancy import OccupancyStandin
from test_frontdoor_routing import make_spec

from ensemble.errors import EnsembleError
from ensemble.frontdoor.drain import drain_and_wait, ssh_reader, ssh_state_writer
from ensemble.providers.base import Host

SSHD = "/usr/sbin/sshd"
pytestmark = pytest.mark.needs_tool(SSHD, "ssh-keygen")


@pytest.fixture()
def sshd_host(tmp_path):
    """A real sshd on 127.0.0.1:<ephemeral>, a key to log in, a known_hosts pinning its key."""
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)], check=True)
    (tmp_path / "authorized_keys").write_text((tmp_path / "client_key.pub").read_text())
    port = free_port()
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    proc = subprocess.Popen([
        SSHD, "-D", "-e", "-f", "/dev/null", "-o", f"ListenAddress=127.0.0.1:{port}",
        "-o", f"HostKey={tmp_path / 'host_key'}", "-o", f"AuthorizedKeysFile={tmp_path / 'authorized_keys'}",
        "-o", "PidFile=none", "-o", "StrictModes=no", "-o", "UsePAM=no", "-o", "PermitRootLogin=prohibit-password",
        "-o", "PasswordAuthentication=no", "-o", "AllowTcpForwarding=yes",
    ], stdout=subprocess.DEVNULL, stderr=(tmp_path / "sshd.log").open("ab"))
    key_type, key_b64 = (tmp_path / "host_key.pub").read_text().split()[:2]
    (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{port} {key_type} {key_b64}\n")
    host = Host(name="fdt-1.fd.ensemble.test", role="shard", shard=1, address="127.0.0.1", ssh_port=port,
                ssh_key=str(tmp_path / "client_key"), known_hosts=str(tmp_path / "known_hosts"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.05)
    try:
        yield host, tmp_path
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_drain_flag_and_emptiness_over_ssh(sshd_host):
    host, tmp = sshd_host
    state = tmp / "remote" / "state.json"
    writer = functools.partial(ssh_state_writer, path=str(state))
    standin = OccupancyStandin().start()
    target = ("127.0.0.1", standin.port)
    reader = functools.partial(ssh_reader, prosody=target, jvb=target)
    try:
        standin.set_rooms(host.name, {"stayhere": 2})
        reading = reader(host)
        assert reading.ok and reading.participants == 2 and [r.key for r in reading.rooms] == ["stayhere"]
        clock = [0.0]

        def sleep(seconds: float) -> None:
            clock[0] += seconds
            standin.set_rooms(host.name, {})  # they leave

        drain_and_wait(make_spec(), [host], timeout=60, writer=writer, reader=reader, interval=5,
                       clock=lambda: clock[0], sleep=sleep)
        assert json.loads(state.read_text())["drain"] is True
        assert oct(state.stat().st_mode & 0o777) == "0o644"  # nginx (www-data) serves it
        writer(host, {"drain": False})
        assert json.loads(state.read_text()) == {"drain": False}
    finally:
        standin.stop()


def test_unknown_host_key_is_refused(sshd_host):
    host, tmp = sshd_host
    (tmp / "known_hosts").write_text("")
    with pytest.raises(EnsembleError, match="SSH to 127.0.0.1"):
        ssh_state_writer(host, {"drain": True}, path=str(tmp / "never.json"))
    assert not (tmp / "never.json").exists()
    assert not ssh_reader(host).ok

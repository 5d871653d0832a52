"""Waiting for SSH on new hosts, and pinning their host keys in a per-fleet known_hosts file.

A host's key is accepted on first contact (right after the host was created, when nobody else
could have answered on its fresh address yet; or the first time this machine meets it) and
written to the fleet's known_hosts; every later connection checks strictly, and a changed key is
an error naming the host. Creating a host first forgets any key pinned for its address, since
addresses are reused.

Example::

    wait_for_ssh(host, timeout=600)   # pins the key on first contact
    wait_for_ssh(host, timeout=30)    # strict now: HostKeyChanged if it changed
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import paramiko

from ensemble.errors import EnsembleError
from ensemble.providers.base import Host

_FILE_LOCK = threading.Lock()  # parallel creates pin keys into the same file


class HostKeyChanged(EnsembleError):
    """The host answered with a key other than the pinned one."""


def known_hosts_path(fleet: str) -> Path:
    """Per-fleet known_hosts: $XDG_STATE_HOME/ensemble/<fleet>/known_hosts (~/.local/state by default)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "ensemble" / fleet / "known_hosts"


def host_pattern(address: str, port: int) -> str:
    """How OpenSSH (and paramiko) name a host in known_hosts."""
    return address if port == 22 else f"[{address}]:{port}"


def forget(host: Host) -> None:
    """Drop the host's pinned key (it was destroyed; its address may come back on another host)."""
    if not host.known_hosts:
        return
    path = Path(host.known_hosts)
    pattern = host_pattern(host.address, host.ssh_port)
    with _FILE_LOCK:
        if not path.exists():
            return
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.split(" ", 1)[0] != pattern]
        if kept != lines:
            path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")


def _pin(path: Path, pattern: str, key: paramiko.PKey) -> None:
    with _FILE_LOCK:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(f"{pattern} {key.get_name()} {key.get_base64()}\n")


def _check(host: Host, key: paramiko.PKey) -> bool:
    """True if the key is pinned; False if the host is unknown; HostKeyChanged if different."""
    pattern = host_pattern(host.address, host.ssh_port)
    known = paramiko.HostKeys()
    if host.known_hosts and Path(host.known_hosts).exists():
        known.load(host.known_hosts)
    entry = known.lookup(pattern)
    if not entry:
        return False
    if key.get_name() in entry and entry[key.get_name()] == key:
        return True
    raise HostKeyChanged(f"{host.name} ({pattern}): SSH host key changed since it was pinned in "
                         f"{host.known_hosts}; if the host was rebuilt on purpose, remove that line")


def probe(host: Host, connect_timeout: float = 5.0) -> None:
    """One SSH handshake + key login; raises OSError / paramiko errors while not ready."""
    sock = socket.create_connection((host.address, host.ssh_port), timeout=connect_timeout)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=connect_timeout)
        key = transport.get_remote_server_key()
        if not _check(host, key):  # unknown here (new host, or first run on this machine): pin it
            _pin(Path(host.known_hosts or known_hosts_path("default")), host_pattern(host.address, host.ssh_port),
                 key)
        if host.ssh_key:
            transport.auth_publickey(host.ssh_user, paramiko.PKey.from_path(host.ssh_key))
    finally:
        transport.close()


def wait_for_ssh(host: Host, timeout: float, interval: float = 0.5) -> None:
    """Poll until SSH answers and the key login works; EnsembleError after timeout seconds."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            probe(host)
            return
        except HostKeyChanged:
            raise
        except (OSError, EOFError, paramiko.SSHException) as exc:
            last = f"{exc.__class__.__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise EnsembleError(f"{host.name}: SSH on {host.address}:{host.ssh_port} not ready after "
                                f"{timeout:.0f}s ({last})")
        time.sleep(interval)

"""The per-fleet known_hosts files both providers keep, and waiting for SSH on new hosts.

A host's key is pinned once: the local provider writes the keys it generated for a container before
the container boots; the Scaleway provider accepts the key a new server shows on first contact
(right after creating it, when nobody else could answer on its fresh address; or the first time this
machine meets it). Every later connection checks strictly (ensemble.ssh): a changed key is
`HostKeyChanged`, naming the host. Destroying a host forgets its lines, since addresses are reused.
Edits are atomic and locked across threads and processes.

Example::

    wait_for_ssh(host, timeout=600)   # pins the key on first contact
    wait_for_ssh(host, timeout=30)    # strict now: HostKeyChanged if it changed
    forget(host)                      # the host is gone
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from ensemble.providers.base import Host
from ensemble.providers.localimage import file_lock
from ensemble.ssh import HostKeyChanged, host_pattern, wait_until_reachable

__all__ = ["HostKey", "HostKeyChanged", "edit_known_hosts", "forget", "generate_host_key", "host_pattern",
           "known_hosts_path", "pin_keys", "pin_unknown_key", "wait_for_ssh"]

_FILE_LOCK = threading.Lock()  # parallel creates edit the same file; file_lock orders processes


@dataclass(frozen=True)
class HostKey:
    """An ed25519 SSH host key made here for a new cloud host, before it exists.

    `private` (OpenSSH PEM text) is a secret: it only ever lives in memory and in the host's cloud-init user
    data (sent over HTTPS, replaced by a key-less document once the host answered with it); never on disk
    here, never printed (kept out of repr), never in process arguments. `public` is "ssh-ed25519 AAAA...".

    Example::

        key = generate_host_key()
        key.public.split()[0], key.blob == key.public.split()[1]   # ("ssh-ed25519", True)
    """

    public: str
    private: str = field(repr=False)

    @property
    def blob(self) -> str:
        """The base64 key blob (what a known_hosts line and the host-key tag carry)."""
        return self.public.split()[1]


def generate_host_key() -> HostKey:
    """A fresh ed25519 host key pair, in memory only (see HostKey).

    Example::

        generate_host_key().public   # "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI..."
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode("ascii")
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return HostKey(public=public.decode("ascii"), private=private)


def known_hosts_path(fleet: str) -> Path:
    """Per-fleet known_hosts of Scaleway fleets: $XDG_STATE_HOME/ensemble/<fleet>/known_hosts.

    Example::

        known_hosts_path("demo")   # Path("/root/.local/state/ensemble/demo/known_hosts")
    """
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "ensemble" / fleet / "known_hosts"


def edit_known_hosts(path: Path, drop: set[str], add: list[str]) -> None:
    """Rewrite a known_hosts file atomically without the lines naming any of `drop`, plus the lines `add`.

    Nothing happens when the file's folder is gone and there is nothing to add (the fleet's keys were removed).

    Example::

        edit_known_hosts(Path(".../known_hosts"), {"demo-1.meet.test", "10.151.42.11"}, [])
        edit_known_hosts(Path(".../known_hosts"), set(), ["10.1.2.3 ssh-ed25519 AAAA...\\n"])
    """
    if not path.parent.exists():
        if not add:
            return
        path.parent.mkdir(parents=True, mode=0o700)
    with _FILE_LOCK, file_lock(path.parent / ".lock"):
        old = path.read_text().splitlines(keepends=True) if path.exists() else []
        kept = [line for line in old if line.strip() and not (set(line.split()[0].split(",")) & drop)]
        partial = path.with_name(path.name + ".part")
        partial.write_text("".join(kept + [line if line.endswith("\n") else line + "\n" for line in add]))
        partial.chmod(0o600)
        os.replace(partial, path)


def pin_keys(path: Path, keys: dict[str, str]) -> None:
    """Make `path` pin exactly `keys` ({host pattern: "ssh-ed25519 AAAA..."}) for those patterns, other lines
    kept; nothing is rewritten when it already does (the provider calls this on every listing).

    Example::

        pin_keys(Path(".../known_hosts"), {"51.15.1.2": "ssh-ed25519 AAAA..."})
    """
    if not keys:
        return
    wanted = {f"{pattern} {key}" for pattern, key in keys.items()}
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        lines = []
    pinned = {line.strip() for line in lines if line.strip() and set(line.split()[0].split(",")) & set(keys)}
    if pinned != wanted:
        edit_known_hosts(path, set(keys), sorted(wanted))


def forget(host: Host) -> None:
    """Drop the host's pinned keys (it was destroyed; its address may come back on another host).

    Example::

        forget(host)   # the lines for "51.15.1.2" (or "[51.15.1.2]:2222") are gone
    """
    if host.known_hosts:
        edit_known_hosts(Path(host.known_hosts), {host_pattern(host.address, host.ssh_port)}, [])


def pin_unknown_key(host: Host, pattern: str, key: paramiko.PKey) -> None:
    """Pin a key a host shows on first contact (ensemble.ssh's `on_unknown_key`), in the host's known_hosts.

    Example::

        Connection(host, on_unknown_key=pin_unknown_key).open()
    """
    path = Path(host.known_hosts) if host.known_hosts else known_hosts_path("default")
    edit_known_hosts(path, set(), [f"{pattern} {key.get_name()} {key.get_base64()}\n"])


def wait_for_ssh(host: Host, timeout: float, interval: float = 0.5, pin_unknown: bool = True) -> None:
    """Poll until SSH answers and the key login works; EnsembleError after timeout. An unknown key is pinned
    with `pin_unknown` (a host whose key was not known beforehand), refused without.

    Example::

        wait_for_ssh(host, timeout=600, pin_unknown=False)   # its key is pinned already: strict
    """
    wait_until_reachable(host, timeout, interval=interval, attempt_timeout=10.0, connect_timeout=5.0,
                         on_unknown_key=pin_unknown_key if pin_unknown else None)
